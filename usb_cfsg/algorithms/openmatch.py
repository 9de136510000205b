"""OpenMatch (Saito, Kim, Saenko, NeurIPS 2021) as a USB algorithm (``algorithm: openmatch``).

Written from the paper and checked against the authors' code (VisionLearningGroup/OP_Match,
``trainer.py`` / ``utils/misc.py``) and the USB port in the IOMatch repository; no code copied.

Network (head ``openmatch``): the CLIP image feature ``z`` feeds the closed-set cosine classifier
(initialised from the class-name text embeddings, like every CLIP net here) and K one-vs-all
binary classifiers (:class:`~usb_cfsg.modules.OVAHead`, no bias, as OP_Match's
``Linear(D, 2K, bias=False)``).

Losses per step (B labeled, uB unlabeled images; every labeled and unlabeled image in two weak
views, as OpenMatch's ``TransformOpenMatch``):

* labeled, both weak views: ``CE(logits, y) + lambda_ova * L_ova`` (positive + hardest negative);
* unlabeled, both weak views: ``lambda_em * (H_ova(w1) + H_ova(w2)) / 2`` (open-set entropy
  minimisation) ``+ lambda_socr * SOCR(w1, w2)`` (soft open-set consistency);
* FixMatch on the inliers: from iteration ``start_fix`` on, the EMA model scores the whole
  unlabeled set (eval transform) and keeps the images whose OVA unknown score ``p_neg(y_hat)`` is
  below ``select_threshold`` (0.5); the selection is renewed every ``select_interval``
  iterations. ``lambda_fix * FixMatch`` (CE of the strong view against the weak view's hard
  pseudo-label, confidence >= ``p_cutoff``) is averaged over the selected images of each unlabeled
  batch.

Schedule: OpenMatch counts in epochs of 1024 iterations (512 epochs, FixMatch from epoch 10,
selection once per epoch over the whole unlabeled set). Our budgets are in iterations, so:

* ``start_fix: -1`` (auto) = ``round(num_train_iter * 10 / 512)``, the paper's warm-up as a
  fraction of training (1.95 %; the USB port's 5 of 256 epochs is the same fraction);
* ``select_interval: -1`` (auto) = the iterations of one pass over the unlabeled set
  (``ceil(|U| / (batch_size * uratio * world_size))``), i.e. "once per epoch" with an epoch of
  the unlabeled data. (One OP_Match epoch on CIFAR-10 is ~2.6 passes; a fixed fraction of the
  budget would rescore the whole set every iteration in short runs.)

Two documented differences from OP_Match's loop: the FixMatch term reuses the weak/strong views of
the unlabeled batch and averages over its selected members instead of drawing a second batch from
the selected subset (same expectation, fewer forward passes); and the selection scores images
through the evaluation transform (OP_Match: flip only), which is deterministic.

Unknown score (headline ``ova``): ``p_neg`` of the closed-set predicted class; ``msp`` is reported too.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from semilearn.core.algorithmbase import AlgorithmBase

from ..engine.plugin import PluginMixin, zero_shot_kwargs
from ..engine.sampling import eval_loader
from ..errors import ConfigError
from ..modules import OVA_LOG_EPS, OVAHead, ova_consistency, ova_entropy, ova_loss, ova_unknown_score
from ..nets.clip import NET_HEADS, ClipNet
from . import declared_problems, register_algorithm, ssl_arguments

logger = logging.getLogger("usb_cfsg")

#: OP_Match trains 512 epochs and starts FixMatch at epoch 10.
PAPER_EPOCHS, PAPER_START_FIX_EPOCHS = 512, 10
SELECT_LOADER = "ulb_select"


@NET_HEADS.register("openmatch")
class OpenMatchNet(ClipNet):
    """CLIP image encoder, text-initialised cosine classifier and a bias-free OVA head.

    ``forward`` returns ``logits`` [B, K], ``feat`` [B, D] and ``logits_ova`` [B, 2, K]
    (softmax over dim 1; index 1 = "is class k").
    """

    def __init__(self, backbone, text, num_classes: int, logit_scale: float = 30.0, **kwargs: Any) -> None:
        super().__init__(backbone, text, num_classes, logit_scale=logit_scale, **kwargs)
        self.ova = OVAHead(backbone.joint_dim, num_classes, bias=False)

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: Any):
        if only_fc:
            return self.classifier(x)
        feat, h = self.encode(x)
        if only_feat:
            return feat
        return {**self.closed_logits(feat, h), "feat": feat, "logits_ova": self.ova(feat)}


def openmatch_losses(
    logits_lb: torch.Tensor,
    ova_lb: torch.Tensor,
    y_lb: torch.Tensor,
    ova_u1: torch.Tensor,
    ova_u2: torch.Tensor,
    ova_log_eps: float = OVA_LOG_EPS,
) -> Dict[str, torch.Tensor]:
    """OpenMatch's labeled and open-set unlabeled terms.

    Args:
        logits_lb: Closed-set logits of the labeled images, both weak views stacked [2B, K].
        ova_lb: Their OVA logits [2B, 2, K].
        y_lb: Labels [B] (repeated for the second view here).
        ova_u1: OVA logits of the unlabeled images, first weak view [uB, 2, K].
        ova_u2: The same images, second weak view [uB, 2, K].
        ova_log_eps: eps of the OVA losses' ``log(p + eps)`` (the authors' 1e-8; 0 = exact).

    Returns:
        ``ce`` (mean CE over both views), ``ova`` (OVA loss over both views), ``em`` (mean of the two
        views' OVA entropies), ``socr`` (soft open-set consistency between the views).
    """
    y2 = y_lb.repeat(2)
    return {
        "ce": F.cross_entropy(logits_lb, y2),
        "ova": ova_loss(ova_lb, y2, ova_log_eps),
        "em": (ova_entropy(ova_u1, ova_log_eps) + ova_entropy(ova_u2, ova_log_eps)) / 2,
        "socr": ova_consistency(ova_u1, ova_u2),
    }


def fixmatch_on_selected(
    logits_w: torch.Tensor, logits_s: torch.Tensor, selected: torch.Tensor, p_cutoff: float, temperature: float = 1.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """FixMatch CE of the strong view against the weak view's hard pseudo-label, over selected images.

    Args:
        logits_w: Weak-view logits [uB, K] (detached inside).
        logits_s: Strong-view logits [uB, K].
        selected: Bool [uB]: the image is in the current inlier selection.
        p_cutoff: Confidence threshold of the pseudo-label (OpenMatch: 0.0).
        temperature: Softmax temperature of the pseudo-label (OpenMatch: 1).

    Returns:
        ``(loss, used)``: the masked CE summed over selected images divided by their number
        (0 when none is selected), and the bool mask of images that contributed.
    """
    with torch.no_grad():
        probs = torch.softmax(logits_w.detach().float() / temperature, dim=1)
        conf, pseudo = probs.max(dim=1)
        used = selected & (conf >= p_cutoff)
    ce = F.cross_entropy(logits_s.float(), pseudo, reduction="none")
    loss = (ce * used.float()).sum() / selected.sum().clamp(min=1)
    return loss, used


@register_algorithm("openmatch")
class OpenMatch(PluginMixin, AlgorithmBase):
    """OpenMatch: OVA outlier detector, open-set entropy minimisation, SOCR, FixMatch on selected inliers."""

    net_head = "openmatch"

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        self.lambda_ova, self.lambda_em = args.lambda_ova, args.lambda_em
        self.ova_log_eps = float(args.ova_log_eps)
        self.lambda_socr, self.lambda_fix = args.lambda_socr, args.lambda_fix
        self.p_cutoff, self.T = args.p_cutoff, args.T
        self.select_threshold = args.select_threshold
        self.start_fix = resolve_start_fix(args.start_fix, args.num_train_iter)
        world = max(1, args.world_size) if self.distributed else 1
        self.select_interval = resolve_select_interval(
            args.select_interval, args.ulb_dest_len, args.batch_size * args.uratio * world
        )
        self.selected = torch.zeros(args.ulb_dest_len, dtype=torch.bool)
        self.selection_it = -1
        self.print_fn(
            f"openmatch: FixMatch on selected inliers after iteration {self.start_fix}; inliers "
            f"reselected every {self.select_interval} iterations over {args.ulb_dest_len} unlabeled images"
        )

    @classmethod
    def net_spec(cls, args) -> Tuple[str, Dict[str, Any]]:
        return cls.net_head, zero_shot_kwargs(args)

    @classmethod
    def validate_config(cls, args: Any) -> list:
        """Ranges and rules of openmatch's keys (declared in ``usb_cfsg.algorithm_keys``), checked before any data is read."""
        return declared_problems("openmatch", args)

    # ----------------------------------------------------------------- data
    def set_dataset(self):
        from ..datasets.torch_dataset import OpenSetDataset
        from ..datasets.transforms import build_transforms

        d = super().set_dataset()
        d["train_lb"].second_weak_view = True
        d["train_ulb"].second_weak_view = True
        ulb = d["train_ulb"]
        # the unlabeled images through the deterministic evaluation transform, for the inlier selection
        # (built afresh: with cache_images, d["eval"].transform has lost its resize to the cache)
        evaluate = build_transforms(self.args.img_size, self.args.crop_ratio, *self.net_mean_std())[2]
        d[SELECT_LOADER] = OpenSetDataset(self.algorithm, ulb.data, ulb.targets, self.args.num_classes, evaluate)
        return d

    def set_data_loader(self):
        loaders = super().set_data_loader()
        a = self.args
        loaders[SELECT_LOADER] = eval_loader(
            self.dataset_dict[SELECT_LOADER], a.eval_batch_size, a.num_workers, self.device.type == "cuda"
        )
        return loaders

    # ------------------------------------------------------------ selection
    def selection_due(self, it: int) -> bool:
        """Whether the inlier selection is renewed before step ``it``."""
        return it >= self.start_fix and (it - self.start_fix) % self.select_interval == 0

    @torch.no_grad()
    def select_inliers(self) -> torch.Tensor:
        """Score every unlabeled image with the EMA model; inliers have ``p_neg(y_hat) < select_threshold``."""
        out = self.predict_loader(SELECT_LOADER)
        score = ova_unknown_score(torch.from_numpy(out["logits_ova"]), torch.from_numpy(out["logits"]).argmax(1))
        selected = score < self.select_threshold
        true_id = torch.from_numpy(out["y"]) < self.num_classes  # diagnostics only
        n_sel, n_id = int(selected.sum()), int(true_id.sum())
        hit = int((selected & true_id).sum())
        self.print_fn(
            f"openmatch: selected {n_sel}/{len(selected)} unlabeled images as inliers after iteration "
            f"{self.it} (precision {hit / max(n_sel, 1):.3f}, recall {hit / max(n_id, 1):.3f})"
        )
        self.selected = selected
        self.selection_it = int(self.it)
        return selected

    # ----------------------------------------------------------------- step
    def train_step(self, x_lb, x_lb_w2, y_lb, idx_ulb, x_ulb_w, x_ulb_w2, x_ulb_s):
        if self.selection_due(self.it) and self.selection_it != self.it:
            self.select_inliers()
        fix_on = self.it >= self.start_fix
        num_lb, num_ulb = y_lb.shape[0], x_ulb_w.shape[0]
        views = [x_lb, x_lb_w2, x_ulb_w, x_ulb_w2] + ([x_ulb_s] if fix_on else [])
        with self.amp_cm():
            out = self.model(torch.cat(views))
            logits, ova = out["logits"].float(), out["logits_ova"].float()
            lb = slice(0, 2 * num_lb)
            u1 = slice(2 * num_lb, 2 * num_lb + num_ulb)
            u2 = slice(2 * num_lb + num_ulb, 2 * num_lb + 2 * num_ulb)
            terms = openmatch_losses(logits[lb], ova[lb], y_lb, ova[u1], ova[u2], self.ova_log_eps)
            if fix_on:
                sel = self.selected.to(idx_ulb.device)[idx_ulb]
                l_fix, used = fixmatch_on_selected(
                    logits[u1], logits[2 * num_lb + 2 * num_ulb :], sel, self.p_cutoff, self.T
                )
            else:
                l_fix, used = logits.new_zeros(()), torch.zeros(num_ulb, dtype=torch.bool, device=logits.device)
            sup_loss = terms["ce"] + self.lambda_ova * terms["ova"]
            unsup_loss = self.lambda_em * terms["em"] + self.lambda_socr * terms["socr"] + self.lambda_fix * l_fix
            total_loss = sup_loss + unsup_loss

        feat = out["feat"]
        out_dict = self.process_out_dict(loss=total_loss, feat={"x_lb": feat[:num_lb], "x_ulb_w": feat[u1]})
        log = dict(
            sup_loss=sup_loss.item(),
            ce_loss=terms["ce"].item(),
            ova_loss=terms["ova"].item(),
            em_loss=terms["em"].item(),
            socr_loss=terms["socr"].item(),
            fix_loss=float(l_fix.item()),
            unsup_loss=unsup_loss.item(),
            total_loss=total_loss.item(),
            util_ratio=float(used.float().mean().item()),
            selected_ratio=float(self.selected.float().mean().item()) if fix_on else 0.0,
        )
        return out_dict, self.process_log_dict(**log)

    # ------------------------------------------------------------ evaluation
    @classmethod
    def compute_unknown_scores(
        cls, outputs: Dict[str, np.ndarray], args: Any, calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """``ova`` = p_neg of the predicted class (OpenMatch's score, the headline), ``msp`` and ``energy``."""
        logits = torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float32))
        ova = ova_unknown_score(
            torch.from_numpy(np.asarray(outputs["logits_ova"], dtype=np.float32)), logits.argmax(dim=1)
        )
        generic = super().compute_unknown_scores(outputs, args)[0]  # msp, energy of the closed logits
        return {"ova": ova.double().numpy(), **generic}, "ova"

    # ----------------------------------------------------------- checkpoints
    def extra_state(self) -> Dict[str, Any]:
        return {"selected": self.selected.clone().cpu(), "selection_it": int(self.selection_it)}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        if "selected" in state:
            selected = state["selected"].bool().cpu()
            if selected.shape != self.selected.shape:
                raise ConfigError(
                    f"the checkpoint's inlier selection covers {selected.shape[0]} unlabeled images, "
                    f"this run has {self.selected.shape[0]}: resume with the same data and split"
                )
            self.selected = selected
            self.selection_it = int(state.get("selection_it", -1))

    @staticmethod
    def get_argument():
        """USB's key list, from the keys declared in ``usb_cfsg.algorithm_keys``."""
        return ssl_arguments("openmatch")


def resolve_start_fix(start_fix: int, num_train_iter: int) -> int:
    """``start_fix`` in iterations; -1 means OpenMatch's 10 of 512 epochs as a fraction of ``num_train_iter``."""
    if start_fix == -1:
        return int(round(num_train_iter * PAPER_START_FIX_EPOCHS / PAPER_EPOCHS))
    if start_fix < 0:
        raise ConfigError(f"start_fix must be >= 0 iterations or -1 (auto), got {start_fix}")
    return int(start_fix)


def resolve_select_interval(select_interval: int, num_unlabeled: int, unlabeled_per_step: int) -> int:
    """``select_interval`` in iterations; -1 means one pass over the unlabeled set."""
    if select_interval == -1:
        return max(1, math.ceil(num_unlabeled / max(1, unlabeled_per_step)))
    if select_interval < 1:
        raise ConfigError(f"select_interval must be >= 1 iteration or -1 (auto), got {select_interval}")
    return int(select_interval)
