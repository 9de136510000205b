"""Our scores, losses and metrics against the authors' public code, re-derived here on the same inputs.

Each ``_theirs_*`` function below follows, step by step, the computation of the cited file of the
authors' repository (read there, written again here in numpy / torch); nothing of theirs is imported.
The inputs are random, with ties, constant scores and K = 2, where the rules differ most.

- MCM / GL-MCM ``fpr_and_fdr_at_recall`` (``utils/detection_util.py``): deeplearning-wisc/MCM at
  ea7130f851e7d462cacd21f0e87a127705700bd9 and AtsuMiyai/GL-MCM at 8708a08442e5650889052fd86900969fade06a1b
  (the same function in both).
- GL-MCM's score (``utils/detection_util.py`` ``get_ood_scores_clip``, score ``GL-MCM``) at 8708a08.
- OpenOOD ``auc_and_fpr_recall`` (``openood/evaluators/metrics.py``): Jingkang50/OpenOOD at
  3c35632ee91b54b09d1f085d04f94744cece7d0b.
- OpenMatch ``ova_loss`` / ``ova_ent`` (``utils/misc.py``): VisionLearningGroup/OP_Match at
  ba1a59cf42ad8c2920cba428991a6cc717901d52 (IOMatch's port, nukezil/IOMatch at e7999f1, computes the same).
- The energy score (``CIFAR/test.py``, ``-T * logsumexp(output / T)``): wetliu/energy_ood at
  77f3c09b788bb5a7bfde6fd3671228320ea0949c.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from usb_cfsg.engine.plugin import msp_and_energy
from usb_cfsg.evaluation import metrics as m
from usb_cfsg.modules import glmcm_score, ova_entropy, ova_loss


# ----------------------------------------------------------------------------- their computations
def _theirs_fpr_at_recall(y_true: np.ndarray, y_score: np.ndarray, recall_level: float = 0.95) -> float:
    """MCM's fpr_and_fdr_at_recall: positives = y_true, score higher = more positive."""
    y_true = y_true == 1
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    distinct = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return float(fps[cutoff] / np.sum(np.logical_not(y_true)))


def _theirs_mcm_fpr95(unknown_score: np.ndarray, is_unknown: np.ndarray) -> float:
    """MCM's get_measures(-in_score, -out_score): in-distribution positive, scored by -unknown score."""
    pos, neg = -unknown_score[~is_unknown], -unknown_score[is_unknown]
    examples = np.concatenate([pos, neg])
    labels = np.zeros(len(examples), dtype=np.int32)
    labels[: len(pos)] += 1
    return _theirs_fpr_at_recall(labels, examples, 0.95)


def _theirs_openood(unknown_score: np.ndarray, is_unknown: np.ndarray) -> tuple[float, float]:
    """OpenOOD's auc_and_fpr_recall: conf = -unknown score, label -1 = OOD (positive)."""
    conf = -unknown_score
    ood_indicator = is_unknown.astype(np.int64)
    fpr_list, tpr_list, _ = skm.roc_curve(ood_indicator, -conf)
    fpr = fpr_list[np.argmax(tpr_list >= 0.95)]
    auroc = skm.auc(fpr_list, tpr_list)
    return float(auroc), float(fpr)


