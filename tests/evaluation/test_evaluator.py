"""The evaluator on synthetic outputs: default unknown scores, metrics per score, files, hook order, overlays."""
from __future__ import annotations

import json
import math
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from usb_cfsg.engine.plugin import PluginMixin
from usb_cfsg.evaluation import (
    JSON_KEYS,
    SCORE_KEYS,
    EvaluationError,
    compute_openset_metrics,
    evaluate_openset,
    load_metrics_json,
    openset_metrics_from_outputs,
    read_confusion_csv,
    relevance_grid,
    save_relevance_overlay,
    write_metrics_json,
)
from usb_cfsg.evaluation.evaluator import OPENSET_HOOK_PRIORITY, OpenSetEvalHook

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(path):
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    with open(path, encoding="utf-8") as fh:
        return json.loads(fh.read(), parse_constant=reject)


# ------------------------------------------------------------------ default unknown scores


def test_default_unknown_scores_match_hand_computed_values():
    logits = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1000.0, 0.0, -1000.0], [-3.0, 5.0, 4.0]])
    scores, primary = PluginMixin.compute_unknown_scores({"logits": logits.astype(np.float32)}, Namespace())
    assert primary == "msp" and set(scores) == {"msp", "energy"}
    e2 = math.exp(2.0)
    msp = [1 - e2 / (e2 + 2), 2 / 3, 0.0, 1 - 1 / (1 + math.exp(-1) + math.exp(-8))]
    energy = [-math.log(e2 + 2), -(1 + math.log(3)), -1000.0, -(5 + math.log(1 + math.exp(-1) + math.exp(-8)))]
    np.testing.assert_allclose(scores["msp"], msp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores["energy"], energy, rtol=1e-12)
    # higher = more unknown: the flat row scores above the confident ones
    assert scores["msp"][1] > scores["msp"][0] > scores["msp"][2]
    assert scores["energy"][1] > scores["energy"][0] > scores["energy"][2]


def test_instance_unknown_scores_delegates_to_the_classmethod():
    alg = PluginMixin.__new__(PluginMixin)
    alg.args = Namespace()
    logits = np.array([[0.5, -0.5]])
    scores, primary = alg.unknown_scores({"logits": logits, "feat": np.zeros((1, 4))})
    assert primary == "msp"
    np.testing.assert_allclose(scores["msp"], [1 - 1 / (1 + math.exp(-1))])


def test_predict_finds_the_algorithm_hooks_without_an_instance():
    from usb_cfsg.engine.plugin import plugin_class
    from usb_cfsg.evaluation.predict import net_head_spec, score_function

    args = Namespace(num_classes=2, algorithm="x", ood_score="b", width=7)
    logits = {"logits": np.array([[3.0, 0.0]]), "score_b": np.array([0.25])}

    class Default(PluginMixin):
        pass

    class ClassHooks(PluginMixin):
        net_head = "cfsg"

        @classmethod
        def net_spec(cls, a):
            return cls.net_head, {"width": a.width}

        @classmethod
        def compute_unknown_scores(cls, outputs, a):
            return {a.ood_score: outputs["score_b"]}, a.ood_score

    assert net_head_spec(Default, args) == ("clip", {})
    assert net_head_spec(ClassHooks, args) == ("cfsg", {"width": 7})
    assert score_function(Default, args)(logits)[1] == "msp"
    assert score_function(ClassHooks, args)(logits) == ({"b": logits["score_b"]}, "b")
    fixmatch = plugin_class("fixmatch")
    assert issubclass(fixmatch, PluginMixin) and fixmatch.__mro__[1] is PluginMixin


# ------------------------------------------------------------------ metrics from outputs


def _toy(seed=0, n_seen=12, n_unseen=8, k=3):
    rng = np.random.default_rng(seed)
    y = np.concatenate([rng.integers(0, k, n_seen), np.full(n_unseen, k)])
    logits = rng.normal(size=(y.size, k))
    logits[np.arange(n_seen), y[:n_seen]] += 2.0
    scores, primary = PluginMixin.compute_unknown_scores({"logits": logits}, Namespace())
    return y, logits, scores, primary, k


