"""The evaluator on synthetic outputs: default unknown scores, metrics per score, files, hook order, overlays."""

from __future__ import annotations

import json
import math
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
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
from usb_cfsg.evaluation.evaluator import (
    DIFFICULTY_KEYS,
    OPENSET_HOOK_PRIORITY,
    OpenSetEvalHook,
    calibration_indices,
    fit_calibration,
)
from usb_cfsg.evaluation.metrics import otsu_threshold

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

    assert net_head_spec(Default, args) == ("clip", {"zs_weight": 0.0, "zs_mode": "output"})  # the prior's keys
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


def _train_scores(seed=5, n=40, k=3):
    """Scores of "unlabeled training images": a calibration set separate from the test set."""
    logits = np.random.default_rng(seed).normal(size=(n, k)) * 2.0
    scores, _ = PluginMixin.compute_unknown_scores({"logits": logits}, Namespace())
    return logits, scores


def test_metrics_for_every_score_and_primary_headline():
    y, logits, scores, primary, k = _toy()
    scores = dict(scores, noise=np.random.default_rng(1).random(y.size))
    train_logits, train = _train_scores()
    train = dict(train, noise=np.random.default_rng(2).random(40))
    calibration = fit_calibration({"logits": train_logits}, lambda out, cal: (dict(train), "noise"), 0.5, "toy")
    out = openset_metrics_from_outputs(y, logits, scores, "noise", k, 0.5, calibration=calibration)
    assert out["primary_score"] == "noise" and set(out["scores"]) == {"msp", "energy", "noise"}
    for name, arr in scores.items():
        bounded = arr.min() >= 0 and arr.max() <= 1
        assert bounded == (name != "energy")
        t = 0.5 if bounded else otsu_threshold(train["energy"])  # energy's Otsu cut on the TRAINING scores
        ref = compute_openset_metrics(y, logits.argmax(1), arr, t, k)
        assert {key: out["scores"][name][key] for key in SCORE_KEYS} == {key: ref[key] for key in SCORE_KEYS}
        assert out["scores"][name]["threshold_source"] == calibration["threshold_sources"][name]
    assert out["scores"]["energy"]["threshold"] < 0  # energy's own cut, not the probability 0.5
    assert "Otsu on 40 unlabeled training images" in out["scores"]["energy"]["threshold_source"]
    ref = compute_openset_metrics(y, logits.argmax(1), scores["noise"], 0.5, k)
    assert all(out[key] == ref[key] for key in ("closed_acc", "auroc", "fpr95", "fpr95_id", "h_score", "threshold"))
    assert (out["num_test_seen"], out["num_test_unseen"]) == (12, 8)
    assert out["difficulty"] is None


