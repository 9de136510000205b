"""The demo CLIP builder (usb_cfsg_tools.demo_clip): caption encoding, loss, pool, card, loading by pretrain_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.datasets.replicas import write_fmnist_replica
from usb_cfsg.errors import ConfigError, DatasetError
from usb_cfsg_tools import demo_clip


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip

    from usb_cfsg.nets.clip import _ensure_configs

    _ensure_configs()
    torch.manual_seed(0)
    return open_clip.create_model(demo_clip.ARCH, pretrained=None, force_image_size=64), open_clip.get_tokenizer(
        demo_clip.ARCH
    )


def test_caption_encoder_is_encode_text_and_writes_back(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    model = __import__("copy").deepcopy(model)
    captions = [t.format(n) for n in ("T-shirt/top", "Ankle boot", "Bag") for t in demo_clip.CAPTION_TEMPLATES]
    tokens = tokenizer(captions)
    enc = demo_clip.CaptionEncoder(model, tokens)
    assert enc.length < tokens.shape[1]  # the context is cut to the longest caption
    assert enc.rows.shape[0] == len(torch.unique(tokens[:, : enc.length]))  # only the rows the captions use
    with torch.no_grad():
        assert torch.allclose(enc(model), model.encode_text(tokens), atol=1e-5)
        enc.rows.add_(torch.randn_like(enc.rows))  # as training would change them
        before = model.encode_text(tokens)
        enc.write_back(model)
        after = model.encode_text(tokens)
    assert not torch.allclose(before, after, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(enc(model), after, atol=1e-5)


def test_soft_infonce_rewards_class_alignment() -> None:
    caption_class = torch.arange(3).repeat_interleave(2)  # 3 classes x 2 templates
    txt = F.normalize(torch.eye(3).repeat_interleave(2, dim=0), dim=-1)
    labels = torch.tensor([0, 1, 1, 2])
    aligned = F.normalize(torch.eye(3)[labels], dim=-1)
    wrong = F.normalize(torch.eye(3)[(labels + 1) % 3], dim=-1)
    scale = torch.tensor(10.0)
    good = demo_clip.soft_infonce(aligned, txt, labels, caption_class, scale)
    bad = demo_clip.soft_infonce(wrong, txt, labels, caption_class, scale)
    assert good < bad
    # classes absent from the batch contribute no caption->image term
    only_zero = torch.tensor([0, 0])
    loss = demo_clip.soft_infonce(aligned[:1].repeat(2, 1), txt, only_zero, caption_class, scale)
    assert torch.isfinite(loss)
    img = aligned.clone().requires_grad_(True)
    demo_clip.soft_infonce(img, txt, labels, caption_class, scale).backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()


def test_pool_is_stratified_seeded_and_sorted() -> None:
    targets = np.repeat(np.arange(10), 60)
    pool = demo_clip.select_pool(targets, 0.5, seed=3)
    assert np.bincount(targets[pool]).tolist() == [30] * 10
    assert np.all(np.diff(pool) > 0)
    assert np.array_equal(pool, demo_clip.select_pool(targets, 0.5, seed=3))
    assert not np.array_equal(pool, demo_clip.select_pool(targets, 0.5, seed=4))


def test_batch_augment_takes_crops_of_the_resized_images() -> None:
    rng = np.random.default_rng(0)
    resized = rng.integers(0, 256, size=(4, 9, 9), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    aug = demo_clip.BatchAugment(resized, 6, mean, std)
    out = aug(torch.tensor([2, 0, 2]), torch.Generator().manual_seed(1))
    assert out.shape == (3, 3, 6, 6)
    for b, src in enumerate([2, 0, 2]):
        pixels = np.round((out[b, 0].numpy() * std[0] + mean[0]) * 255).astype(int)
        assert np.allclose(out[b, 1].numpy() * std[1] + mean[1], pixels / 255, atol=1e-4)
        windows = [resized[src, y : y + 6, x : x + 6].astype(int) for y in range(4) for x in range(4)]
        assert any((w == pixels).all() or (w[:, ::-1] == pixels).all() for w in windows)


def test_card_errors_say_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="python -m usb_cfsg_tools.demo_clip --out"):
        demo_clip.load_card(str(tmp_path / "card.json"))
    (tmp_path / "card.json").write_text(json.dumps({"dataset": "fmnist_openset"}))
    with pytest.raises(ConfigError, match="not a demo CLIP card"):
        demo_clip.load_card(str(tmp_path))
    card = {"dataset": "fmnist_openset", "pool": {"num_train": 10, "indices": [1, 3]}}
    assert demo_clip.pool_indices(card, 10).tolist() == [1, 3]
    with pytest.raises(DatasetError, match="made on 'fmnist_openset', not 'cub200'"):
        demo_clip.pool_indices(card, 10, "cub200")
    with pytest.raises(DatasetError, match="indexes 10 training images"):
        demo_clip.pool_indices(card, 12)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A demo CLIP built on a 100-image replica with a 3-step budget (seconds)."""
    root = tmp_path_factory.mktemp("demo_clip")
    data = write_fmnist_replica(root / "data", num_train=100, num_test=40)
    recipe = demo_clip.Recipe(steps=3, batch_size=16, warmup_steps=1)
    card = demo_clip.build_demo_clip(str(root / "out"), recipe, seed=0, data_dir=str(data))
    return root / "out", card, data


