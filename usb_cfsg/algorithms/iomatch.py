"""IOMatch (Li, Qi, Shi, Gao, ICCV 2023) as a USB algorithm (``algorithm: iomatch``).

Written from the paper and checked against the authors' code (nukezil/IOMatch,
``semilearn/algorithms/iomatch/``); no code copied.

Network (head ``iomatch``): the CLIP image feature ``z`` feeds the closed-set cosine classifier
(text-initialised); a projection head ``h = MLP(z)`` (D -> D -> ``proj_dim``, ReLU) feeds the
multi-binary classifier (K one-vs-all pairs, no bias) and the (K+1)-way open-set classifier
(index K = "outlier"). Both new classifiers are Xavier-normal initialised, the open-set bias zero.

Losses per step (B labeled, uB unlabeled images; weak view w and strong view s):

* labeled: ``CE(closed, y) + lambda_mb * L_mb`` (OVA loss: positive + hardest negative);
* closed-set pseudo-labels ``p = softmax(closed(w))`` (distribution-aligned to a uniform prior with
  a queue of ``da_len`` batch means when ``dist_align``), multi-binary ``o = softmax`` over each
  pair (w);
* open-set targets ``q_k = p_k * o_pos_k`` (k < K) and ``q_K = sum_k p_k * o_neg_k``;
* ``L_ui``: soft CE of closed(s) against ``p``, for images with ``max p >= p_cutoff`` *and*
  ``q_K < 0.5`` (the paper's double filtering), averaged over the unlabeled batch, weight
  ``ulb_loss_ratio``;
* ``L_op``: soft CE of open(s) against ``q``, for images with ``max q >= q_cutoff``, averaged over
  the batch, weight ``lambda_op``; off for the first ``op_start`` iterations (the authors' code
  zeroes it during the first of 256 epochs; ``op_start: -1`` = ``num_train_iter / 256``).

Unknown score (headline ``open``): the open-set classifier's outlier probability ``q_K`` — the
paper's open-set prediction is the argmax of that classifier. Also reported: ``mb`` (``sum_k p_k
o_neg_k``, the unknown entry of the targets built from the closed-set and multi-binary heads),
``ova`` (``p_neg`` of the predicted class) and ``msp``.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from semilearn.core.algorithmbase import AlgorithmBase

from ..engine.plugin import PluginMixin, zero_shot_kwargs
from ..errors import ConfigError
from ..modules import OVAHead, ova_loss, ova_probs, ova_unknown_score
from ..nets.clip import NET_HEADS, ClipNet
from . import declared_problems, register_algorithm, ssl_arguments

logger = logging.getLogger("usb_cfsg")

#: IOMatch's CIFAR configs train 256 epochs and switch the open-set loss on after the first.
PAPER_EPOCHS = 256
NEG, POS = 0, 1


@NET_HEADS.register("iomatch")
class IOMatchNet(ClipNet):
    """CLIP encoder + closed-set cosine classifier + projection, multi-binary and (K+1)-way heads.

    ``forward`` returns ``logits`` [B, K], ``feat`` [B, D], ``feat_proj`` [B, P], ``logits_mb``
    [B, 2, K] (softmax over dim 1; index 1 = "is class k") and ``logits_open`` [B, K+1].
    """

    def __init__(
        self, backbone, text, num_classes: int, logit_scale: float = 30.0, proj_dim: int = 128, **kwargs: Any
    ) -> None:
        super().__init__(backbone, text, num_classes, logit_scale=logit_scale, **kwargs)
        if proj_dim < 1:
            raise ConfigError(f"proj_dim must be >= 1, got {proj_dim}")
        dim = backbone.joint_dim
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj_dim))
        self.mb = OVAHead(proj_dim, num_classes, bias=False)
        self.open_head = nn.Linear(proj_dim, num_classes + 1)
        nn.init.xavier_normal_(self.mb.fc.weight)
        nn.init.xavier_normal_(self.open_head.weight)
        nn.init.zeros_(self.open_head.bias)

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: Any):
        if only_fc:
            return self.classifier(x)
        feat, tokens = self.encode(x)
        if only_feat:
            return feat
        h = self.proj(feat)
        return {
            **self.closed_logits(feat, tokens),
            "feat": feat,
            "feat_proj": h,
            "logits_mb": self.mb(h),
            "logits_open": self.open_head(h),
        }


def open_set_targets(probs: torch.Tensor, logits_mb: torch.Tensor) -> torch.Tensor:
    """IOMatch's (K+1)-way targets from closed-set probabilities and multi-binary logits.

    Args:
        probs: Closed-set probabilities p [B, K] (rows sum to 1).
        logits_mb: Multi-binary logits [B, 2, K].

    Returns:
        q [B, K+1]: ``q_k = p_k * o_pos_k`` for k < K and ``q_K = sum_k p_k * o_neg_k`` (rows sum to 1).
    """
    o = ova_probs(logits_mb)
    return torch.cat([probs * o[:, POS], (probs * o[:, NEG]).sum(dim=1, keepdim=True)], dim=1)


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``-sum_c t_c log softmax(logits)_c`` [B] against soft targets."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def iomatch_unlabeled_losses(
    logits_w: torch.Tensor,
    logits_s: torch.Tensor,
    logits_mb_w: torch.Tensor,
    logits_open_s: torch.Tensor,
    p_cutoff: float,
    q_cutoff: float,
    targets_p: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """IOMatch's two unlabeled terms and their masks.

    Args:
        logits_w: Closed-set logits of the weak view [uB, K].
        logits_s: Closed-set logits of the strong view [uB, K].
        logits_mb_w: Multi-binary logits of the weak view [uB, 2, K].
        logits_open_s: Open-set logits of the strong view [uB, K+1].
        p_cutoff: Confidence threshold of the closed-set pseudo-labels (0.95).
        q_cutoff: Confidence threshold of the open-set targets (0.5).
        targets_p: Closed-set targets (e.g. distribution-aligned); default ``softmax(logits_w)``.

    Returns:
        ``ui`` and ``op`` (scalars, batch means of the masked soft CEs), ``q`` (targets), ``in_mask``
        (``q_K < 0.5``), ``p_mask``, ``q_mask`` (bool [uB]).
    """
    with torch.no_grad():
        p = torch.softmax(logits_w.detach().float(), dim=1) if targets_p is None else targets_p.detach().float()
        q = open_set_targets(p, logits_mb_w.detach().float())
        in_mask = q[:, -1] < 0.5
        p_mask = p.max(dim=1).values >= p_cutoff
        q_mask = q.max(dim=1).values >= q_cutoff
    ui = (soft_ce(logits_s.float(), p) * (in_mask & p_mask).float()).mean()
    op = (soft_ce(logits_open_s.float(), q) * q_mask.float()).mean()
    return {"ui": ui, "op": op, "q": q, "in_mask": in_mask, "p_mask": p_mask, "q_mask": q_mask}


@register_algorithm("iomatch")
class IOMatch(PluginMixin, AlgorithmBase):
    """IOMatch: joint use of inliers and outliers through (K+1)-way open-set pseudo-labels."""

    net_head = "iomatch"

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        self.p_cutoff, self.q_cutoff = args.p_cutoff, args.q_cutoff
        self.lambda_mb, self.lambda_op = args.mb_loss_ratio, args.op_loss_ratio
        self.dist_align = bool(args.dist_align)
        self.op_start = resolve_op_start(args.op_start, args.num_train_iter)
        self.da = None
        if self.dist_align:
            from semilearn.algorithms.hooks import DistAlignQueueHook

            self.da = DistAlignQueueHook(
                num_classes=self.num_classes, queue_length=args.da_len, p_target_type="uniform"
            )
        self.print_fn(
            f"iomatch: open-set loss after iteration {self.op_start}; distribution alignment "
            f"{'on (uniform target, queue ' + str(args.da_len) + ')' if self.dist_align else 'off'}"
        )

    @classmethod
    def net_spec(cls, args) -> Tuple[str, Dict[str, Any]]:
        return cls.net_head, {"proj_dim": args.proj_dim, **zero_shot_kwargs(args)}

    @classmethod
    def validate_config(cls, args: Any) -> list:
        """Ranges and rules of iomatch's keys (declared in ``usb_cfsg.algorithm_keys``), checked before any data is read."""
        return declared_problems("iomatch", args)

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        num_lb = y_lb.shape[0]
        with self.amp_cm():
            out = self.model(torch.cat((x_lb, x_ulb_w, x_ulb_s)))
            logits, mb, op = out["logits"].float(), out["logits_mb"].float(), out["logits_open"].float()
            logits_w, logits_s = logits[num_lb:].chunk(2)
            mb_w, _ = mb[num_lb:].chunk(2)
            _, open_s = op[num_lb:].chunk(2)

            ce = F.cross_entropy(logits[:num_lb], y_lb)
            l_mb = ova_loss(mb[:num_lb], y_lb, float(self.args.ova_log_eps))
            sup_loss = ce + self.lambda_mb * l_mb

            with torch.no_grad():
                p = torch.softmax(logits_w.detach(), dim=1)
                if self.da is not None:
                    p = self.da.dist_align(self, probs_x_ulb=p)
            u = iomatch_unlabeled_losses(logits_w, logits_s, mb_w, open_s, self.p_cutoff, self.q_cutoff, targets_p=p)
            op_on = self.it >= self.op_start
            l_op = u["op"] if op_on else u["op"] * 0.0
            unsup_loss = self.lambda_u * u["ui"] + self.lambda_op * l_op
            total_loss = sup_loss + unsup_loss

        feat = out["feat"]
        out_dict = self.process_out_dict(
            loss=total_loss, feat={"x_lb": feat[:num_lb], "x_ulb_w": feat[num_lb:].chunk(2)[0]}
        )
        sel = u["in_mask"] & u["p_mask"]
        log = dict(
            sup_loss=sup_loss.item(),
            ce_loss=ce.item(),
            mb_loss=l_mb.item(),
            ui_loss=u["ui"].item(),
            op_loss=float(l_op.item()),
            unsup_loss=unsup_loss.item(),
            total_loss=total_loss.item(),
            selected_ratio=float(sel.float().mean().item()),
            in_mask_ratio=float(u["in_mask"].float().mean()),
            p_mask_ratio=float(u["p_mask"].float().mean()),
            q_mask_ratio=float(u["q_mask"].float().mean()),
        )
        return out_dict, self.process_log_dict(**log)

    # ------------------------------------------------------------ evaluation
    @classmethod
    def compute_unknown_scores(
        cls, outputs: Dict[str, np.ndarray], args: Any, calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """``open`` (headline, the open-set classifier's outlier probability), ``mb``, ``ova``, ``msp``, ``energy``."""
        logits = torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float64))
        mb = torch.from_numpy(np.asarray(outputs["logits_mb"], dtype=np.float64))
        op = torch.from_numpy(np.asarray(outputs["logits_open"], dtype=np.float64))
        p = torch.softmax(logits, dim=1)
        return {
            "open": torch.softmax(op, dim=1)[:, -1].numpy(),
            "mb": open_set_targets(p, mb)[:, -1].numpy(),
            "ova": ova_unknown_score(mb, logits.argmax(dim=1)).numpy(),
            **super().compute_unknown_scores(outputs, args)[0],  # msp, energy of the closed logits
        }, "open"

    # ----------------------------------------------------------- checkpoints
    def extra_state(self) -> Dict[str, Any]:
        if self.da is None:
            return {}
        return {
            "da_p_model": self.da.p_model.detach().cpu().clone(),
            "da_p_model_ptr": self.da.p_model_ptr.detach().cpu().clone(),
        }

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        if self.da is not None and "da_p_model" in state:
            if tuple(state["da_p_model"].shape) != tuple(self.da.p_model.shape):
                raise ConfigError(
                    f"the checkpoint's distribution-alignment queue has shape "
                    f"{tuple(state['da_p_model'].shape)}, this run {tuple(self.da.p_model.shape)}: "
                    f"resume with the same da_len and num_classes"
                )
            self.da.p_model = state["da_p_model"].to(self.device)
            self.da.p_model_ptr = state["da_p_model_ptr"].to(self.device)

    @staticmethod
    def get_argument():
        """USB's key list, from the keys declared in ``usb_cfsg.algorithm_keys``."""
        return ssl_arguments("iomatch")


def resolve_op_start(op_start: int, num_train_iter: int) -> int:
    """``op_start`` in iterations; -1 means IOMatch's first of 256 epochs as a fraction of ``num_train_iter``."""
    if op_start == -1:
        return int(num_train_iter // PAPER_EPOCHS)
    if op_start < 0:
        raise ConfigError(f"op_start must be >= 0 iterations or -1 (auto), got {op_start}")
    return int(op_start)