def test_metrics_for_every_score_and_primary_headline():
    y, logits, scores, primary, k = _toy()
    scores = dict(scores, noise=np.random.default_rng(1).random(y.size))
    out = openset_metrics_from_outputs(y, logits, scores, "noise", k, 0.5)
    assert out["primary_score"] == "noise" and set(out["scores"]) == {"msp", "energy", "noise"}
    for name, arr in scores.items():
        bounded = arr.min() >= 0 and arr.max() <= 1
        assert bounded == (name != "energy")
        ref = compute_openset_metrics(y, logits.argmax(1), arr, 0.5 if bounded else "otsu", k)
        assert out["scores"][name] == {key: ref[key] for key in SCORE_KEYS}
    assert out["scores"]["energy"]["threshold"] < 0  # energy's own (Otsu) cut, not the probability 0.5
    ref = compute_openset_metrics(y, logits.argmax(1), scores["noise"], 0.5, k)
    assert all(out[key] == ref[key] for key in ("closed_acc", "auroc", "h_score", "threshold"))
    assert (out["num_test_seen"], out["num_test_unseen"]) == (12, 8)


def test_malformed_scores_are_named():
    y, logits, scores, _, k = _toy()
    with pytest.raises(EvaluationError, match="primary score 'ova'"):
        openset_metrics_from_outputs(y, logits, scores, "ova", k, 0.5)
    with pytest.raises(EvaluationError, match=r"score 'msp' has shape \(3,\)"):
        openset_metrics_from_outputs(y, logits, {"msp": np.zeros(3)}, "msp", k, 0.5)
    with pytest.raises(EvaluationError, match="logits have shape"):
        openset_metrics_from_outputs(y, logits[:, :2], scores, "msp", k, 0.5)