def test_card_records_pool_recipe_figures_and_hash(built) -> None:
    out, card, _ = built
    on_disk = json.loads((out / demo_clip.CARD_FILE).read_text())
    assert on_disk == card
    assert (card["dataset"], card["net"], card["img_size"], card["steps"], card["seed"]) == (
        "fmnist_openset",
        "clip_tiny",
        64,
        3,
        0,
    )
    assert card["recipe"]["batch_size"] == 16 and len(card["recipe"]["templates"]) == 5
    assert card["recipe"]["learn_logit_scale"] is False  # the default keeps the logit scale fixed
    assert card["training"]["logit_scale"] == pytest.approx(card["recipe"]["init_logit_scale"])
    assert card["training"]["train_cpu_s"] >= 0 and card["training"]["threads"] >= 1
    assert len(card["recipe"]["class_names"]) == 10
    pool = np.asarray(card["pool"]["indices"])
    assert card["pool"]["num_train"] == 100 and card["pool"]["size"] == len(pool) == 50
    assert np.bincount(np.arange(100)[pool] % 10).tolist() == [5] * 10  # the replica's labels cycle 0..9
    zs = card["zero_shot"]
    assert zs["num_images"] == 40 and zs["seen_classes"] == list(range(6)) and zs["mcm_temperature"] == 1.0
    for key in ("acc_all", "acc_seen", "mcm_auroc"):
        assert 0.0 <= zs[key] <= 100.0
    weights = out / card["weights"]["file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["weights"]["sha256"]
    assert demo_clip.card_is_current(str(out))


def test_weights_load_through_pretrain_path(built) -> None:
    """The file loads into clip_tiny at the demo's img_size, and text_encoder clip uses its text tower."""
    from usb_cfsg.nets.clip import build_clip_net, create_clip
    from usb_cfsg.nets.text import clip_text_embeddings

    out, card, _ = built
    path = str(out / card["weights"]["file"])
    model, tokenizer = create_clip("clip-tiny", None, path, 64)
    saved = torch.load(path, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    names = card["recipe"]["class_names"][:6]
    net = build_clip_net(
        "clip-tiny",
        6,
        None,
        path,
        img_size=64,
        class_names=names,
        text_encoder="clip",
        prompt_templates=card["zero_shot"]["templates"],
    )
    expected = clip_text_embeddings(model, tokenizer, names, card["zero_shot"]["templates"])
    assert torch.allclose(net.text_embeddings, expected, atol=1e-5)


def test_command_line_reuses_a_current_card_and_rebuilds_a_stale_one(built, monkeypatch, caplog) -> None:
    out, card, data = built
    calls = []
    monkeypatch.setattr(demo_clip, "build_demo_clip", lambda *a, **k: calls.append(a) or card)
    assert demo_clip.main(["--out", str(out), "--reuse", "--data-dir", str(data)]) == 0
    assert calls == []
    weights = out / card["weights"]["file"]
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert not demo_clip.card_is_current(str(out))
        assert demo_clip.main(["--out", str(out), "--reuse", "--steps", "2", "--data-dir", str(data)]) == 0
        assert len(calls) == 1 and calls[0][1].steps == 2
    finally:
        weights.write_bytes(original)


def test_the_build_prints_no_random_init_alarm(tmp_path, caplog) -> None:
    data = write_fmnist_replica(tmp_path / "data", num_train=40, num_test=20)
    with caplog.at_level("WARNING"):
        demo_clip.build_demo_clip(
            str(tmp_path / "out"), demo_clip.Recipe(steps=1, batch_size=8), seed=0, data_dir=str(data)
        )
    assert "initialized randomly" not in caplog.text  # training from scratch is intended here


def test_the_console_config_lists_only_keys_that_differ_from_the_defaults() -> None:
    from usb_cfsg.config import build_config, format_config

    args = build_config(["--algorithm", "cfsg_clip", "--lr", "0.5", "--vsi_topk", "2"], validate=False)
    shown = dict(line.strip().split(": ", 1) for line in format_config(args).splitlines())
    assert shown == {"algorithm": "cfsg_clip", "lr": "0.5", "vsi_topk": "2", "save_name": args.save_name}


# ------------------------------------------------------------------ the scene recipe (fmnist_cluttered)


def test_noisy_captions_are_fixed_wrong_and_of_the_asked_share() -> None:
    targets = np.arange(2000) % 10
    recipe = demo_clip.Recipe(caption_noise=0.3)
    labels, wrong = demo_clip.noisy_caption_labels(targets, recipe)
    again, _ = demo_clip.noisy_caption_labels(targets, recipe)
    assert np.array_equal(labels, again)
    changed = labels != targets
    assert wrong == int(changed.sum()) and 0.25 < changed.mean() < 0.35 and labels.max() < 10
    assert demo_clip.noisy_caption_labels(targets, demo_clip.Recipe())[1] == 0
    with pytest.raises(ConfigError, match="caption_noise"):
        demo_clip.Recipe(caption_noise=1.0).check()
    with pytest.raises(ConfigError, match="images must be clean, scenes or badged"):
        demo_clip.Recipe(images="photos").check()


def test_scene_recipe_builds_a_card_for_the_cluttered_scenes(tmp_path: Path) -> None:
    from tests.datasets.conftest import make_args
    from usb_cfsg.datasets import build_openset_datasets, read_source

    data = write_fmnist_replica(tmp_path / "data", num_train=100, num_test=30)
    recipe = demo_clip.scene_recipe(
        steps=2, batch_size=16, warmup_steps=1, img_size=32, scene_size=32, scene_fragments=3, caption_noise=0.2
    )
    assert recipe.task == "fmnist_cluttered" and recipe.images == "scenes" and recipe.pretrain_clutter == 0.0
    card = demo_clip.build_demo_clip(str(tmp_path / "out"), recipe, seed=0, data_dir=str(data))
    assert card["dataset"] == "fmnist_cluttered" and card["zero_shot"]["dataset"] == "fmnist_cluttered"
    assert card["use"]["scene_size"] == 32 and card["use"]["img_size"] == 32
    assert card["recipe"]["noisy_captions"] == int(
        demo_clip.noisy_caption_labels(np.arange(100)[card["pool"]["indices"]] % 10, recipe)[1]
    )
    assert 0.0 <= card["zero_shot"]["energy_auroc"] <= 100.0
    # the card's test images are the dataset's test scenes
    src = read_source("fmnist_cluttered", str(data), scene_size=32, scene_fragments=3)
    plain = read_source("fmnist_openset", str(data))  # the helpers take the plain items
    assert np.array_equal(demo_clip.task_test_images(plain, recipe, 30), np.asarray(src.test_items))
    # pretraining on scenes: the pool's scenes of fmnist_cluttered with this card (clutter from the pool only)
    pool = np.asarray(card["pool"]["indices"])
    scenes = demo_clip.pretraining_images(
        plain, pool, demo_clip.scene_recipe(pretrain_clutter=1.0, scene_size=32, scene_fragments=3)
    )
    pooled = read_source(
        "fmnist_cluttered",
        str(data),
        scene_size=32,
        scene_fragments=3,
        pretrain_pool=str(tmp_path / "out" / "card.json"),
    )
    assert np.array_equal(scenes, np.asarray(pooled.train_items.take(pool)))
    # half of them without their clutter: the item alone, at the same place and scale
    mixed = demo_clip.pretraining_images(
        plain, pool, demo_clip.scene_recipe(scene_size=32, scene_fragments=3, pretrain_clutter=0.5)
    )
    alone = demo_clip.pretraining_images(
        plain,
        pool,
        demo_clip.scene_recipe(scene_size=32, scene_fragments=3, pretrain_fragments=0, pretrain_clutter=1.0),
    )
    same_as_cluttered = np.all(mixed == scenes, axis=(1, 2))
    same_as_alone = np.all(mixed == alone, axis=(1, 2))
    assert (same_as_cluttered | same_as_alone).all() and 0.2 < same_as_alone.mean() < 0.8
    # the recipe's default: every pretraining scene is the item alone
    default = demo_clip.pretraining_images(plain, pool, demo_clip.scene_recipe(scene_size=32, scene_fragments=3))
    assert np.array_equal(default, alone)
    # the card applies to both datasets of the family
    for dataset in ("fmnist_cluttered", "fmnist_openset"):
        args = make_args(
            dataset=dataset,
            data_dir=str(data),
            num_classes=6,
            num_labels=12,
            img_size=32,
            scene_size=32,
            pretrain_pool=str(tmp_path / "out" / "card.json"),
        )
        datasets, _ = build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.5,) * 3, None)
        assert len(datasets["train_ulb"]) == 100 - len(pool)


