"""One-vs-all (OVA) open-set head and its losses, following OpenMatch (Saito et al., NeurIPS 2021).

Convention (OpenMatch's): the head outputs logits of shape [B, 2, K]; a softmax over **dim 1**
gives, for every class k, a binary distribution where index 1 is "positive / inlier of class k"
and index 0 is "negative / not class k". The unknown score of a sample is ``p_neg(y_hat)``, the
negative probability of the closed-set predicted class (higher = more unknown, in [0, 1]).

The loss functions are pure (no module state) and reproduce OpenMatch's reference code
(VisionLearningGroup/OP_Match ``utils/misc.py`` ``ova_loss`` / ``ova_ent``, commit ba1a59c; the same
in IOMatch's port, nukezil/IOMatch commit e7999f1): log-probabilities are ``log(softmax + eps)``
with ``eps`` = :data:`OVA_LOG_EPS` = 1e-8 by default. ``eps = 0`` switches to the exact
``log_softmax`` (config key ``ova_log_eps: 0``): the authors' form caps every term at
-log(1e-8) = 18.4 with a vanishing gradient once a probability falls far below 1e-8, which at
the cosine heads' scale (30) happens to confidently wrong OVA outputs; the exact form keeps
penalising them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

NEG, POS = 0, 1
#: eps of the authors' ``log(softmax + eps)`` (OpenMatch, IOMatch); 0 = exact ``log_softmax``
OVA_LOG_EPS = 1e-8


class OVAHead(nn.Module):
    """K binary classifiers on a feature: ``Linear(D, 2K)`` reshaped to [B, 2, K].

    Args:
        dim: Feature dimension D.
        num_classes: K.
        bias: Whether the linear layer has a bias. Default False, as OpenMatch's ``fc_open``
            (``nn.Linear(dim, 2K, bias=False)``): the binary logits of every class are then linear
            in the feature, with no learned prior towards "inlier" or "outlier".

    Shapes:
        - input ``z``: [B, D]
        - output: logits [B, 2, K] (softmax over dim 1; index 1 positive, index 0 negative).
    """

    def __init__(self, dim: int, num_classes: int, bias: bool = False) -> None:
        super().__init__()
        if dim < 1 or num_classes < 1:
            raise ValueError(f"dim and num_classes must be positive, got {dim} and {num_classes}")
        self.dim = int(dim)
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(dim, 2 * num_classes, bias=bias)

    def forward(self, z: Tensor) -> Tensor:
        """Return OVA logits [B, 2, K] for features ``z`` [B, D]."""
        return self.fc(z).view(z.shape[0], 2, self.num_classes)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, bias={self.fc.bias is not None}"


def _check(logits_open: Tensor) -> None:
    if logits_open.dim() != 3 or logits_open.shape[1] != 2:
        raise ValueError(f"OVA logits must be [B, 2, K], got {tuple(logits_open.shape)}")


def _check_eps(eps: float) -> float:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (0 = exact log_softmax), got {eps}")
    return float(eps)


def ova_log_probs(logits_open: Tensor, eps: float = OVA_LOG_EPS) -> Tensor:
    """``log(softmax + eps)`` over dim 1 [B, 2, K] (the authors' form); ``eps = 0``: ``log_softmax``."""
    _check(logits_open)
    if _check_eps(eps) == 0:
        return logits_open.log_softmax(dim=1)
    return (logits_open.softmax(dim=1) + eps).log()


def ova_probs(logits_open: Tensor) -> Tensor:
    """Binary probabilities [B, 2, K] (softmax over dim 1)."""
    _check(logits_open)
    return logits_open.softmax(dim=1)


def ova_loss(logits_open: Tensor, y: Tensor, eps: float = OVA_LOG_EPS) -> Tensor:
    """OpenMatch's OVA loss on labeled samples.

    ``L = mean_b[-log p_pos(b, y_b)] + mean_b[max_{k != y_b} -log p_neg(b, k)]``: the positive
    term for the true class plus the *hardest* negative term over the other classes. With K = 1
    there is no negative class and the second term is 0. ``log p`` is ``log(p + eps)``, as the
    authors compute it (:func:`ova_log_probs`).

    Args:
        logits_open: [B, 2, K].
        y: Labels [B] in [0, K).
        eps: 1e-8 (the authors'), or 0 for the exact ``log_softmax``.

    Returns:
        Scalar loss.
    """
    _check(logits_open)
    B, _, K = logits_open.shape
    if y.shape != (B,):
        raise ValueError(f"y must be [{B}], got {tuple(y.shape)}")
    nll = -ova_log_probs(logits_open, eps)  # [B, 2, K], >= -eps
    pos = F.one_hot(y.long(), K).to(nll.dtype)  # [B, K]
    loss_pos = (nll[:, POS] * pos).sum(dim=1).mean()
    # Zeroing the true class leaves max(0, max over the other classes), exactly as the authors' code
    # (0 if K == 1).
    loss_neg = (nll[:, NEG] * (1.0 - pos)).max(dim=1).values.mean()
    return loss_pos + loss_neg


def ova_entropy(logits_open: Tensor, eps: float = OVA_LOG_EPS) -> Tensor:
    """OpenMatch's open-set entropy minimisation term (OEM).

    ``mean_b mean_k H(p(b, :, k))`` with ``H(p) = -sum_{c in {neg, pos}} p_c log(p_c + eps)``
    (nats), the binary entropy of every class's OVA distribution; in [0, log 2] (up to eps).

    Args:
        logits_open: [B, 2, K].
        eps: 1e-8 (the authors'), or 0 for the exact ``log_softmax``.

    Returns:
        Scalar.
    """
    logp = ova_log_probs(logits_open, eps)
    return (-(logits_open.softmax(dim=1) * logp).sum(dim=1)).mean()


def ova_consistency(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """OpenMatch's soft open-set consistency regularisation (SOCR) between two views.

    ``mean_b sum_{c in {neg, pos}} sum_k (p_a(b, c, k) - p_b(b, c, k))^2``, exactly OpenMatch's
    ``mean(sum(sum(|p_a - p_b|^2, 1), 1))``. Since ``p_neg = 1 - p_pos`` this equals
    ``2 * mean_b sum_k (p_pos_a - p_pos_b)^2``; in [0, 2K]. Symmetric; gradients flow into both.

    Args:
        logits_a: [B, 2, K], e.g. the first augmented view.
        logits_b: [B, 2, K], the second view.

    Returns:
        Scalar.
    """
    _check(logits_a)
    if logits_b.shape != logits_a.shape:
        raise ValueError(f"shape mismatch: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    diff = logits_a.softmax(dim=1) - logits_b.softmax(dim=1)
    return (diff**2).sum(dim=(1, 2)).mean()


def ova_unknown_score(logits_open: Tensor, closed_pred: Tensor) -> Tensor:
    """Unknown score ``u = p_neg(y_hat)`` of the predicted class (higher = more unknown).

    Args:
        logits_open: [B, 2, K].
        closed_pred: Closed-set predicted class [B] (long, in [0, K)).

    Returns:
        [B], in [0, 1].
    """
    _check(logits_open)
    if closed_pred.shape != logits_open.shape[:1]:
        raise ValueError(f"closed_pred must be [{logits_open.shape[0]}], got {tuple(closed_pred.shape)}")
    p_neg = logits_open.softmax(dim=1)[:, NEG]  # [B, K]
    return p_neg.gather(1, closed_pred.long().view(-1, 1)).squeeze(1)