def _theirs_ova_loss(logits_open: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    logits_open = F.softmax(logits_open.view(logits_open.size(0), 2, -1), 1)
    label_s_sp = torch.zeros((logits_open.size(0), logits_open.size(2))).long()
    label_s_sp[torch.arange(logits_open.size(0)), label] = 1
    label_sp_neg = 1 - label_s_sp
    open_loss = torch.mean(torch.sum(-torch.log(logits_open[:, 1, :] + 1e-8) * label_s_sp, 1))
    open_loss_neg = torch.mean(torch.max(-torch.log(logits_open[:, 0, :] + 1e-8) * label_sp_neg, 1)[0])
    return open_loss_neg + open_loss


def _theirs_ova_ent(logits_open: torch.Tensor) -> torch.Tensor:
    logits_open = F.softmax(logits_open.view(logits_open.size(0), 2, -1), 1)
    return torch.mean(torch.mean(torch.sum(-logits_open * torch.log(logits_open + 1e-8), 1), 1))


def _theirs_glmcm(global_feat: torch.Tensor, local_feat: torch.Tensor, text: torch.Tensor, T: float) -> np.ndarray:
    """GL-MCM's score: -max softmax(global) + lambda_local (1) * -max over patches and classes of softmax(local)."""
    g = global_feat / global_feat.norm(dim=-1, keepdim=True)
    loc = local_feat / local_feat.norm(dim=-1, keepdim=True)
    t = text / text.norm(dim=-1, keepdim=True)
    smax_global = F.softmax(g @ t.T / T, dim=1).numpy()
    smax_local = F.softmax(loc @ t.T / T, dim=-1).numpy()  # [B, N, K]
    return -np.max(smax_global, axis=1) + -np.max(smax_local, axis=(1, 2))


# ----------------------------------------------------------------------------- inputs
def _case(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(unknown_score, is_unknown): continuous, heavily tied, constant, or tiny (2 + 2 samples)."""
    rng = np.random.default_rng(seed)
    n_seen, n_unknown = (2, 2) if kind == "tiny" else (int(rng.integers(20, 200)), int(rng.integers(20, 200)))
    unknown = np.r_[np.zeros(n_seen, bool), np.ones(n_unknown, bool)]
    score = rng.normal(size=unknown.size) + 0.8 * unknown
    if kind == "ties":
        score = np.round(score, 0)
    elif kind == "constant":
        score = np.full(unknown.size, 0.25)
    perm = rng.permutation(unknown.size)
    return score[perm], unknown[perm]


KINDS = ["continuous", "ties", "constant", "tiny"]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", KINDS)
def test_fpr95_id_equals_mcm_and_glmcm_code(seed: int, kind: str) -> None:
    score, unknown = _case(seed, kind)
    theirs = _theirs_mcm_fpr95(score, unknown)
    assert m.fpr_at_tpr_id(score, unknown) == pytest.approx(theirs, abs=1e-12)
    y_open = np.where(unknown, 2, 0)  # K = 2 seen classes, label 2 = unknown
    out = m.compute_openset_metrics(y_open, np.zeros(unknown.size, int), score, 0.5, 2)
    assert out["fpr95_id"] == pytest.approx(theirs, abs=1e-12)


def test_fpr95_id_rule_differs_where_the_issue_says() -> None:
    # 20 seen images: 0.95 * 20 = 19 is a whole number; the recall-19/20 point is reached at several thresholds
    score = np.r_[np.zeros(19), 5.0, np.linspace(1.0, 10.0, 20)]
    unknown = np.r_[np.zeros(20, bool), np.ones(20, bool)]
    assert m.fpr_at_tpr_id(score, unknown) == pytest.approx(_theirs_mcm_fpr95(score, unknown)) == pytest.approx(0.45)
    assert m.fpr_at_tpr_id(score, unknown, rule="full") == 0.0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", KINDS)
def test_auroc_and_fpr95_equal_openood_code(seed: int, kind: str) -> None:
    score, unknown = _case(seed, kind)
    auroc, fpr = _theirs_openood(score, unknown)
    assert m.auroc(score, unknown) == pytest.approx(auroc, abs=1e-12)
    assert m.fpr_at_tpr(score, unknown) == pytest.approx(fpr, abs=1e-12)
    out = m.compute_openset_metrics(np.where(unknown, 2, 1), np.ones(unknown.size, int), score, 0.5, 2)
    assert (out["auroc"], out["fpr95"]) == (pytest.approx(auroc, abs=1e-12), pytest.approx(fpr, abs=1e-12))
    if kind == "continuous":  # without ties the thinned curve and the full curve agree
        assert m.fpr_at_tpr(score, unknown, rule="full") == pytest.approx(fpr, abs=1e-12)


def test_fpr95_thinned_curve_differs_from_the_full_curve_on_ties() -> None:
    # seen 0..19, unknown 10..29: the scores 10..19 tie pairwise, so their ROC points lie on one straight
    # segment that scikit-learn's thinned curve keeps only at its ends
    score = np.r_[np.arange(20.0), np.arange(10.0, 30.0)]
    unknown = np.r_[np.zeros(20, bool), np.ones(20, bool)]
    assert m.fpr_at_tpr(score, unknown) == pytest.approx(_theirs_openood(score, unknown)[1]) == pytest.approx(0.5)
    assert m.fpr_at_tpr(score, unknown, rule="full") == pytest.approx(0.45)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("K", [2, 7])
def test_ova_loss_and_entropy_equal_openmatch_code(seed: int, K: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B = 16
    logits = torch.randn(B, 2, K, generator=g) * 5
    logits[0] = torch.tensor([[40.0] * K, [-40.0] * K])  # confidently wrong: p_pos ~ 1e-35 < 1e-8
    logits[1] = 0.0  # ties: every binary distribution uniform
    y = torch.randint(0, K, (B,), generator=g)
    torch.testing.assert_close(ova_loss(logits, y), _theirs_ova_loss(logits.reshape(B, -1), y), rtol=0, atol=1e-6)
    torch.testing.assert_close(ova_entropy(logits), _theirs_ova_ent(logits.reshape(B, -1)), rtol=0, atol=1e-6)
    # eps = 0: the exact log-softmax, uncapped where the authors' term saturates at -log(1e-8) = 18.42
    assert ova_loss(logits[:1], y[:1], eps=0.0) > ova_loss(logits[:1], y[:1]) + 50


def test_ova_loss_gradient_vanishes_for_saturated_terms_as_in_the_authors_code() -> None:
    logits = torch.tensor([[[40.0, 0.0], [-40.0, 0.0]]], requires_grad=True)  # class 0 confidently negative
    ova_loss(logits, torch.tensor([0])).backward()
    assert logits.grad is not None and logits.grad[0, :, 0].abs().max() < 1e-6
    exact = logits.detach().clone().requires_grad_(True)
    ova_loss(exact, torch.tensor([0]), eps=0.0).backward()
    assert exact.grad is not None and exact.grad[0, :, 0].abs().max() > 0.5


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("T", [1.0, 0.5])
@pytest.mark.parametrize("K", [2, 10])
def test_glmcm_score_orders_as_glmcm_code(seed: int, T: float, K: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, N, D = 12, 9, 16
    glob, loc, text = torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g), torch.randn(K, D, generator=g)
    ours = glmcm_score(glob, loc, text, T).double().numpy()
    theirs = _theirs_glmcm(glob, loc, text, T)
    # ours = 1 - (S_global + S_local) / 2 and theirs = -(S_global + S_local): an increasing affine map
    np.testing.assert_allclose(ours, 1.0 + theirs / 2.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 0.1, 10.0])
def test_energy_equals_energy_ood_code(T: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=g) * 30
    logits[0] = 3.0  # constant logits
    theirs = -(T * torch.logsumexp(logits.double() / T, dim=1)).numpy()  # -T logsumexp(output / T)
    np.testing.assert_allclose(msp_and_energy(logits.numpy(), T)["energy"], theirs, rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="energy_temperature"):
        msp_and_energy(logits.numpy(), 0.0)