def test_batch_augment_keeps_the_colour_of_rgb_images() -> None:
    rng = np.random.default_rng(0)
    resized = rng.integers(0, 256, size=(3, 9, 9, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    out = demo_clip.BatchAugment(resized, 6, mean, std)(torch.tensor([1, 2]), torch.Generator().manual_seed(3))
    assert out.shape == (2, 3, 6, 6)
    for b, src in enumerate([1, 2]):
        pixels = np.stack([np.round((out[b, c].numpy() * std[c] + mean[c]) * 255) for c in range(3)], -1).astype(int)
        windows = [resized[src, y : y + 6, x : x + 6].astype(int) for y in range(4) for x in range(4)]
        assert any((w == pixels).all() or (w[:, ::-1] == pixels).all() for w in windows)


def test_badge_captions_name_the_mark_for_the_asked_share() -> None:
    items = np.arange(2000) % 10
    marks = np.arange(2000) % 3
    recipe = demo_clip.badge_recipe(p_fine=0.3)
    names, classes, fine = demo_clip.badge_captions(items, marks, recipe, (0, 1, 4))
    assert len(names) == 10 + 30 and names[:10][4] == "Coat" and names[10 + 4 * 3 + 2] == "Coat with a four badge"
    assert fine == int((classes >= 10).sum()) and abs(fine / 2000 - 0.3) < 0.04
    named = classes >= 10
    assert np.array_equal(classes[~named], items[~named])  # the others name the item alone
    assert np.array_equal(classes[named], 10 + items[named] * 3 + marks[named])
    again = demo_clip.badge_captions(items, marks, recipe, (0, 1, 4))[1]
    assert np.array_equal(classes, again)  # fixed per image, as a web caption
    with pytest.raises(ConfigError, match="badged"):
        demo_clip.Recipe(images="badged").check()


def test_badged_recipe_builds_a_card_with_near_and_far_figures(tmp_path: Path) -> None:
    data = write_fmnist_replica(tmp_path / "data", num_train=100, num_test=40)
    recipe = demo_clip.badge_recipe(steps=2, batch_size=16, warmup_steps=1, img_size=32, scene_size=32, badge_size=6)
    card = demo_clip.build_demo_clip(str(tmp_path / "out"), recipe, seed=0, data_dir=str(data))
    zs = card["zero_shot"]
    assert card["dataset"] == "fmnist_badged" and card["use"]["badge_size"] == 6
    assert zs["seen_classes"] == list(range(8))
    assert {"mcm_auroc_near", "mcm_auroc_far", "energy_auroc_near", "energy_auroc_far"} <= set(zs)
    assert card["recipe"]["mark_captions"] > 0 and len(card["recipe"]["class_names"]) == 40