def test_thresholds_never_depend_on_the_test_scores(caplog):
    y, logits, scores, primary, k = _toy()
    train_logits, _ = _train_scores()
    calibration = fit_calibration(
        {"logits": train_logits}, lambda out, cal: PluginMixin.compute_unknown_scores(out, Namespace()), 0.5, "toy"
    )
    a = openset_metrics_from_outputs(y, logits, scores, primary, k, 0.5, calibration=calibration)
    shifted = {name: arr * 3.0 - 7.0 if name == "energy" else arr**2 for name, arr in scores.items()}
    b = openset_metrics_from_outputs(y, logits, shifted, primary, k, 0.5, calibration=calibration)
    for name in scores:
        assert a["scores"][name]["threshold"] == b["scores"][name]["threshold"] == calibration["thresholds"][name]
    # the recall moves with the test scores, the threshold does not
    assert a["scores"]["energy"]["unknown_recall"] != b["scores"]["energy"]["unknown_recall"]
    # without a calibration a score outside [0, 1] gets no threshold at all (never Otsu on the test scores)
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        c = openset_metrics_from_outputs(y, logits, scores, primary, k, 0.5)
    assert math.isnan(c["scores"]["energy"]["threshold"]) and math.isnan(c["scores"]["energy"]["unknown_recall"])
    assert c["scores"]["energy"]["auroc"] == a["scores"]["energy"]["auroc"]  # ranking metrics need no threshold
    assert c["scores"]["msp"]["threshold"] == 0.5
    assert any(
        "'energy' is not in [0, 1] and has no threshold fitted on training data" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(EvaluationError, match="not allowed"):
        openset_metrics_from_outputs(y, logits, scores, primary, k, "otsu")


def test_fit_calibration_ranges_thresholds_and_the_second_pass():
    import torch

    from usb_cfsg.modules.scores import fit_score_range

    train_logits, train = _train_scores()
    calls = []

    def score_fn(outputs, calibration):
        calls.append(None if calibration is None else dict(calibration["ranges"]))
        raw, primary = PluginMixin.compute_unknown_scores(outputs, Namespace())
        if calibration is not None:  # a fused-like score that needs the ranges
            lo, hi = calibration["ranges"]["energy"]
            raw["scaled"] = np.clip((raw["energy"] - lo) / (hi - lo), 0, 1)
        else:
            raw["scaled"] = raw["energy"]
        return raw, primary

    cal = fit_calibration({"logits": train_logits}, score_fn, 0.3, "forty toy images")
    assert calls[0] is None and calls[1] == cal["ranges"]  # ranges from the raw pass, thresholds after
    for name in ("msp", "energy"):
        assert cal["ranges"][name] == list(fit_score_range(torch.as_tensor(train[name]), (0.01, 0.99)))
    assert cal["thresholds"]["msp"] == 0.3 and cal["thresholds"]["scaled"] == 0.3  # in [0, 1] after calibration
    assert cal["thresholds"]["energy"] == otsu_threshold(train["energy"])
    assert cal["source"] == "forty toy images" and cal["num_images"] == 40 and cal["quantiles"] == [0.01, 0.99]
    np.testing.assert_array_equal(calibration_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(calibration_indices(3, 4), [0, 1, 2])


def test_difficulty_metrics_compare_all_seen_images_with_one_group():
    y, logits, scores, primary, k = _toy(n_seen=12, n_unseen=8)
    groups = [""] * 12 + ["Easy", "Hard", "Easy", "Hard", "Medium", "Easy", "Hard", "Hard"]
    out = openset_metrics_from_outputs(y, logits, scores, primary, k, 0.5, difficulty=groups)
    assert list(out["difficulty"]) == ["Easy", "Medium", "Hard"]
    g = np.asarray(groups)
    for group in ("Easy", "Medium", "Hard"):
        mask = (y < k) | (g == group)
        ref = compute_openset_metrics(y[mask], logits.argmax(1)[mask], scores[primary][mask], 0.5, k)
        assert out["difficulty"][group] == {key: ref[key] for key in DIFFICULTY_KEYS}
        assert out["scores"]["msp"]["difficulty"][group] == out["difficulty"][group]
    assert out["difficulty"]["Hard"]["num_test_unseen"] == 4
    with pytest.raises(EvaluationError, match="difficulty has 3 entries"):
        openset_metrics_from_outputs(y, logits, scores, primary, k, 0.5, difficulty=["", "", ""])


def test_malformed_scores_are_named():
    y, logits, scores, _, k = _toy()
    with pytest.raises(EvaluationError, match="primary score 'ova'"):
        openset_metrics_from_outputs(y, logits, scores, "ova", k, 0.5)
    with pytest.raises(EvaluationError, match=r"score 'msp' has shape \(3,\)"):
        openset_metrics_from_outputs(y, logits, {"msp": np.zeros(3)}, "msp", k, 0.5)
    with pytest.raises(EvaluationError, match="logits have shape"):
        openset_metrics_from_outputs(y, logits[:, :2], scores, "msp", k, 0.5)


def test_metrics_json_is_strict_with_nan_as_null(tmp_path):
    path = write_metrics_json(
        str(tmp_path / "m.json"),
        {"auroc": float("nan"), "scores": {"a": {"fpr95": np.float64(0.25)}}, "n": np.int64(3), "checkpoint": None},
    )
    assert _strict_json(path) == {"auroc": None, "scores": {"a": {"fpr95": 0.25}}, "n": 3, "checkpoint": None}
    assert math.isnan(load_metrics_json(path)["auroc"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


# ------------------------------------------------------------------ evaluate_openset on a fake algorithm


class _TB:
    def __init__(self):
        self.calls = []

    def update(self, values, it):
        self.calls.append((dict(values), it))


def _fake_algorithm(tmp_path, rank=0, only_seen=False, num_train=90):
    y, logits, _, _, k = _toy(n_unseen=0 if only_seen else 8)
    outputs = {"logits": logits.astype(np.float32), "feat": np.ones((y.size, 5), np.float32), "y": y}
    train_logits = np.random.default_rng(9).normal(size=(num_train, k)).astype(np.float32) * 2
    seen_keys = []

    class Fake(PluginMixin):
        def __init__(self):  # no nets; the datasets are index lists
            self.args = Namespace(
                algorithm="fake",
                dataset="toy",
                ood_threshold=0.5,
                rank=rank,
                save_dir=str(tmp_path / "runs"),
                save_name="r1",
                eval_batch_size=16,
                num_workers=0,
            )
            self.num_classes = k
            self.openset_info = SimpleNamespace(dataset="toy_ds", seen_class_names=["a", "b", "c"])
            self.loader_dict = {"test_open": object()}
            self.dataset_dict = {"train_ulb_eval": list(range(num_train))}
            self.tb_log = _TB()
            self.it = 7
            self.printed = []
            self.print_fn = self.printed.append
            self.calibration_images = []

        def predict_loader(self, dest, use_ema=True):
            if dest == "_calibration":  # the calibration's loader over unlabeled training images
                picked = [int(i) for batch in self.loader_dict[dest] for i in batch]
                self.calibration_images.append(picked)
                return {"logits": train_logits[picked], "y": np.full(len(picked), -1)}
            assert dest == "test_open"
            return dict(outputs)

        def unknown_scores(self, net_outputs, calibration=None):
            seen_keys.append(sorted(net_outputs))
            return super().unknown_scores(net_outputs, calibration)

    return Fake(), outputs, seen_keys


def test_evaluate_openset_writes_the_report(tmp_path):
    alg, outputs, seen_keys = _fake_algorithm(tmp_path)
    record = evaluate_openset(alg, checkpoint="/x/latest_model.pth")
    run = tmp_path / "runs" / "r1"
    # calibration (raw + calibrated pass) on the unlabeled training images, then the test set; no labels
    assert seen_keys == [["logits"], ["logits"], ["feat", "logits"]]
    assert alg.calibration_images == [list(range(90))]
    data = _strict_json(run / "openset_metrics.json")
    assert list(data) == list(JSON_KEYS)
    cal = data["calibration"]
    assert cal["num_images"] == 90 and cal["num_available"] == 90 and "unlabeled training images" in cal["source"]
    assert set(cal["ranges"]) == set(cal["thresholds"]) == {"msp", "energy"}
    assert data["scores"]["energy"]["threshold"] == cal["thresholds"]["energy"] < 0
    assert data["threshold_source"].startswith("ood_threshold (config)") and data["difficulty"] is None
    assert data["algorithm"] == "fake" and data["dataset"] == "toy_ds" and data["num_seen"] == 3
    assert data["primary_score"] == "msp" and list(data["scores"]) == ["msp", "energy"]
    assert data["checkpoint"] == "/x/latest_model.pth" and data == record
    for name in ("roc.png", "score_hist.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
    cm, names = read_confusion_csv(run / "confusion.csv")
    assert names == ["a", "b", "c"] and cm.shape == (4, 4) and cm.sum() == outputs["y"].size
    ((values, it),) = alg.tb_log.calls
    assert it == 7 and values["test_open/auroc"] == record["auroc"]
    assert values["test_open/energy/fpr95"] == record["scores"]["energy"]["fpr95"]
    assert values["test_open/fpr95_id"] == record["fpr95_id"]
    assert any("Open-set evaluation: fake on toy_ds" in p for p in alg.printed)
    printed = "\n".join(alg.printed).split("\n")
    assert any(p.startswith("calibration: 90 of 90 unlabeled training images") for p in printed)


def test_calibration_is_capped_and_evenly_spread(tmp_path):
    from usb_cfsg.evaluation.evaluator import calibrate

    alg, _, _ = _fake_algorithm(tmp_path, num_train=1000)
    cal = calibrate(alg, max_images=50)
    assert cal["num_images"] == 50 and cal["num_available"] == 1000
    picked = alg.calibration_images[0]
    assert picked[0] == 0 and picked[-1] == 999 and len(set(picked)) == 50
    assert "_calibration" not in alg.loader_dict  # the temporary loader is gone
    assert calibrate(alg, max_images=50) == cal  # deterministic
    alg.dataset_dict = {}
    assert calibrate(alg) is None


def test_labeled_tpr_calibration_reads_the_labeled_images_and_falls_back_without_them(tmp_path, caplog):
    from usb_cfsg.evaluation.evaluator import calibrate

    alg, _, _ = _fake_algorithm(tmp_path, num_train=40)
    alg.args.threshold_rule, alg.args.threshold_tpr = "labeled_tpr", 0.9
    alg.dataset_dict["train_lb_eval"] = list(range(10))  # the first 10 training images stand for the labeled ones
    cal = calibrate(alg)
    assert alg.calibration_images == [list(range(40)), list(range(10))]  # unlabeled, then labeled
    assert cal["threshold_rule"] == "labeled_tpr" and cal["num_labeled"] == 10
    assert cal["threshold_sources"]["energy"] == "labeled_tpr: keeps 90% of 10 labeled training images as seen"
    del alg.dataset_dict["train_lb_eval"]
    with caplog.at_level("WARNING", logger="usb_cfsg"):
        cal = calibrate(alg)  # the end of a training run never fails over it
    assert cal["threshold_rule"] == "otsu" and "thresholds by threshold_rule otsu instead" in caplog.text


def test_difficulty_reaches_the_report_and_tensorboard(tmp_path):
    alg, _, _ = _fake_algorithm(tmp_path)
    alg.openset_info.test_difficulty = [""] * 12 + ["Easy"] * 3 + ["Hard"] * 5
    record = evaluate_openset(alg, out_dir=str(tmp_path / "out"))
    data = _strict_json(tmp_path / "out" / "openset_metrics.json")
    assert list(data["difficulty"]) == ["Easy", "Hard"] and data["difficulty"]["Hard"]["num_test_unseen"] == 5
    assert data["difficulty"] == record["difficulty"]
    ((values, _),) = alg.tb_log.calls
    assert values["test_open/Hard/auroc"] == record["difficulty"]["Hard"]["auroc"]
    text = "\n".join(alg.printed)
    assert "unknown: Easy" in text and "unknown: Hard" in text
    alg.openset_info.test_difficulty = [""] * 3
    with pytest.raises(EvaluationError, match="difficulties"):
        evaluate_openset(alg, out_dir=str(tmp_path / "out"))


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
    ckpt = tmp_path / "runs" / "r1" / "latest_model.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": "usb_cfsg.train/1", "model": {"w": torch.ones(2)}, "it": 7}, ckpt)
    ours.after_run(alg)
    assert alg.openset_results["checkpoint"].endswith("r1/latest_model.pth")
    # the calibration is stored in latest_model.pth, which keeps everything else
    stored = torch.load(ckpt, weights_only=True)
    assert stored["calibration"] == alg.openset_results["calibration"] == alg.calibration
    assert torch.equal(stored["model"]["w"], torch.ones(2)) and stored["it"] == 7
    assert [p.name for p in ckpt.parent.iterdir() if ".tmp" in p.name] == []
    assert alg.results_dict["test_open/closed_acc"] == alg.openset_results["closed_acc"]
    assert {k for k in alg.results_dict if k.startswith("test_open/")} == {
        "test_open/" + k
        for k in (
            "closed_acc",
            "auroc",
            "fpr95",
            "fpr95_id",
            "open_bacc",
            "unknown_recall",
            "seen_acc",
            "h_score",
            "macro_f1",
        )
    }


def test_openset_curves_at_every_evaluation_reach_the_log_and_tensorboard(tmp_path):
    from semilearn.core.hooks import LoggingHook

    alg, _, _ = _fake_algorithm(tmp_path, num_train=800)
    alg.num_eval_iter, alg.num_log_iter, alg.num_train_iter = 5, 100, 12
    alg.distributed, alg.ema_m, alg.best_eval_acc, alg.best_it = False, 0.0, 0.0, 0
    hook, logging_hook = OpenSetEvalHook(), LoggingHook()
    steps = []
    for it in range(12):
        alg.it = it
        alg.log_dict = {"train/sup_loss": 1.0}
        hook.after_train_step(alg)
        logging_hook.after_train_step(alg)  # USB's: writes log_dict to TensorBoard at evaluation iterations
        if "test_open/auroc" in alg.log_dict:
            steps.append(it)
    # every num_eval_iter but the last iteration: its point is the final evaluation's (after_run, same
    # weights, full calibration), so TensorBoard gets one point per step
    assert steps == [4, 9]
    tb = [(values, it) for values, it in alg.tb_log.calls if "test_open/auroc" in values]
    assert [it for _, it in tb] == [4, 9]
    y, logits, scores, primary, k = _toy()
    assert tb[0][0]["test_open/auroc"] == pytest.approx(
        compute_openset_metrics(y, logits.argmax(1), scores["msp"], 0.5, k)["auroc"]
    )
    assert {"test_open/auroc", "test_open/fpr95", "test_open/unknown_recall"} <= set(tb[0][0])
    lines = [p for p in alg.printed if "open-set test" in p]
    assert len(lines) == 2 and lines[0].startswith("it 5/") and "open-set test (msp): auroc " in lines[0]
    assert all(len(c) == 500 for c in alg.calibration_images)  # the cheaper in-training calibration


def test_eval_subset_during_training_and_all_test_images_at_the_end(tmp_path):
    alg, outputs, _ = _fake_algorithm(tmp_path)
    toy_predict, read = alg.predict_loader, []

    def predict(dest, use_ema=True):
        if dest == "_calibration":
            return toy_predict(dest)
        read.append(dest)
        if dest.startswith("eval"):  # seen-class images only
            seen = outputs["y"] < 3
            return {"logits": outputs["logits"][seen], "y": outputs["y"][seen]}
        return toy_predict("test_open")

    alg.predict_loader = predict
    alg.loader_dict = {
        name: SimpleNamespace(dataset=[0] * n)
        for name, n in (("eval", 12), ("eval_subset", 5), ("test_open", 20), ("test_open_subset", 8))
    }
    alg.num_eval_iter, alg.num_train_iter, alg.it, alg.log_dict = 5, 10, 4, {}
    assert alg.training_eval_loader("eval") == "eval_subset"
    assert alg.training_eval_loader("test_open") == "test_open_subset"
    assert alg.training_eval_loader("train_lb") == "train_lb"
    assert set(alg.evaluate("eval")) >= {"eval/top-1-acc", "eval/loss"} and read == ["eval_subset"]
    hook = OpenSetEvalHook()
    hook.after_train_step(alg)
    assert read[-1] == "test_open_subset"
    assert any("open-set test (eval_subset 8/20 images) (msp)" in p for p in alg.printed)
    hook.after_run(alg)  # the final evaluation: every test image
    assert read[-1] == "test_open"
    assert any(p.startswith("final evaluation on all 20 open-set test images") for p in alg.printed)
    del alg.loader_dict["eval_subset"], alg.loader_dict["test_open_subset"]  # eval_subset: none
    assert alg.training_eval_loader("eval") == "eval" and alg.training_eval_loader("test_open") == "test_open"


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


# ------------------------------------------------------------------ predict.py uses the stored calibration


def test_predict_scores_and_threshold_come_from_the_checkpoint_calibration():
    from usb_cfsg.evaluation.predict import Predictor, score_function

    class Ranged(PluginMixin):
        @classmethod
        def compute_unknown_scores(cls, outputs, args, calibration=None):
            lo, hi = ((calibration or {}).get("ranges") or {}).get("raw", (0.0, 1.0))
            return {"raw": np.clip((outputs["logits"][:, 0] - lo) / (hi - lo), 0.0, 1.0)}, "raw"

    calibration = {"ranges": {"raw": [2.0, 4.0]}, "thresholds": {"raw": 0.25}, "source": "training images"}
    logits = {"logits": np.array([[3.0, 0.0], [2.2, 0.0]])}
    scores, primary = score_function(Ranged, Namespace(), calibration)(logits)
    np.testing.assert_allclose(scores["raw"], [0.5, 0.1])  # the ranges were applied

    def predictor(threshold, given):
        return Predictor(
            net=None,
            device=None,
            transform=None,
            view=None,
            class_names=["a", "b"],
            threshold=threshold,
            scores=score_function(Ranged, Namespace(), calibration),
            algorithm="ranged",
            amp_cm=None,
            calibration=calibration,
            threshold_given=given,
        )

    records, _ = predictor(0.5, False).records(logits)  # default: the calibrated threshold 0.25, not ood_threshold
    assert [r["is_unknown"] for r in records] == [True, False]
    records, _ = predictor(0.6, True).records(logits)  # --threshold wins
    assert [r["is_unknown"] for r in records] == [False, False]
