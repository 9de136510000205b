"""augment_device's parameter draws (USB's distributions), its views and the raw uint8 items."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from usb_cfsg.config import augment_device_problems
from usb_cfsg.datasets.batched_views import (
    RANDAUGMENT_OPS,
    RRC_RATIO,
    RRC_SCALE,
    BatchedViews,
    RawImage,
    draw_crop,
    draw_randaugment,
    draw_resized_crop,
)

#: chi-square critical value at p = 0.001 for 13 degrees of freedom (14 operations)
CHI2_13_P001 = 34.53


def test_operations_are_chosen_uniformly_with_replacement_as_usbs_randaugment():
    draws = draw_randaugment(torch.Generator().manual_seed(0), 20000, 224)
    choice = draws["choice"]
    assert choice.shape == (20000, 3)
    counts = torch.bincount(choice.flatten(), minlength=len(RANDAUGMENT_OPS)).double()
    expected = choice.numel() / len(RANDAUGMENT_OPS)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_13_P001, (chi2, counts.tolist())
    # with replacement (random.choices): the same operation twice in one image about 1 - (13/14)(12/14) of the time
    repeated = float(
        ((choice[:, 0] == choice[:, 1]) | (choice[:, 0] == choice[:, 2]) | (choice[:, 1] == choice[:, 2]))
        .double()
        .mean()
    )
    assert abs(repeated - (1 - 13 * 12 / 14**2)) < 0.01


def test_magnitudes_are_uniform_in_usbs_ranges_and_cutout_in_half_the_width():
    draws = draw_randaugment(torch.Generator().manual_seed(1), 20000, 224)
    for k, (name, _, lo, hi) in enumerate(RANDAUGMENT_OPS):
        v = draws["magnitude"][draws["choice"] == k]
        assert v.min() >= lo and v.max() <= hi, name
        assert abs(float(v.mean()) - (lo + hi) / 2) < 0.03 * (hi - lo), name  # uniform: the mean is the midpoint
    assert 0 <= draws["cutout"].min() and draws["cutout"].max() <= 0.5
    assert draws["cutout_x"].min() >= 1 and draws["cutout_x"].max() <= 224  # USB's np.random.uniform(w): (1, w]


def test_resized_crop_windows_follow_usbs_scale_and_ratio():
    win = draw_resized_crop(torch.Generator().manual_seed(2), 5000, 256, 256)
    top, left, h, w = win["top"], win["left"], win["height"], win["width"]
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 256).all() and (left + w <= 256).all()
    area = (h * w).double() / 256**2
    assert area.min() >= RRC_SCALE[0] * 0.9 and area.max() <= 1.0
    ratio = w.double() / h.double()
    slack = 0.05  # sides are rounded to pixels
    assert ratio.min() >= RRC_RATIO[0] - slack and ratio.max() <= RRC_RATIO[1] + slack
    assert len(set(zip(top.tolist(), left.tolist(), h.tolist()))) > 4000  # per-image windows


def test_resized_crop_falls_back_to_usbs_centre_crop():
    # a 1 x 200 image: no window of ratio in [3/4, 4/3] fits, so every draw takes the fallback
    win = draw_resized_crop(torch.Generator().manual_seed(3), 8, 1, 200)
    assert win["height"].tolist() == [1] * 8 and win["width"].tolist() == [round(1 * RRC_RATIO[1])] * 8
    assert win["left"].tolist() == [(200 - 1) // 2] * 8 and win["top"].tolist() == [0] * 8


def test_weak_crop_corners_cover_every_offset_and_flip_half():
    top, left, flip = draw_crop(torch.Generator().manual_seed(4), 20000, 256, 256, 224)
    assert set(top.tolist()) == set(range(33)) and set(left.tolist()) == set(range(33))
    assert abs(float(flip.double().mean()) - 0.5) < 0.02


def _raw(count=6, side=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (1, side, side, 3), generator=g, dtype=torch.uint8)
    return base.expand(count, side, side, 3).contiguous()


def test_views_have_their_shapes_normalisation_and_per_image_parameters():
    views = BatchedViews(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    raw = _raw()  # six copies of one image
    for make in (views.weak, views.strong):
        out = make(raw, views.generator(0))
        assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
        assert out.min() >= (0 - 0.5) / 0.25 - 1e-6 and out.max() <= (1 - 0.5) / 0.25 + 1e-6
        assert len({tuple(o.flatten()[:64].tolist()) for o in out}) > 1  # each image its own parameters
        assert torch.equal(out, make(raw, views.generator(0)))  # the same generator, the same views
        assert not torch.equal(out, make(raw, views.generator(1)))  # the next step draws anew


def test_weak_view_is_a_crop_of_the_image():
    views = BatchedViews(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    raw = _raw(count=1)
    out = (views.weak(raw, views.generator(0))[0] * 255).round().permute(1, 2, 0).to(torch.uint8)
    img = raw[0]
    found = any(
        torch.equal(out, img[i : i + 32, j : j + 32]) or torch.equal(out, img[i : i + 32, j : j + 32].flip(1))
        for i in range(9)
        for j in range(9)
    )
    assert found


def test_expand_makes_the_views_train_step_takes():
    views = BatchedViews(32, (0.5,) * 3, (0.25,) * 3)
    batch = {"x_lb_raw": _raw(2), "y_lb": torch.tensor([0, 1]), "x_ulb_raw": _raw(3), "idx_ulb": torch.arange(3)}
    out = views.expand(batch, ["x_lb", "y_lb", "x_ulb_w", "x_ulb_s"], step_seed=5)
    assert set(out) == {"x_lb", "y_lb", "x_ulb_w", "x_ulb_s", "idx_ulb"}
    assert out["x_lb"].shape == (2, 3, 32, 32) and out["x_ulb_s"].shape == (3, 3, 32, 32)
    assert not torch.equal(out["x_ulb_w"], out["x_ulb_s"])
    both = views.expand(batch, ["x_lb", "x_lb_w2", "x_ulb_w", "x_ulb_w2"], step_seed=5)
    assert not torch.equal(both["x_ulb_w"], both["x_ulb_w2"]) and torch.equal(both["x_lb"], out["x_lb"])


def test_views_refuse_what_is_not_a_raw_batch():
    views = BatchedViews(32, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match=r"uint8 \[B, H, W, 3\]"):
        views.weak(_raw().permute(0, 3, 1, 2).float(), views.generator(0))
    with pytest.raises(ValueError, match="smaller than img_size 32"):
        views.weak(_raw(side=20), views.generator(0))


def test_raw_image_is_channels_last_uint8():
    from PIL import Image

    a = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    out = RawImage()(Image.fromarray(a))
    assert out.dtype == torch.uint8 and out.shape == (5, 4, 3) and np.array_equal(out.numpy(), a)
    assert RawImage()(Image.fromarray(a[:, :, 0])).shape == (5, 4, 3)  # grayscale -> 3 channels


@pytest.mark.parametrize(
    "keys, problem",
    [
        (dict(augment_device="cpu", algorithm="comatch"), "comatch uses other views"),
        (dict(augment_device="cuda", algorithm="fixmatch", device="cpu"), "set augment_device: cpu"),
        (dict(augment_device="none", algorithm="comatch"), None),
        (dict(augment_device="cpu", algorithm="cfsg_clip", device="cpu"), None),
    ],
)
def test_augment_device_configuration_problems(keys, problem):
    problems = augment_device_problems(SimpleNamespace(**keys))
    assert (problem is None and problems == []) or (len(problems) == 1 and problem in problems[0])


def test_raw_items_read_the_shared_cache_without_seeding(cub_root):
    from usb_cfsg.datasets import build_openset_datasets
    from usb_cfsg.datasets.batched_views import resized_side, use_raw_views
    from usb_cfsg.datasets.cache import attach_image_cache
    from usb_cfsg.engine.sampling import SeededDataset

    args = SimpleNamespace(
        dataset="cub200",
        data_dir=cub_root,
        num_classes=3,
        num_labels=6,
        include_lb_to_ulb=True,
        img_size=32,
        crop_ratio=0.875,
        seed=0,
    )
    built = build_openset_datasets(args, "fixmatch", (0.5,) * 3, (0.25,) * 3, None)[0]
    sets = {"train_lb": built["train_lb"], "train_ulb": built["train_ulb"]}
    use_raw_views(sets, 32, 0.875)
    side = resized_side(32, 0.875)
    plain = sets["train_ulb"][0]["x_ulb_raw"].clone()
    attach_image_cache(sets)
    item = SeededDataset(sets["train_ulb"])[(0, 123)]
    assert set(item) == {"idx_ulb", "x_ulb_raw", "y_ulb"} and item["x_ulb_raw"].shape == (side, side, 3)
    assert torch.equal(item["x_ulb_raw"], plain)  # the cache stores the same pixels
    cache = sets["train_ulb"].__sample__.images
    start, size = cache.untyped_storage().data_ptr(), cache.untyped_storage().nbytes()
    assert start <= item["x_ulb_raw"].data_ptr() < start + size  # a view of the cache, not a copy
    state = torch.random.get_rng_state()
    SeededDataset(sets["train_lb"])[(1, 7)]
    assert torch.equal(state, torch.random.get_rng_state()) and item["y_ulb"] == int(sets["train_ulb"].targets[0])