def test_metrics_json_is_strict_with_nan_as_null(tmp_path):
    path = write_metrics_json(str(tmp_path / "m.json"), {"auroc": float("nan"), "scores": {"a": {"fpr95": np.float64(0.25)}},
                                                         "n": np.int64(3), "checkpoint": None})
    assert _strict_json(path) == {"auroc": None, "scores": {"a": {"fpr95": 0.25}}, "n": 3, "checkpoint": None}
    assert math.isnan(load_metrics_json(path)["auroc"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


# ------------------------------------------------------------------ evaluate_openset on a fake algorithm


class _TB:
    def __init__(self):
        self.calls = []

    def update(self, values, it):
        self.calls.append((dict(values), it))


def _fake_algorithm(tmp_path, rank=0, only_seen=False):
    y, logits, _, _, k = _toy(n_unseen=0 if only_seen else 8)
    outputs = {"logits": logits.astype(np.float32), "feat": np.ones((y.size, 5), np.float32), "y": y}
    seen_keys = []

    class Fake(PluginMixin):
        def __init__(self):  # no datasets, no nets
            self.args = Namespace(algorithm="fake", dataset="toy", ood_threshold=0.5, rank=rank,
                                  save_dir=str(tmp_path / "runs"), save_name="r1")
            self.num_classes = k
            self.openset_info = SimpleNamespace(dataset="toy_ds", seen_class_names=["a", "b", "c"])
            self.loader_dict = {"test_open": object()}
            self.tb_log = _TB()
            self.it = 7
            self.printed = []
            self.print_fn = self.printed.append

        def predict_loader(self, dest, use_ema=True):
            assert dest == "test_open"
            return dict(outputs)

        def unknown_scores(self, net_outputs):
            seen_keys.append(sorted(net_outputs))
            return super().unknown_scores(net_outputs)

    return Fake(), outputs, seen_keys


def test_evaluate_openset_writes_the_report(tmp_path):
    alg, outputs, seen_keys = _fake_algorithm(tmp_path)
    record = evaluate_openset(alg, checkpoint="/x/latest_model.pth")
    run = tmp_path / "runs" / "r1"
    assert seen_keys == [["feat", "logits"]]  # the labels are not handed to the score function
    data = _strict_json(run / "openset_metrics.json")
    assert list(data) == list(JSON_KEYS)
    assert data["algorithm"] == "fake" and data["dataset"] == "toy_ds" and data["num_seen"] == 3
    assert data["primary_score"] == "msp" and list(data["scores"]) == ["msp", "energy"]
    assert data["checkpoint"] == "/x/latest_model.pth" and data == record
    for name in ("roc.png", "score_hist.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
    cm, names = read_confusion_csv(run / "confusion.csv")
    assert names == ["a", "b", "c"] and cm.shape == (4, 4) and cm.sum() == outputs["y"].size
    (values, it), = alg.tb_log.calls
    assert it == 7 and values["test_open/auroc"] == record["auroc"]
    assert values["test_open/energy/fpr95"] == record["scores"]["energy"]["fpr95"]
    assert any("Open-set evaluation: fake on toy_ds" in p for p in alg.printed)


def test_undefined_metrics_are_null_and_only_rank_zero_writes(tmp_path):
    alg, _, _ = _fake_algorithm(tmp_path, only_seen=True)
    record = evaluate_openset(alg, out_dir=str(tmp_path / "out"))
    data = _strict_json(tmp_path / "out" / "openset_metrics.json")
    assert data["auroc"] is None and data["scores"]["msp"]["h_score"] is None and math.isnan(record["auroc"])
    assert "test_open/auroc" not in alg.tb_log.calls[0][0]

    other, _, _ = _fake_algorithm(tmp_path / "r1", rank=1)
    assert evaluate_openset(other)["num_seen"] == 3
    assert not (tmp_path / "r1" / "runs").exists() and other.tb_log.calls == []


def test_missing_loader_is_an_error(tmp_path):
    alg, _, _ = _fake_algorithm(tmp_path)
    alg.loader_dict = {"eval": object()}
    with pytest.raises(EvaluationError, match="no 'test_open' loader"):
        evaluate_openset(alg)


def test_hook_runs_after_usb_evaluation_hook_and_extends_results(tmp_path):
    from semilearn.core.algorithmbase import AlgorithmBase
    from semilearn.core.hooks import EvaluationHook, Hook

    holder = SimpleNamespace(_hooks=[], hooks_dict={})
    ours = OpenSetEvalHook()
    AlgorithmBase.register_hook(holder, ours, "OpenSetEvalHook", OPENSET_HOOK_PRIORITY)
    AlgorithmBase.register_hook(holder, EvaluationHook(), None, "HIGH")
    AlgorithmBase.register_hook(holder, Hook(), "LoggingHook", "LOWEST")
    names = list(holder.hooks_dict)
    assert names.index("EvaluationHook") < names.index("OpenSetEvalHook") < names.index("LoggingHook")

    alg, _, _ = _fake_algorithm(tmp_path)
    alg.results_dict = {"eval/best_acc": 0.5}
    ours.after_run(alg)
    assert alg.openset_results["checkpoint"].endswith("r1/latest_model.pth")
    assert alg.results_dict["test_open/closed_acc"] == alg.openset_results["closed_acc"]
    assert {k for k in alg.results_dict if k.startswith("test_open/")} == {
        "test_open/" + k for k in ("closed_acc", "auroc", "fpr95", "open_bacc", "unknown_recall", "h_score",
                                   "macro_f1")}


# ------------------------------------------------------------------ relevance overlays


def test_relevance_overlay(tmp_path):
    img = Image.new("RGB", (40, 30), (0, 0, 255))
    rel = np.zeros(16)
    rel[0] = 1.0  # top-left patch
    path = save_relevance_overlay(img, rel, tmp_path / "o.png", alpha=0.6)
    out = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert out.shape == (30, 40, 3)
    assert out[0, 0, 0] > out[-1, -1, 0]  # "hot" (red) where the relevance is high
    np.testing.assert_allclose(relevance_grid(np.arange(4.0)), [[0, 1 / 3], [2 / 3, 1]])
    assert not relevance_grid(np.ones(9)).any()
    with pytest.raises(ValueError, match="not a square"):
        relevance_grid(np.ones(10))
    with pytest.raises(ValueError, match="alpha"):
        save_relevance_overlay(img, rel, tmp_path / "x.png", alpha=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]
