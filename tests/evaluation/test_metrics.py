"""Reference-value tests of usb_cfsg.evaluation.metrics: hand-worked cases and scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from usb_cfsg.errors import UsbCfsgError
from usb_cfsg.evaluation import metrics as m
from usb_cfsg.evaluation.metrics import MetricInputError

# --------------------------------------------------------------------------- hand-worked example
#
# K = 2 seen classes (0, 1); label 2 = unknown. Threshold 0.55 (score >= 0.55 -> unknown).
#
#   idx  y_open  closed_pred  score   open_pred (0.55)
#    0     0         0         0.1       0
#    1     0         0         0.6       2    seen sample rejected
#    2     0         1         0.2       1    closed-set error
#    3     1         1         0.3       1
#    4     1         0         0.4       0    closed-set error
#    5     2         0         0.9       2
#    6     2         1         0.7       2
#    7     2         1         0.5       1    unknown missed (0.5 < 0.55)
#
# closed_acc: seen idx 0..4, closed_pred correct at 0, 1, 3 -> 3/5 = 0.6
# auroc: unknown scores {.9, .7, .5} vs seen {.1, .6, .2, .3, .4}; 15 pairs;
#        .9 beats 5, .7 beats 5, .5 beats 4 (not .6) -> 14/15
# fpr95: 3 unknowns, need ceil(0.95 * 3) = 3 -> t = 3rd highest unknown score = 0.5;
#        seen scores >= 0.5: {0.6} -> 1/5 = 0.2
# fpr95_id (seen = positive, accepted when score <= t): 5 seen, need ceil(0.95 * 5) = 5 accepted
#        -> t = highest seen score = 0.6; unknown scores <= 0.6: {0.5} -> 1/3
# confusion (rows truth 0,1,2; columns pred 0,1,2):
#        truth 0 -> preds 0, 2, 1 -> [1, 1, 1]
#        truth 1 -> preds 1, 0    -> [1, 1, 0]
#        truth 2 -> preds 2, 2, 1 -> [0, 1, 2]
# open_bacc: recalls 1/3, 1/2, 2/3 -> (2/6 + 3/6 + 4/6) / 3 = 1/2
# unknown_recall: 2/3
# seen accuracy (open-set prediction): diagonal of the seen block 1 + 1 = 2 of 5 -> 2/5
# h_score: 2 * (2/5) * (2/3) / (2/5 + 2/3) = (8/15) / (16/15) = 1/2
# macro_f1: F1 = 2TP / (support + predicted):
#        class 0: 2*1 / (3 + 2) = 2/5; class 1: 2*1 / (2 + 3) = 2/5; unknown: 2*2 / (3 + 3) = 2/3
#        mean = (6/15 + 6/15 + 10/15) / 3 = 22/45
Y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
CLOSED = np.array([0, 0, 1, 1, 0, 0, 1, 1])
SCORE = np.array([0.1, 0.6, 0.2, 0.3, 0.4, 0.9, 0.7, 0.5])
K = 2
T = 0.55
OPEN = np.array([0, 2, 1, 1, 0, 2, 2, 1])
CM = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 2]])
EXPECTED = {
    "closed_acc": 3 / 5,
    "auroc": 14 / 15,
    "fpr95": 1 / 5,
    "fpr95_id": 1 / 3,
    "open_bacc": 1 / 2,
    "unknown_recall": 2 / 3,
    "seen_acc": 2 / 5,
    "h_score": 1 / 2,
    "macro_f1": 22 / 45,
    "threshold": 0.55,
    "num_test_seen": 5,
    "num_test_unseen": 3,
}


def test_hand_worked_individual_functions() -> None:
    open_pred = m.open_set_predictions(CLOSED, SCORE, T, K)
    np.testing.assert_array_equal(open_pred, OPEN)
    np.testing.assert_array_equal(m.confusion_matrix(Y, open_pred, K), CM)
    assert m.closed_set_accuracy(Y, CLOSED, K) == pytest.approx(3 / 5)
    assert m.auroc(SCORE, Y == K) == pytest.approx(14 / 15)
    assert m.fpr_at_tpr(SCORE, Y == K) == pytest.approx(1 / 5)
    assert m.fpr_at_tpr_id(SCORE, Y == K) == pytest.approx(1 / 3)
    assert m.open_balanced_accuracy(Y, open_pred, K) == pytest.approx(1 / 2)
    assert m.unknown_recall(Y, open_pred, K) == pytest.approx(2 / 3)
    assert m.open_seen_accuracy(Y, open_pred, K) == pytest.approx(2 / 5)
    assert m.h_score(Y, open_pred, K) == pytest.approx(1 / 2)
    assert m.macro_f1(Y, open_pred, K) == pytest.approx(22 / 45)


def test_hand_worked_compute_openset_metrics() -> None:
    out = m.compute_openset_metrics(Y, CLOSED, SCORE, T, K)
    assert tuple(out) == m.METRIC_KEYS
    assert out == pytest.approx(EXPECTED)
    for key in m.METRIC_KEYS:
        expected_type = int if key.startswith("num_") else float
        assert type(out[key]) is expected_type, key
    for key in ("closed_acc", "auroc", "fpr95", "fpr95_id", "open_bacc", "unknown_recall", "h_score", "macro_f1"):
        assert 0.0 <= out[key] <= 1.0


def test_lists_and_float_labels_are_accepted() -> None:
    out = m.compute_openset_metrics(Y.astype(float).tolist(), CLOSED.tolist(), SCORE.tolist(), T, np.int64(K))
    assert out == pytest.approx(EXPECTED)


# --------------------------------------------------------------------------- against scikit-learn


def _random_case(seed: int, k: int = 5, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k + 1, size=n)
    closed = np.where(rng.random(n) < 0.6, np.minimum(y, k - 1), rng.integers(0, k, size=n))
    score = rng.normal(size=n) + 1.0 * (y == k)
    if ties:
        score = np.round(score, 0)
    return y, closed, score


def _sk_fpr95(is_unknown: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, _ = skm.roc_curve(is_unknown, score, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn_on_random_inputs(seed: int, ties: bool) -> None:
    k = 5
    y, closed, score = _random_case(seed, k=k, ties=ties)
    unknown = y == k
    threshold = float(np.quantile(score, 0.6))
    open_pred = m.open_set_predictions(closed, score, threshold, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_bacc = skm.balanced_accuracy_score(y, open_pred)
        sk_f1 = skm.f1_score(y, open_pred, average="macro", zero_division=0)

    out = m.compute_openset_metrics(y, closed, score, threshold, k)
    seen = ~unknown
    assert out["closed_acc"] == pytest.approx(skm.accuracy_score(y[seen], closed[seen]), abs=1e-12)
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(unknown, score), abs=1e-12)
    assert m.fpr_at_tpr(score, unknown, rule="full") == pytest.approx(_sk_fpr95(unknown, score), abs=1e-12)
    if not ties:  # without ties OpenOOD's thinned curve (fpr95's default rule) gives the same point
        assert out["fpr95"] == pytest.approx(_sk_fpr95(unknown, score), abs=1e-12)
    assert out["open_bacc"] == pytest.approx(sk_bacc, abs=1e-12)
    assert out["unknown_recall"] == pytest.approx(skm.recall_score(unknown, open_pred == k), abs=1e-12)
    assert out["macro_f1"] == pytest.approx(sk_f1, abs=1e-12)
    np.testing.assert_array_equal(
        m.confusion_matrix(y, open_pred, k), skm.confusion_matrix(y, open_pred, labels=list(range(k + 1)))
    )
    seen_acc = skm.accuracy_score(y[seen], open_pred[seen])
    rec = out["unknown_recall"]
    assert out["h_score"] == pytest.approx(2 * seen_acc * rec / (seen_acc + rec), abs=1e-12)


def _fpr95_id_by_definition(score: np.ndarray, unknown: np.ndarray) -> float:
    """Smallest t accepting (score <= t) at least 95% of the seen samples; fraction of unknowns accepted."""
    for t in np.unique(score):
        if np.mean(score[~unknown] <= t) >= 0.95 - 1e-12:
            return float(np.mean(score[unknown] <= t))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_fpr95_id_full_rule_matches_the_in_distribution_positive_recipe(seed: int, ties: bool) -> None:
    y, closed, score = _random_case(seed, ties=ties)
    unknown = y == 5
    # in-distribution positive, in-distribution score = -unknown score, first TPR >= 0.95 (rule "full";
    # the default rule, MCM's, is checked against MCM's code in tests/evaluation/test_reference_code.py)
    fpr, tpr, _ = skm.roc_curve(~unknown, -score, drop_intermediate=False)
    expected = float(fpr[np.argmax(tpr >= 0.95)])
    full = m.fpr_at_tpr_id(score, unknown, rule="full")
    assert full == pytest.approx(expected, abs=1e-12)
    assert full == pytest.approx(_fpr95_id_by_definition(score, unknown), abs=1e-12)
    assert m.compute_openset_metrics(y, closed, score, 0.0, 5)["fpr95_id"] == m.fpr_at_tpr_id(score, unknown)


def test_fpr95_conventions_differ() -> None:
    # 20 seen scores 0..19, 20 unknown scores 10..29 (overlap 10..19).
    # fpr95 (unknown positive): 19 unknowns needed -> t = 11; seen >= 11: 11..19 -> 9/20.
    # fpr95_id (seen positive): 19 seen accepted -> t = 18; unknowns <= 18: 10..18 -> 9/20.
    score = np.concatenate([np.arange(20.0), np.arange(10.0, 30.0)])
    unknown = np.array([False] * 20 + [True] * 20)
    assert m.fpr_at_tpr(score, unknown, rule="full") == pytest.approx(9 / 20)
    # Every score 10..19 is tied between a seen and an unknown image: those ROC points lie on one straight
    # segment, which OpenOOD's thinned curve (the default rule) keeps only at its ends -> t = 10: 10/20.
    assert m.fpr_at_tpr(score, unknown) == pytest.approx(10 / 20)
    assert m.fpr_at_tpr_id(score, unknown) == pytest.approx(9 / 20)
    # Skewed: the unknowns spread wide above, the seen samples tight -> the two conventions part.
    score = np.concatenate([np.full(19, 0.0), [5.0], np.linspace(1.0, 10.0, 20)])
    # fpr95: 19 unknowns needed -> t = 1 + 9/19 (2nd lowest); seen >= t: {5.0} -> 1/20
    assert m.fpr_at_tpr(score, unknown) == pytest.approx(1 / 20)
    # fpr95_id, rule "full": 19 of 20 seen accepted -> t = 0.0; no unknown scores <= 0 -> 0
    assert m.fpr_at_tpr_id(score, unknown, rule="full") == 0.0
    # MCM's rule (the default): recall 0.95 holds for every t in [0, 5); among equally close points it
    # takes the lowest threshold, t just below 5.0, accepting the unknowns 1.0 .. 4.79 -> 9/20
    # (what MCM's fpr_and_fdr_at_recall returns on these scores)
    assert m.fpr_at_tpr_id(score, unknown) == pytest.approx(9 / 20)
    assert math.isnan(m.fpr_at_tpr_id([0.1, 0.2], [False, False]))


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_matches_sklearn(seed: int) -> None:
    y, _, score = _random_case(seed, ties=seed == 0)
    unknown = y == 5
    fpr, tpr, thr = m.roc_curve(score, unknown)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(unknown, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.auroc(score, unknown))


def test_macro_f1_skips_classes_absent_from_truth_and_prediction() -> None:
    # K = 4 but classes 2 and 3 never occur: the average runs over {0, 1, 4} only.
    y = np.array([0, 0, 1, 4])
    pred = np.array([0, 1, 1, 4])
    # F1: class 0: 2*1/(2+1) = 2/3; class 1: 2*1/(1+2) = 2/3; unknown: 2*1/(1+1) = 1
    assert m.macro_f1(y, pred, 4) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m.macro_f1(y, pred, 4) == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_open_bacc_ignores_classes_missing_from_truth() -> None:
    # Class 1 is predicted but absent from y: recall over {0, 2} only: (1/2 + 1) / 2.
    y = np.array([0, 0, 2])
    pred = np.array([0, 1, 2])
    assert m.open_balanced_accuracy(y, pred, 2) == pytest.approx(0.75)


# --------------------------------------------------------------------------- detection edge cases


def test_perfect_separation() -> None:
    unknown = np.array([False] * 5 + [True] * 5)
    score = np.arange(10, dtype=float)
    assert m.auroc(score, unknown) == 1.0
    assert m.fpr_at_tpr(score, unknown) == 0.0


def test_inverted_scores() -> None:
    unknown = np.array([False] * 5 + [True] * 5)
    score = -np.arange(10, dtype=float)
    assert m.auroc(score, unknown) == 0.0
    assert m.fpr_at_tpr(score, unknown) == 1.0


def test_all_ties() -> None:
    unknown = np.array([False, True] * 10)
    score = np.full(20, 0.3)
    assert m.auroc(score, unknown) == 0.5
    # Every seen sample ties with the threshold and counts as flagged.
    assert m.fpr_at_tpr(score, unknown) == 1.0


def test_fpr95_ties_at_threshold_count_as_flagged() -> None:
    # 4 unknowns: ceil(0.95 * 4) = 4 needed -> t = lowest unknown score = 1.0;
    # seen scores {1.0, 0.0}: the tie at 1.0 is a false positive -> 1/2.
    score = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 0.0])
    unknown = np.array([True, True, True, True, False, False])
    assert m.fpr_at_tpr(score, unknown) == 0.5


def test_fpr95_needs_ceil_of_tpr_times_n_without_float_error() -> None:
    # 20 unknowns scored 1..20: 0.95 * 20 = 19 -> t = 2 (the 19th highest), not 1.
    # Seen samples score 1.5 (below t) and 2.0 (tied with t, flagged) -> FPR 1/2.
    score = np.concatenate([np.arange(1, 21, dtype=float), [1.5, 2.0]])
    unknown = np.array([True] * 20 + [False] * 2)
    assert m.fpr_at_tpr(score, unknown) == 0.5
    assert m.fpr_at_tpr(score, unknown, tpr=1.0) == 1.0
    assert m.fpr_at_tpr(score, unknown, tpr=0.05) == 0.0  # t = 20


def test_fpr_at_tpr_rejects_bad_tpr() -> None:
    with pytest.raises(MetricInputError, match=r"tpr must be in \(0, 1\]"):
        m.fpr_at_tpr([0.1, 0.2], [False, True], tpr=0.0)


def test_threshold_is_inclusive() -> None:
    pred = m.open_set_predictions([0, 1, 1], [0.49, 0.5, 0.51], 0.5, 2)
    np.testing.assert_array_equal(pred, [0, 2, 2])
    np.testing.assert_array_equal(m.open_set_predictions([0, 1], [5.0, -5.0], np.inf, 2), [0, 1])
    np.testing.assert_array_equal(m.open_set_predictions([0, 1], [5.0, -5.0], -np.inf, 2), [2, 2])


def test_h_score_extremes() -> None:
    y = np.array([0, 1, 2, 2])
    # Reject everything: unknown recall 1, seen accuracy 0 -> H 0.
    assert m.h_score(y, [2, 2, 2, 2], 2) == 0.0
    # Accept everything correctly classified: seen accuracy 1, unknown recall 0 -> H 0.
    assert m.h_score(y, [0, 1, 0, 1], 2) == 0.0
    assert m.h_score(y, [0, 1, 2, 2], 2) == 1.0


# --------------------------------------------------------------------------- degenerate test sets


def test_all_seen_test_set_gives_nan_and_one_warning(eval_log) -> None:
    y = np.array([0, 1, 1, 0])
    out = m.compute_openset_metrics(y, [0, 1, 0, 0], [0.1, 0.9, 0.2, 0.3], 0.5, 2)
    for key in ("auroc", "fpr95", "unknown_recall", "h_score"):
        assert math.isnan(out[key]), key
    assert out["closed_acc"] == pytest.approx(0.75)
    # open_pred = [0, 2, 0, 0]: recalls class 0: 2/2, class 1: 0/2 -> 0.5
    assert out["open_bacc"] == pytest.approx(0.5)
    assert not math.isnan(out["macro_f1"])
    assert (out["num_test_seen"], out["num_test_unseen"]) == (4, 0)
    messages = eval_log.warnings()
    assert len(messages) == 1
    assert "no unknown" in messages[0] and "auroc" in messages[0]


def test_all_unknown_test_set(eval_log) -> None:
    y = np.array([2, 2, 2])
    out = m.compute_openset_metrics(y, [0, 1, 0], [0.1, 0.9, 0.8], 0.5, 2)
    for key in ("closed_acc", "auroc", "fpr95", "h_score"):
        assert math.isnan(out[key]), key
    assert out["unknown_recall"] == pytest.approx(2 / 3)
    assert len(eval_log.warnings()) == 1


@pytest.mark.parametrize("fn", [m.auroc, m.fpr_at_tpr, m.fpr_at_tpr_id])
def test_detection_metrics_without_unknowns_are_nan(fn, eval_log) -> None:
    assert math.isnan(fn([0.1, 0.2, 0.3], [False, False, False]))
    assert math.isnan(fn([0.1, 0.2, 0.3], [True, True, True]))
    assert len(eval_log.warnings()) == 2


def test_public_unknown_recall_and_closed_acc_warn_when_undefined(eval_log) -> None:
    assert math.isnan(m.unknown_recall([0, 1], [0, 1], 2))
    assert math.isnan(m.closed_set_accuracy([2, 2], [0, 1], 2))
    assert math.isnan(m.h_score([0, 1], [0, 1], 2))
    assert len(eval_log.warnings()) == 3


def test_roc_curve_with_one_group_is_nan(eval_log) -> None:
    fpr, tpr, _ = m.roc_curve([0.1, 0.2], [False, False])
    assert np.isnan(tpr).all() and not np.isnan(fpr).any()
    assert eval_log.warnings()


def test_single_class_and_single_seen_class() -> None:
    # K = 1 and only class 0 in the test set.
    out = m.compute_openset_metrics([0, 0, 0, 0], [0, 0, 0, 0], [0.1, 0.2, 0.7, 0.9], 0.5, 1)
    assert out["closed_acc"] == 1.0
    assert out["open_bacc"] == 0.5  # 2 of 4 kept as class 0
    # F1 over {0, unknown}: class 0: 2*2/(4+2) = 2/3; unknown predicted but never true: 0
    assert out["macro_f1"] == pytest.approx(1 / 3)
    assert math.isnan(out["auroc"])
    # A single sample works too.
    one = m.compute_openset_metrics([1], [0], [0.9], 0.5, 1)
    assert one["unknown_recall"] == 1.0 and one["open_bacc"] == 1.0 and one["macro_f1"] == 1.0


# --------------------------------------------------------------------------- malformed input


def test_nan_and_inf_scores_raise_with_counts_and_indices() -> None:
    score = np.array([0.1, np.nan, 0.3, np.inf, 0.5])
    with pytest.raises(
        ValueError,
        match=r"unknown_score has 2 of 5 non-finite values \(1 NaN, 1 inf\) "
        r"at indices \[1, 3\]",
    ):
        m.compute_openset_metrics([0, 1, 2, 2, 0], [0, 1, 0, 0, 0], score, 0.5, 2)
    with pytest.raises(MetricInputError, match="non-finite"):
        m.auroc(score, [0, 1, 0, 1, 0])


def test_error_is_a_package_error() -> None:
    assert issubclass(MetricInputError, ValueError)
    assert issubclass(MetricInputError, UsbCfsgError)


def test_length_mismatch_names_the_lengths() -> None:
    with pytest.raises(ValueError, match="length mismatch: y_open has 5, closed_pred has 4, unknown_score has 5"):
        m.compute_openset_metrics([0] * 5, [0] * 4, [0.1] * 5, 0.5, 2)
    with pytest.raises(ValueError, match="unknown_score has 3, is_unknown has 2"):
        m.auroc([0.1, 0.2, 0.3], [True, False])


def test_labels_out_of_range_name_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"y_open has 1 of 4 labels outside 0\.\.2 .*first bad value 3 at index 2"):
        m.compute_openset_metrics([0, 1, 3, 2], [0, 1, 1, 0], [0.1] * 4, 0.5, 2)
    with pytest.raises(ValueError, match=r"closed_pred has 2 of 3 labels outside 0\.\.1 .*indices \[0, 2\]"):
        m.closed_set_accuracy([0, 1, 2], [2, 1, -1], 2)
    with pytest.raises(ValueError, match="not integers"):
        m.confusion_matrix([0.5, 1.0], [0, 1], 2)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_num_seen(bad) -> None:
    with pytest.raises(MetricInputError, match="num_seen"):
        m.closed_set_accuracy([0], [0], bad)


def test_bad_shapes_and_thresholds() -> None:
    with pytest.raises(MetricInputError, match=r"must be a 1-D array, got shape \(2, 2\)"):
        m.auroc(np.zeros((2, 2)), [True, False])
    with pytest.raises(MetricInputError, match="is empty"):
        m.auroc([], [])
    with pytest.raises(MetricInputError, match="is_unknown must be boolean"):
        m.auroc([0.1, 0.2], [0, 2])
    with pytest.raises(MetricInputError, match="threshold is NaN"):
        m.open_set_predictions([0], [0.1], float("nan"), 1)
    with pytest.raises(MetricInputError, match="'otsu'"):
        m.compute_openset_metrics([0], [0], [0.1], "median", 1)


# --------------------------------------------------------------------------- Otsu


def _otsu_brute_force(x: np.ndarray) -> float:
    values = np.unique(x)
    best, best_t = -1.0, None
    for lo, hi in zip(values[:-1], values[1:]):
        t = (lo + hi) / 2
        a, b = x[x < t], x[x >= t]
        var = len(a) * len(b) / len(x) ** 2 * (a.mean() - b.mean()) ** 2
        if var > best + 1e-12:
            best, best_t = var, t
    return best_t


def test_otsu_two_clusters() -> None:
    assert m.otsu_threshold([0.0, 0.1, 0.2, 0.8, 0.9, 1.0]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_otsu_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, 60), rng.normal(4, 1.5, 40)]).round(2)
    t = m.otsu_threshold(x)
    assert t == pytest.approx(_otsu_brute_force(x))
    assert 0.5 < t < 3.5


def test_otsu_constant_scores_flag_nothing(eval_log) -> None:
    t = m.otsu_threshold([0.3, 0.3, 0.3])
    assert t > 0.3
    np.testing.assert_array_equal(m.open_set_predictions([0, 1, 0], [0.3] * 3, t, 2), [0, 1, 0])
    assert eval_log.warnings()


def test_compute_with_otsu_threshold() -> None:
    out = m.compute_openset_metrics(Y, CLOSED, SCORE, "otsu", K)
    assert out["threshold"] == pytest.approx(m.otsu_threshold(SCORE))
    manual = m.compute_openset_metrics(Y, CLOSED, SCORE, out["threshold"], K)
    assert out == pytest.approx(manual)
