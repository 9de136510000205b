"""Every run records the demo CLIP build it used (demo_clip_sha256) and compare never mixes builds."""

import hashlib
import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

import train
from tests.conftest import tiny_run_argv
from usb_cfsg.config import build_config
from usb_cfsg.engine.provenance import demo_clip_sha256, record_demo_clip
from usb_cfsg.errors import ConfigError
from usb_cfsg_tools import compare

WEIGHTS = "demo_clip_tiny.pt"


def write_build(folder: Path, seed: int) -> str:
    """A demo-CLIP-like folder: clip-tiny weights and a card naming them (as python -m usb_cfsg_tools.demo_clip
    writes them); returns the weights' sha256."""
    import open_clip

    from usb_cfsg.nets.clip import _ensure_configs

    _ensure_configs()  # registers clip-tiny with open_clip
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model("clip-tiny", pretrained=None)
    torch.save(model.state_dict(), folder / WEIGHTS)
    sha = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    card = {
        "format": 1,
        "dataset": "fmnist_openset",
        "weights": {"file": WEIGHTS, "sha256": sha},
        "pool": {"num_train": 10, "indices": [0, 1]},
    }
    (folder / "card.json").write_text(json.dumps(card))
    return sha


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("builds")
    return {name: (root / name, write_build(root / name, seed)) for seed, name in enumerate(("a", "b"))}


def test_the_build_comes_from_the_card_of_the_weights_or_the_pool(builds, tmp_path):
    (a, sha_a), (b, sha_b) = builds["a"], builds["b"]
    assert sha_a != sha_b
    assert demo_clip_sha256(str(a / WEIGHTS), None) == sha_a
    assert demo_clip_sha256(None, str(a / "card.json")) == sha_a
    assert demo_clip_sha256(str(a / WEIGHTS), str(a / "card.json")) == sha_a
    assert demo_clip_sha256(None, None) is None
    other = tmp_path / "other.pt"  # weights without a card beside them: no demo CLIP
    other.write_bytes((a / WEIGHTS).read_bytes())
    assert demo_clip_sha256(str(other), None) is None
    with pytest.raises(ConfigError) as err:  # weights of one build, the pool card of another
        demo_clip_sha256(str(a / WEIGHTS), str(b / "card.json"))
    assert sha_a in str(err.value) and sha_b in str(err.value)
    changed = tmp_path / "changed"  # weights replaced after the card was written
    changed.mkdir()
    (changed / "card.json").write_text((a / "card.json").read_text())
    (changed / WEIGHTS).write_bytes((b / WEIGHTS).read_bytes())
    with pytest.raises(ConfigError, match="not the build its card") as err:
        demo_clip_sha256(str(changed / WEIGHTS), None)
    assert (
        sha_a in str(err.value) and sha_b in str(err.value) and "python -m usb_cfsg_tools.demo_clip" in str(err.value)
    )


def test_a_given_build_is_a_pin_a_resume_keeps_the_checkpoints(builds):
    (_, sha_a), (b, sha_b) = builds["a"], builds["b"]
    args = Namespace(pretrain_path=str(b / WEIGHTS), pretrain_pool=None, demo_clip_sha256=None)
    assert record_demo_clip(args) == sha_b and args.demo_clip_sha256 == sha_b
    args.demo_clip_sha256 = sha_a  # a saved config.yaml of a build-a run, pointed at build b
    with pytest.raises(ConfigError) as err:
        record_demo_clip(args)
    text = str(err.value)
    assert sha_a in text and sha_b in text and "--demo_clip_sha256 none" in text
    # a resume continues its checkpoint's weights: its build is recorded, whatever the card says now
    assert record_demo_clip(args, {"demo_clip_sha256": sha_a}) == sha_a
    assert record_demo_clip(args, {}) == sha_b  # a checkpoint from before the record: the card's
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        build_config(["--demo_clip_sha256", "abc"])


