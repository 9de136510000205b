"""End to end on the CUB replica: train.py's open-set report, eval.py reproducing it, predict.py.

One short fixmatch run (clip_tiny, random init, 32 px, 4 iterations, 3 seen classes of the 6-class
replica) is shared by every test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import predict as predict_cli
import train as train_cli
from tests.conftest import tiny_run_argv
from usb_cfsg.config import build_config
from usb_cfsg.engine import main as train_main
from usb_cfsg.errors import ConfigError
from usb_cfsg.evaluation import HEADLINE_KEYS, JSON_KEYS, SCORE_KEYS, read_confusion_csv
from usb_cfsg.evaluation.offline import build_eval_config, check_out_dir, load_eval_algorithm
from usb_cfsg.evaluation.predict import load_predictor, predict_paths

K = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _restore_logging():
    """The entry points reconfigure the 'usb_cfsg' logger; give later test modules theirs back."""
    log = logging.getLogger("usb_cfsg")
    state = (list(log.handlers), log.level, log.propagate)
    yield
    for h in list(log.handlers):
        if h not in state[0]:
            log.removeHandler(h)
            h.close()
    for h in state[0]:
        if h not in log.handlers:
            log.addHandler(h)
    log.setLevel(state[1])
    log.propagate = state[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cub_root):
    root = tmp_path_factory.mktemp("cli")
    argv = tiny_run_argv(cub_root, str(root / "runs"), "fm", img_size=32, iters=4, num_eval_iter=2, num_log_iter=2)
    results = train_main(build_config(argv))  # train.py's main, returning the results dict
    return {
        "root": root,
        "data": Path(cub_root),
        "dir": root / "runs" / "fm",
        "results": results,
        "ckpt": root / "runs" / "fm" / "latest_model.pth",
    }


def _strict_json(path):
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=reject)


def _folder_digest(folder: Path):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ train.py


def test_training_ends_with_the_openset_report(run):
    d = run["dir"]
    data = _strict_json(d / "openset_metrics.json")
    assert list(data) == list(JSON_KEYS)
    assert data["algorithm"] == "fixmatch" and data["dataset"] == "cub200" and data["num_seen"] == K
    assert data["num_test_seen"] == 6 and data["num_test_unseen"] == 6  # replica: 2 test images per class
    assert data["primary_score"] == "msp" and list(data["scores"]) == ["msp", "energy"]
    # threshold_rule labeled_tpr (the default): every score's threshold keeps 95% of the 6 labeled images as seen
    assert data["calibration"]["threshold_rule"] == "labeled_tpr" and data["calibration"]["num_labeled"] == 6
    assert data["threshold"] == data["calibration"]["thresholds"]["msp"]
    assert data["checkpoint"] == os.path.abspath(run["ckpt"]) and run["ckpt"].is_file()
    for key in HEADLINE_KEYS:
        assert isinstance(data[key], float) and 0.0 <= data[key] <= 1.0, key
    for name, values in data["scores"].items():
        assert list(values) == list(SCORE_KEYS) + ["threshold_source"]
        assert all(isinstance(values[k], float) and 0.0 <= values[k] <= 1.0 for k in SCORE_KEYS if k != "threshold"), (
            name
        )
        if name == data["primary_score"]:
            assert all(values[k] == data[k] for k in SCORE_KEYS)
    # ranges and thresholds fitted on the unlabeled training images, stored in latest_model.pth as well
    assert data["calibration"]["num_images"] == 24 and "unlabeled training images" in data["calibration"]["source"]
    assert torch.load(run["ckpt"], weights_only=True)["calibration"] == data["calibration"]
    for values in data["scores"].values():
        assert values["threshold_source"] == "labeled_tpr: keeps 95% of 6 labeled training images as seen"
    # written after USB's EvaluationHook.after_run saved latest_model.pth (re-saved with the calibration)
    assert os.path.getmtime(d / "openset_metrics.json") >= os.path.getmtime(d / "split.json")

    for name in ("roc.png", "score_hist.png"):
        assert (d / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(d / name) as img:
            img.verify()
    cm, names = read_confusion_csv(d / "confusion.csv")
    assert cm.shape == (K + 1, K + 1) and cm.sum() == 12 and len(names) == K
    assert len((d / "confusion.csv").read_text().strip().splitlines()) == K + 2  # header + K+1 rows

    results = run["results"]
    for key in HEADLINE_KEYS:
        assert results[f"test_open/{key}"] == pytest.approx(data[key], abs=0), key
    assert "eval/best_acc" in results


def test_tensorboard_has_openset_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["dir"] / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"test_open/auroc", "test_open/closed_acc", "test_open/msp/auroc", "test_open/energy/auroc"} <= tags
    # curves, not one point: every evaluation during training (num_eval_iter 2 of 4) adds one
    assert len(acc.Scalars("test_open/auroc")) >= 2 and len(acc.Scalars("test_open/unknown_recall")) >= 2


# ------------------------------------------------------------------ eval.py


def _assert_same_numbers(a, b):
    for key in HEADLINE_KEYS + ("threshold", "num_test_seen", "num_test_unseen"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key
    assert list(a["scores"]) == list(b["scores"])
    for name in a["scores"]:
        for key in SCORE_KEYS:
            assert a["scores"][name][key] == pytest.approx(b["scores"][name][key], abs=1e-9), (name, key)


@pytest.mark.parametrize("with_config", [False, True], ids=["config-from-checkpoint", "config-yaml"])
def test_eval_reproduces_the_run(run, tmp_path, with_config):
    before = _folder_digest(run["dir"])
    out = tmp_path / "eval_out"
    argv = ["--load_path", str(run["ckpt"]), "--out_dir", str(out)]
    if with_config:
        argv = ["--c", str(run["dir"] / "config.yaml")] + argv
    assert eval_cli.cli(argv) == 0
    ours, theirs = _strict_json(out / "openset_metrics.json"), _strict_json(run["dir"] / "openset_metrics.json")
    _assert_same_numbers(ours, theirs)
    assert ours["checkpoint"] == theirs["checkpoint"]
    assert ours["calibration"] == theirs["calibration"]  # the stored one, fitted on training data
    assert (out / "roc.png").is_file() and (out / "score_hist.png").is_file()
    assert (out / "confusion.csv").read_text() == (run["dir"] / "confusion.csv").read_text()
    assert _folder_digest(run["dir"]) == before  # the run folder is left as it was


def test_eval_builds_the_net_for_the_checkpoint_quietly(run, tmp_path, capfd):
    """No random-init warning, no optimizer, no weights fetched: even a run configured with a
    pretrained tag evaluates offline (conftest sets HF_HUB_OFFLINE)."""
    out = tmp_path / "quiet"
    rc = eval_cli.cli(["--load_path", str(run["ckpt"]), "--out_dir", str(out), "--pretrained", "openai"])
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert rc == 0, text
    assert "evaluating" in text  # the log is what was captured
    for noise in ("RANDOM INITIALISATION", "initialized randomly", "Create optimizer and scheduler", "Retrying"):
        assert noise not in text, noise
    ours, theirs = _strict_json(out / "openset_metrics.json"), _strict_json(run["dir"] / "openset_metrics.json")
    _assert_same_numbers(ours, theirs)


def test_eval_errors_exit_2_with_one_line(run, tmp_path, capsys):
    bad = tmp_path / "plain.pth"
    torch.save(torch.zeros(3), bad)
    assert eval_cli.cli(["--load_path", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(bad) in err and "\n" not in err
    assert eval_cli.cli(["--out_dir", str(tmp_path)]) == 2
    assert "--load_path" in capsys.readouterr().err


def test_eval_writes_beside_the_checkpoint_it_loaded_and_prints_to_stdout(run, tmp_path, capsys, monkeypatch):
    """eval.py of a copied run writes into the copy, never into the save_dir stored in its config (the live run)."""
    copy = tmp_path / "copy"
    shutil.copytree(run["dir"], copy)
    before = _folder_digest(run["dir"])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert eval_cli.cli(["--load_path", "copy/latest_model.pth"]) == 0
    out = capsys.readouterr().out
    data = _strict_json(copy / "openset_metrics.json")
    assert data["checkpoint"] == str(copy / "latest_model.pth")
    _assert_same_numbers(data, _strict_json(run["dir"] / "openset_metrics.json"))
    assert _folder_digest(run["dir"]) == before  # the run it was copied from is left as it was
    # the results on stdout (eval.py > out.txt keeps them), the checkpoint's path in full
    assert "Open-set evaluation: fixmatch on cub200" in out and "checkpoint: copy/latest_model.pth" in out
    assert f"open-set metrics written to {os.path.join('copy', 'openset_metrics.json')}" in out


def test_eval_refuses_to_overwrite_another_runs_results(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run["dir"], copy)
    before = _folder_digest(run["dir"])
    assert eval_cli.cli(["--load_path", str(copy / "latest_model.pth"), "--out_dir", str(run["dir"])]) == 2
    err = capsys.readouterr().err
    assert str(run["dir"] / "openset_metrics.json") in err and str(copy / "latest_model.pth") in err
    assert "does not overwrite another run's results" in err and "--out_dir" in err
    assert _folder_digest(run["dir"]) == before
    # model_best.pth beside latest_model.pth: its results would replace the run's own
    with pytest.raises(ConfigError, match="holds the results of"):
        check_out_dir(str(run["dir"]), str(run["dir"] / "model_best.pth"))
    # another run's folder without results yet
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("algorithm: fixmatch\n")
    with pytest.raises(ConfigError, match="is another run's folder"):
        check_out_dir(str(other), str(run["ckpt"]))
    check_out_dir(str(run["dir"]), str(run["ckpt"]))  # re-evaluating a run into its own folder is fine
    check_out_dir(str(tmp_path / "new"), str(run["ckpt"]))


def test_eval_refits_the_thresholds_under_another_rule(run, tmp_path):
    """A finished run evaluated under the other threshold_rule without retraining; threshold-free numbers stay."""
    stored = _strict_json(run["dir"] / "openset_metrics.json")
    other = "otsu" if stored["calibration"]["threshold_rule"] == "labeled_tpr" else "labeled_tpr"
    out = tmp_path / "rule"
    argv = ["--load_path", str(run["ckpt"]), "--out_dir", str(out), "--threshold_rule", other]
    assert eval_cli.cli(argv + ["--threshold_tpr", "0.8"]) == 0
    data = _strict_json(out / "openset_metrics.json")
    assert data["calibration"]["threshold_rule"] == other
    for key in ("closed_acc", "auroc", "fpr95"):
        assert data[key] == pytest.approx(stored[key], abs=1e-9)
    if other == "labeled_tpr":
        assert data["calibration"]["threshold_tpr"] == 0.8 and data["calibration"]["num_labeled"] > 0
        assert all(v["threshold_source"].startswith("labeled_tpr: keeps 80% of") for v in data["scores"].values())
    else:
        assert data["scores"]["msp"]["threshold"] == 0.5 and "Otsu" in data["scores"]["energy"]["threshold_source"]


# ------------------------------------------------------------------ predict.py


def _lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


def test_predict_folder_with_a_corrupt_file(run, tmp_path, capsys):
    images = sorted((run["data"] / "CUB_200_2011" / "images").rglob("*.jpg"))
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    for i, src in enumerate(images[:5]):
        target = folder / ("nested" if i % 2 else "") / f"img{i}.JPG"
        target.write_bytes(src.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored: not an image extension")

    rc = predict_cli.main(["--load_path", str(run["ckpt"]), "--device", "cpu", "--batch_size", "2", str(folder)])
    captured = capsys.readouterr()
    assert rc == 1
    lines = _lines(captured.out)  # stdout holds nothing but JSON lines
    assert len(lines) == 6
    threshold = torch.load(run["ckpt"], weights_only=True)["calibration"]["thresholds"]["msp"]  # fitted in training
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and set(errors[0]) == {"path", "error"} and errors[0]["path"].endswith("broken.png")
    # the hint fits predict.py, which has no skip_bad_images key
    assert "skip_bad_images" not in errors[0]["error"] and "went on with the other images" in errors[0]["error"]
    names = _strict_json(run["dir"] / "split.json")["seen_class_names"]
    for line in lines:
        if "error" in line:
            continue
        assert set(line) == {
            "path",
            "label",
            "class_index",
            "closest_class",
            "confidence",
            "unknown_score",
            "is_unknown",
        }
        assert 1 / K - 1e-9 <= line["confidence"] <= 1.0
        assert line["closest_class"] in names
        assert line["unknown_score"] == pytest.approx(1.0 - line["confidence"])  # msp
        assert line["is_unknown"] == (line["unknown_score"] >= threshold)
        if line["is_unknown"]:
            assert (line["label"], line["class_index"]) == ("unknown", -1)
        else:
            assert line["label"] == names[line["class_index"]] == line["closest_class"]
    assert "1 of 6 images" in captured.err


def test_predict_matches_the_evaluation_outputs(run):
    """Same net, weights, transform and score as the run's evaluation, image by image."""
    args, ckpt = build_eval_config(["--load_path", str(run["ckpt"])])
    algorithm = load_eval_algorithm(args, ckpt, str(run["ckpt"]))
    outputs = algorithm.predict_loader("test_open")
    paths = [str(p) for p in algorithm.dataset_dict["test_open"].data]
    lines = []
    predictor = load_predictor(str(run["ckpt"]), "cpu", threshold=0.5)
    assert predict_paths(predictor, paths, batch_size=5, write=lambda s: lines.append(json.loads(s))) == 0
    logits = outputs["logits"].astype(np.float64)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    np.testing.assert_allclose([line["confidence"] for line in lines], prob.max(1), atol=1e-5)
    expected = [-1 if 1 - p >= 0.5 else int(i) for p, i in zip(prob.max(1), logits.argmax(1))]
    assert [line["class_index"] for line in lines] == expected
    # confidence is the closed-set probability of closest_class, for unknown answers too
    names = predictor.class_names
    assert [line["closest_class"] for line in lines] == [names[i] for i in logits.argmax(1)]


