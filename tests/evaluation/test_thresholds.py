"""threshold_rule: labeled_tpr keeps the stated share of the labeled images, otsu as before; the K+1 warning."""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest

from usb_cfsg.engine.plugin import PluginMixin
from usb_cfsg.evaluation.evaluator import fit_calibration, openset_metrics_from_outputs
from usb_cfsg.evaluation.metrics import MetricInputError, otsu_threshold
from usb_cfsg.evaluation.report import format_summary
from usb_cfsg.evaluation.thresholds import fit_thresholds, labeled_tpr_threshold, seen_accuracy_warning


@pytest.mark.parametrize("n", [1, 7, 20, 60, 101])
@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 1.0])
def test_labeled_tpr_keeps_the_stated_share_and_no_more_than_needed(n, tpr):
    scores = np.random.default_rng(n).normal(size=n)
    t = labeled_tpr_threshold(scores, tpr)
    kept = scores < t  # score >= t is unknown
    assert kept.mean() >= tpr - 1e-12
    # the lowest such threshold: one kept image fewer would fall below the share
    assert (scores < np.max(scores[kept])).mean() < tpr or kept.sum() == 1


def test_labeled_tpr_with_ties_and_bad_input():
    assert labeled_tpr_threshold([1.0, 1.0, 1.0, 1.0], 0.5) > 1.0  # ties: all kept, none half-rejected
    for bad, tpr in (([], 0.9), ([0.0, np.nan], 0.9), ([0.0], 0.0), ([0.0], 1.5)):
        with pytest.raises(MetricInputError):
            labeled_tpr_threshold(bad, tpr)


def test_fit_thresholds_rules():
    rng = np.random.default_rng(0)
    unlabeled = {"energy": rng.normal(-5, 2, 200), "msp": rng.uniform(0, 1, 200)}
    labeled = {"energy": rng.normal(-7, 1, 30), "msp": rng.uniform(0, 0.5, 30)}
    t, src = fit_thresholds(unlabeled, 0.5, "200 unlabeled", "otsu")
    assert t["energy"] == otsu_threshold(unlabeled["energy"]) and t["msp"] == 0.5
    assert src["energy"].startswith("Otsu on 200 unlabeled")
    t, src = fit_thresholds(unlabeled, 0.5, "200 unlabeled", "labeled_tpr", labeled, 0.9, "30 labeled")
    for name in ("energy", "msp"):  # every score, [0, 1] ones included: ood_threshold is not used
        assert t[name] == labeled_tpr_threshold(labeled[name], 0.9)
        assert (labeled[name] < t[name]).mean() >= 0.9
        assert src[name] == "labeled_tpr: keeps 90% of 30 labeled as seen"
    with pytest.raises(MetricInputError, match="no scores of labeled images"):
        fit_thresholds(unlabeled, 0.5, "x", "labeled_tpr", {"energy": labeled["energy"]})
    with pytest.raises(MetricInputError, match="threshold_rule 'median'"):
        fit_thresholds(unlabeled, 0.5, "x", "median")


def _scores(outputs, calibration):
    return PluginMixin.compute_unknown_scores(outputs, Namespace())


def test_fit_calibration_labeled_tpr_records_the_rule_and_uses_the_labeled_images():
    rng = np.random.default_rng(1)
    unlabeled = {"logits": rng.normal(size=(80, 4)) * 3}
    labeled = {"logits": rng.normal(size=(16, 4)) * 3 + 5 * np.eye(4)[rng.integers(0, 4, 16)]}
    cal = fit_calibration(
        unlabeled, _scores, 0.5, "80 toy", rule="labeled_tpr", labeled_outputs=labeled, tpr=0.75, labeled_source="16 lb"
    )
    assert cal["threshold_rule"] == "labeled_tpr" and cal["threshold_tpr"] == 0.75 and cal["num_labeled"] == 16
    lb_scores, _ = _scores(labeled, cal)
    for name, t in cal["thresholds"].items():
        assert (lb_scores[name] < t).mean() >= 0.75
    otsu = fit_calibration(unlabeled, _scores, 0.5, "80 toy")
    assert otsu["threshold_rule"] == "otsu" and otsu["threshold_tpr"] is None and otsu["num_labeled"] == 0
    assert otsu["ranges"] == cal["ranges"]  # ranges come from the unlabeled images under either rule
    with pytest.raises(Exception, match="labeled_tpr needs the labeled training images"):
        fit_calibration(unlabeled, _scores, 0.5, "80 toy", rule="labeled_tpr")


def test_warning_when_the_threshold_rejects_many_seen_images():
    k, n = 3, 60
    rng = np.random.default_rng(2)
    y = np.r_[rng.integers(0, k, n), np.full(n, k)]
    logits = np.eye(k)[np.where(y < k, y, 0)] * 4.0  # closed-set right on every seen image
    score = np.r_[rng.uniform(0.4, 0.8, n), rng.uniform(0.6, 1.0, n)]
    cal = {"thresholds": {"u": 0.5}, "threshold_sources": {"u": "Otsu on toy"}, "threshold_rule": "otsu"}
    m = openset_metrics_from_outputs(y, logits, {"u": score}, "u", k, 0.5, calibration=cal)
    rejected = (score[:n] >= 0.5).mean()
    assert m["closed_acc"] == 1.0 and m["seen_acc"] == pytest.approx(1 - rejected) and m["seen_acc"] < 0.9
    assert m["warning"].startswith(f"K+1 seen accuracy {100 * m['seen_acc']:.1f}% is below 0.9 x the closed-set")
    assert f"calls {100 * rejected:.1f}% of the seen-class test images unknown" in m["warning"]
    assert "threshold_rule labeled_tpr" in m["warning"]  # what to do about it
    assert "WARNING: K+1 seen accuracy" in format_summary(m)
    cal = dict(cal, thresholds={"u": 0.85})  # keeps the seen images: no warning
    assert openset_metrics_from_outputs(y, logits, {"u": score}, "u", k, 0.5, calibration=cal)["warning"] is None
    assert "raise threshold_tpr" in seen_accuracy_warning(0.5, 0.9, 0.4, "energy", "labeled_tpr: ...", "labeled_tpr")
    assert seen_accuracy_warning(float("nan"), 0.9, 0.0, "energy", "x", None) is None