def test_runs_record_the_build_in_config_metrics_and_eval(builds, cub_root, tmp_path, capsys):
    import eval as eval_py

    a, sha_a = builds["a"]
    _, sha_b = builds["b"]
    argv = tiny_run_argv(cub_root, str(tmp_path), "r", iters=2, num_eval_iter=2, use_tensorboard="false")
    assert train.cli(argv + ["--pretrain_path", str(a / WEIGHTS)]) == 0
    run = tmp_path / "r"
    assert yaml.safe_load((run / "config.yaml").read_text())["demo_clip_sha256"] == sha_a
    assert json.loads((run / "openset_metrics.json").read_text())["demo_clip_sha256"] == sha_a
    assert f"demo CLIP: {sha_a}" in capsys.readouterr().err
    assert eval_py.cli(["--load_path", str(run / "latest_model.pth"), "--out_dir", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "openset_metrics.json").read_text())["demo_clip_sha256"] == sha_a

    # the build is rebuilt in place: rerunning the saved config refuses, naming both builds
    (a / WEIGHTS).write_bytes((builds["b"][0] / WEIGHTS).read_bytes())
    (a / "card.json").write_text((builds["b"][0] / "card.json").read_text())
    try:
        capsys.readouterr()
        assert train.cli(["--c", str(run / "config.yaml"), "--save_name", "r2"]) != 0
        err = capsys.readouterr().err
        assert sha_a in err and sha_b in err and "--demo_clip_sha256 none" in err
        assert not (tmp_path / "r2").exists()
    finally:
        write_build(a, 0)  # the module's build a again
    # without a demo CLIP: null
    assert train.cli(tiny_run_argv(cub_root, str(tmp_path), "plain", iters=2, num_eval_iter=2)) == 0
    assert json.loads((tmp_path / "plain" / "openset_metrics.json").read_text())["demo_clip_sha256"] is None


def _fake_finished(run, sha):
    run.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"primary_score": "msp", "num_seen": 3, "scores": {}, "demo_clip_sha256": sha}
    metrics.update({key: 0.5 for key, _ in compare.METRICS})
    (run.run_dir / compare.METRICS_FILE).write_text(json.dumps(metrics))
    run.status, run.detail = "finished", "0 s"
    return run


def test_compare_refuses_runs_of_two_builds(builds, cub_root, tmp_path, monkeypatch, capsys):
    (a, sha_a), (_, sha_b) = builds["a"], builds["b"]
    base = tmp_path / "base.yaml"
    argv = tiny_run_argv(cub_root, "./elsewhere", "base", iters=2, num_eval_iter=2, use_tensorboard="false")
    cfg = {argv[i][2:]: yaml.safe_load(argv[i + 1]) for i in range(0, len(argv), 2)}
    cfg["pretrain_path"] = str(a / WEIGHTS)
    base.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cmp"
    # the build changes while the comparison runs: fixmatch's runs are build a's, openmatch's build b's
    monkeypatch.setattr(
        compare, "_execute", lambda run, *_: _fake_finished(run, sha_a if run.row.name == "fixmatch" else sha_b)
    )
    cmd = ["--c", str(base), "--algorithms", "fixmatch", "openmatch", "--seeds", "0", "--save_dir", str(out)]
    capsys.readouterr()
    assert compare.main(cmd) == 2
    err = capsys.readouterr().err
    assert "different demo CLIP builds" in err and "no table" in err
    assert f"build {sha_a}: fixmatch seed 0" in err and f"build {sha_b}: openmatch seed 0" in err
    assert "Run the same comparison again" in err
    assert not (out / "results.md").exists() and not (out / "results.csv").exists()

    # runs of one build (and runs without a demo CLIP) are tabulated, with the build named
    assert compare.check_one_build([{"demo_clip_sha256": sha_a}, {"demo_clip_sha256": None}]) == sha_a
    monkeypatch.setattr(compare, "_execute", lambda run, *_: _fake_finished(run, sha_a))
    for name in ("openmatch_seed0",):  # openmatch's build-b runs: stale, since the config now gives build a
        (out / "runs" / name / "config.yaml").write_text(yaml.safe_dump({**cfg, "demo_clip_sha256": sha_b}))
    assert compare.main(cmd) == 0
    assert f"Demo CLIP build (sha256 of its weights, from its card.json): {sha_a}" in (out / "results.md").read_text()


def test_a_finished_run_of_another_build_is_stale(builds, cub_root, tmp_path):
    (a, sha_a), (_, sha_b) = builds["a"], builds["b"]
    argv = tiny_run_argv(cub_root, str(tmp_path), "r", pretrain_path=str(a / WEIGHTS))
    expected = compare.expected_config(argv)
    assert expected["demo_clip_sha256"] == sha_a
    run = compare.Run(compare.Row("fixmatch", "fixmatch"), 0, tmp_path / "r", tmp_path / "r.log")
    run.run_dir.mkdir()
    (run.run_dir / compare.METRICS_FILE).write_text("{}")
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump({**expected, "demo_clip_sha256": sha_b}))
    done, why = compare.is_finished(run, expected)
    assert not done and "demo_clip_sha256" in why
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(expected))
    assert compare.is_finished(run, expected) == (True, "")