def test_predict_relevance_overlays(run, tmp_path, capsys):
    source = next((run["data"] / "CUB_200_2011" / "images").rglob("*.jpg"))
    image = tmp_path / "wide.png"  # an input larger than the 32 px the net sees, not square
    Image.open(source).convert("RGB").resize((300, 260)).save(image)
    # fixmatch's net has no relevance output: a clear error, nothing on stdout
    rc = predict_cli.main(["--load_path", str(run["ckpt"]), "--relevance_dir", str(tmp_path / "rel"), str(image)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and "produces no relevance map" in captured.err
    assert "--relevance_dir needs a net" in captured.err
    # the old hyphenated spelling still works, with a warning naming the new one
    rc = predict_cli.main(["--load_path", str(run["ckpt"]), "--relevance-dir", str(tmp_path / "rel"), str(image)])
    captured = capsys.readouterr()
    assert rc == 2 and "--relevance-dir is deprecated and will be removed: use --relevance_dir" in captured.err

    predictor = load_predictor(str(run["ckpt"]), "cpu")
    inner = predictor.net

    class WithRelevance(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = dict(self.inner(x))
            out["relevance"] = torch.rand(x.shape[0], 4)  # a 2x2 patch grid (32 px, patch 16)
            return out

    predictor.net = WithRelevance()
    lines = []
    predict_paths(
        predictor,
        [str(image), str(image)],
        relevance_dir=str(tmp_path / "rel"),
        write=lambda s: lines.append(json.loads(s)),
    )
    overlays = [Path(line["relevance"]) for line in lines]
    assert len(set(overlays)) == 2
    for line, path in zip(lines, overlays):
        with Image.open(path) as img:
            assert img.format == "PNG"
            # the image at its own size, plus room for the colour bar and the title
            assert 300 + 60 <= img.size[0] <= 300 + 120 and 260 + 20 <= img.size[1] <= 260 + 60
            title = img.info["Title"]
            pixels = np.asarray(img.convert("RGB")).astype(int)
        assert title.startswith("unknown (closest seen class: " if line["is_unknown"] else line["label"])
        assert line["closest_class"] in title
        # a colour bar: a column right of the image running through the colormap (blue at the bottom, red on top)
        bar = pixels[:, 300 + 12 + 7]
        coloured = bar[(bar.max(axis=1) - bar.min(axis=1)) > 100]
        assert len(coloured) > 100 and coloured[0][0] > coloured[0][2] and coloured[-1][2] > coloured[-1][0]


@pytest.mark.parametrize("kind", ["tensor", "no-config", "foreign-format", "not-torch"])
def test_predict_rejects_wrong_checkpoints(run, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.pth"
    good = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    if kind == "tensor":
        torch.save(torch.zeros(2), path)
        expected = "not a training checkpoint"
    elif kind == "no-config":
        torch.save({k: v for k, v in good.items() if k != "config"}, path)
        expected = "config"
    elif kind == "foreign-format":
        torch.save({**good, "format": "other/1"}, path)
        expected = "other/1"
    else:
        path.write_text("hello")
        expected = "cannot read checkpoint"
    image = next((run["data"] / "CUB_200_2011" / "images").rglob("*.jpg"))
    assert predict_cli.main(["--load_path", str(path), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and str(path) in err and expected in err


def test_train_cli_entry_point_reports_config_errors(capsys):
    assert train_cli.cli(["--algorithm", "fixmatch", "--no_such_key", "1"]) == 2
    err = capsys.readouterr().err
    assert "no_such_key" in err and "python train.py --algorithm fixmatch --help" in err and "README" not in err


@pytest.mark.parametrize("size", [(300, 260), (40, 30), (64, 200)])
def test_relevance_figure_maps_the_networks_crop_back(size):
    """The box the relevance map is drawn on is the crop the evaluation transform feeds the net."""
    from usb_cfsg.evaluation.relevance import crop_box, view_transform

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = Image.fromarray(
        np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), np.zeros_like(xx)], axis=-1).astype(np.uint8),
        "RGB",
    )
    seen = np.asarray(view_transform(64, 0.875)(img)).astype(float)
    left, top, right, bottom = crop_box(w, h, 64, 0.875)
    again = np.asarray(img.crop((round(left), round(top), round(right), round(bottom))).resize((64, 64))).astype(float)
    assert np.abs(seen - again)[..., :2].mean() < 6.0


def test_open_clip_net_trains_and_predicts_by_clip_model(tmp_path, cub_root):
    """net: open_clip + clip_model goes through the config, the run and the checkpoint to predict.py."""
    argv = tiny_run_argv(
        cub_root,
        str(tmp_path / "runs"),
        "oc",
        img_size=32,
        iters=2,
        num_eval_iter=2,
        num_log_iter=1,
        net="open_clip",
        clip_model="clip-tiny",
    )
    train_main(build_config(argv))
    ckpt = tmp_path / "runs" / "oc" / "latest_model.pth"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["config"]
    assert (stored["net"], stored["clip_model"]) == ("open_clip", "clip-tiny")
    predictor = load_predictor(str(ckpt), "cpu")
    assert predictor.net.backbone.num_blocks == 4
    image = next(Path(cub_root).rglob("*.jpg"))
    lines = []
    assert predict_paths(predictor, [str(image)], write=lambda s: lines.append(json.loads(s))) == 0
    assert lines[0]["closest_class"] in predictor.class_names
