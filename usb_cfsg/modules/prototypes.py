"""Class prototypes: per-class exponential moving averages of features (the VSI visual cues).

CFSG-CLIP keeps one prototype ``mu_k`` per seen class, an EMA of the local feature ``f`` over the
labeled samples and the confident in-distribution unlabeled samples of class k.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_PROTOTYPE_MOMENTUM = 0.99

#: Sums a tensor over processes and returns the result (e.g. a wrapper around
#: ``torch.distributed.all_reduce``, which works in place: ``lambda x: (dist.all_reduce(x), x)[1]``).
ReduceFn = Callable[[Tensor], Tensor]


class ClassPrototypes(nn.Module):
    """EMA class prototypes ``mu`` [K, D], updated without autograd.

    Update rule for every class k present in the (selected part of the) batch, with ``m`` the
    momentum and ``mean_k`` the mean of the batch features of class k::

        mu_k <- mean_k                          if class k was never updated (copy)
        mu_k <- m * mu_k + (1 - m) * mean_k     otherwise

    With ``normalize=True`` (default) every feature is L2-normalised before averaging and
    ``mu_k`` is re-normalised after each update, so prototypes are stored as unit vectors (they
    live on CLIP's hypersphere, like the text embeddings they are concatenated with). With
    ``normalize=False`` the raw features are averaged and stored as is.

    Classes absent from a batch are left unchanged. Classes never updated hold zeros and
    ``initialized[k] == False``; :meth:`get` can substitute a fallback for them.

    The per-class sums are computed with a one-hot matrix product (deterministic on CPU and GPU,
    unlike ``index_add_``). Under DDP, either pass tensors already gathered from all processes, or
    pass ``reduce_fn`` that sums a tensor over processes: the sums and counts are reduced before
    the update, so every process applies the identical update.

    Args:
        num_classes: K.
        dim: D.
        momentum: Default EMA momentum m (0.99), overridable per :meth:`update` call.
        normalize: Store unit-norm prototypes (see above). Default True.

    Buffers (saved in the state dict):
        mu: [K, D] float prototypes.
        initialized: [K] bool, whether each class has been updated at least once.
    """

    mu: Tensor
    initialized: Tensor

    def __init__(
        self, num_classes: int, dim: int, momentum: float = DEFAULT_PROTOTYPE_MOMENTUM, normalize: bool = True
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be positive, got {num_classes} and {dim}")
        _check_momentum(momentum)
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.normalize = bool(normalize)
        self.register_buffer("mu", torch.zeros(num_classes, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def class_sums(self, feats: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-class feature sums and counts of the selected samples.

        Args:
            feats: [B, D].
            labels: [B] long; only selected entries must lie in [0, K) (others, e.g. -1 for
                rejected pseudo-labels, are ignored).
            mask: [B] bool selection (None: all samples).

        Returns:
            ``(sums [K, D], counts [K])`` in the buffer's dtype (features normalised first
            when ``normalize=True``).
        """
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"feats must be [B, {self.dim}], got {tuple(feats.shape)}")
        if labels.shape != feats.shape[:1]:
            raise ValueError(f"labels must be [{feats.shape[0]}], got {tuple(labels.shape)}")
        x = feats.detach().to(self.mu.dtype)
        if self.normalize:
            x = F.normalize(x, dim=-1)
        labels = labels.detach().long()
        sel = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask.detach().bool()
        if sel.shape != labels.shape:
            raise ValueError(f"mask must be [{labels.shape[0]}], got {tuple(sel.shape)}")
        chosen = labels[sel]
        if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= self.num_classes):
            raise ValueError(
                f"selected labels must be in [0, {self.num_classes}), got "
                f"min {int(chosen.min())}, max {int(chosen.max())}"
            )
        onehot = F.one_hot(labels.clamp(0, self.num_classes - 1), self.num_classes).to(x.dtype)
        onehot = onehot * sel.unsqueeze(1).to(x.dtype)  # [B, K]
        return onehot.t() @ x, onehot.sum(dim=0)

    @torch.no_grad()
    def update(
        self,
        feats: Tensor,
        labels: Tensor,
        mask: Tensor | None = None,
        momentum: float | None = None,
        reduce_fn: ReduceFn | None = None,
    ) -> Tensor:
        """EMA-update the prototypes of the classes present among the selected samples.

        Args:
            feats: Features [B, D] (detached internally; no graph is kept).
            labels: Class of each sample [B] (ground truth or pseudo-label).
            mask: [B] bool, which samples to use (None: all).
            momentum: EMA momentum m for this call (None: ``self.momentum``).
            reduce_fn: Optional cross-process sum (see :data:`ReduceFn`), applied to the per-class
                sums and counts before updating.

        Returns:
            [K] bool, the classes updated by this call.
        """
        sums, counts = self.class_sums(feats, labels, mask)
        if reduce_fn is not None:
            sums, counts = reduce_fn(sums), reduce_fn(counts)
        return self.update_from_sums(sums, counts, momentum)

    @torch.no_grad()
    def update_from_sums(self, sums: Tensor, counts: Tensor, momentum: float | None = None) -> Tensor:
        """Apply the EMA update from per-class ``sums`` [K, D] and ``counts`` [K].

        Returns:
            [K] bool, the classes updated (count > 0).
        """
        m = self.momentum if momentum is None else float(momentum)
        _check_momentum(m)
        present = counts > 0
        if not bool(present.any()):
            return present
        mean = sums[present] / counts[present].unsqueeze(1)
        fresh = ~self.initialized[present]
        new = torch.where(fresh.unsqueeze(1), mean, m * self.mu[present] + (1.0 - m) * mean)
        if self.normalize:
            new = F.normalize(new, dim=-1)
        self.mu[present] = new.to(self.mu.dtype)
        self.initialized |= present
        return present

    def get(self, fallback: Tensor | None = None) -> Tensor:
        """The prototypes [K, D], with ``fallback`` rows for never-updated classes.

        Args:
            fallback: Optional [K, D] (e.g. the text embeddings, normalised when
                ``normalize=True``) used for classes with ``initialized == False``; without it
                those rows are zeros.

        Returns:
            [K, D] tensor (a new tensor when a fallback is used, else the buffer itself).
        """
        if fallback is None:
            return self.mu
        if fallback.shape != self.mu.shape:
            raise ValueError(f"fallback must be {tuple(self.mu.shape)}, got {tuple(fallback.shape)}")
        fb = fallback.detach().to(self.mu)
        if self.normalize:
            fb = F.normalize(fb, dim=-1)
        return torch.where(self.initialized.unsqueeze(1), self.mu, fb)

    def forward(self, fallback: Tensor | None = None) -> Tensor:
        """Same as :meth:`get`."""
        return self.get(fallback)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every prototype."""
        self.mu.zero_()
        self.initialized.zero_()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}, normalize={self.normalize}"


def _check_momentum(m: float) -> None:
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
