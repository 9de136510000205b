"""CFSG-CLIP as a USB algorithm (``algorithm: cfsg_clip``); docs/method.md, losses and scores.

Losses per step (labeled batch x_lb; unlabeled views x_ulb_w, x_ulb_s and, with
``ova_views: weak_weak``, a second weak view x_ulb_w2):

* labeled: CE(coarse) + CE(fine) + lambda_ova * OVA loss (positive + hardest negative);
* unlabeled: lambda_em * OVA entropy (mean over the two OVA views) + lambda_socr * OVA consistency
  between the two OVA views (``ova_views``: weak and strong [default, no extra forward], or two
  weak views as OpenMatch) + lambda_fix * FixMatch CE on the strong view, for samples the OVA head calls
  in-distribution on the weak view (unknown score < ood_threshold) AND with confidence >= p_cutoff;
  pseudo-labels from the closed-set weak prediction; off for the first ``start_fix`` iterations.

The closed-set prediction is (coarse + fine) / 2 mixed with the frozen zero-shot classifier,
``(1 - zs_weight) * trained + zs_weight * zero-shot`` (``zs_weight`` 0.5 by default): pseudo-labels and
the FixMatch term use it, so the zero-shot logits act as a fixed offset there and the gradient reaches
the trained heads scaled by 1 - zs_weight; the labeled CE terms train the coarse and fine heads alone.

Class prototypes (the VSI cues) are EMA means of the filtered local features of labeled samples
and of the selected unlabeled samples (with their pseudo-labels), averaged over processes.
``y_ulb`` (the unlabeled true labels) is read only for logged diagnostics of the selection.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from semilearn.core.algorithmbase import AlgorithmBase

from ..algorithm_keys import OVA_VIEWS
from ..engine.plugin import PluginMixin
from ..modules import ClassPrototypes, fused_score, ova_consistency, ova_entropy, ova_loss
from ..nets.backbone import unwrap
from ..nets.cfsg import NET_SCORES, OOD_SCORES
from . import declared_problems, register_algorithm, ssl_arguments

#: net keyword -> config key, for every switch of the CFSG network
NET_SWITCHES = (
    "use_sfm",
    "use_vsi",
    "sfm_keep_ratio",
    "sfm_temperature",
    "sfm_posterior_scale",
    "sfm_local_weight",
    "sfm_dense",
    "sfm_relevance",
    "sfm_scales",
    "sfm_oracle",
    "sfm_filter",
    "vsi_topk",
    "vsi_cues",
    "vsi_inject",
    "fine_blocks",
    "proto_momentum",
    "closed_head",
    "fine_tokens",
    "mcm_temperature",
    "glmcm_local",
    "ova_bias",
    "zs_weight",
    "zs_mode",
)
#: the two scores ``fused`` averages (each mapped to [0, 1] with its calibrated range)
FUSED_FROM = ("ova", "glmcm")


def _split(t: torch.Tensor, num_lb: int, num_views: int) -> Tuple[torch.Tensor, ...]:
    """``t`` = [labeled; view 1; ...; view n] (equal-sized unlabeled views) -> (labeled, view 1, ..., view n)."""
    return (t[:num_lb],) + tuple(t[num_lb:].chunk(num_views))


@register_algorithm("cfsg_clip")
class CFSGCLIP(PluginMixin, AlgorithmBase):
    """CFSG-CLIP: coarse (SFM) and fine (VSI) semantic guidance with an OVA open-set head."""

    net_head = "cfsg"
    #: What the net's ``relevance`` output is (recorded with the localization metrics).
    relevance_map = "SFM relevance"
    #: ``vsi_cues``: with ``labeled`` only labeled samples update the class prototypes.
    vsi_cues = "prototypes"
    #: ``pseudo_labels``: ``ensemble`` (the closed prediction, prior included) or ``trained`` (the heads alone)
    pseudo_labels = "ensemble"

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        self.lambda_ova = args.lambda_ova
        self.lambda_em = args.lambda_em
        self.ova_log_eps = float(args.ova_log_eps)
        self.lambda_socr = args.lambda_socr
        self.lambda_fix = args.lambda_fix
        self.p_cutoff = args.p_cutoff
        self.ood_threshold = args.ood_threshold
        self.start_fix = args.start_fix
        self.ood_score = args.ood_score
        self.ova_views = args.ova_views
        self.vsi_cues = args.vsi_cues
        self.pseudo_labels = args.pseudo_labels
        if self.ova_views not in OVA_VIEWS:
            raise ValueError(f"ova_views must be one of {OVA_VIEWS}, got {self.ova_views!r}")

    @classmethod
    def net_spec(cls, args) -> Tuple[str, Dict[str, Any]]:
        """The CFSG head with every network switch of the config."""
        kwargs = {k: getattr(args, k) for k in NET_SWITCHES}
        if kwargs["sfm_oracle"] != "none":  # the oracle reads the mark's colour from the un-normalised input
            from ..nets.clip import clip_mean_std

            mean, std = clip_mean_std(args.net, getattr(args, "clip_model", None), getattr(args, "pretrained", None))
            kwargs.update(input_mean=tuple(mean), input_std=tuple(std))
        return cls.net_head, kwargs

    @classmethod
    def validate_config(cls, args: Any) -> list:
        """Ranges and rules of cfsg_clip's keys (declared in ``usb_cfsg.algorithm_keys``), checked before any data is read."""
        return declared_problems("cfsg_clip", args)

    # ------------------------------------------------------------------ data
    def set_dataset(self):
        """Our datasets; with ``ova_views: weak_weak`` unlabeled items carry a second weak view ``x_ulb_w2``."""
        dataset_dict = super().set_dataset()
        if self.args.ova_views == "weak_weak" and dataset_dict.get("train_ulb") is not None:
            dataset_dict["train_ulb"].second_weak_view = True
        return dataset_dict

    # ------------------------------------------------------------------ step
    def _update_prototypes(self, feats: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        reduce = None
        if self.distributed and dist.is_initialized():

            def reduce(t: torch.Tensor) -> torch.Tensor:
                dist.all_reduce(t)
                return t

        prototypes = cast(ClassPrototypes, unwrap(self.model).prototypes)
        prototypes.update(feats.detach().float(), labels, mask, reduce_fn=reduce)

    def _strong_logits(self, s: Dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The strong views' closed logits for the FixMatch term, zero-shot ensembled where it counts.

        With ``zs_mode: output`` the frozen copy runs on the selected rows only (``mask``; trunk
        tokens ``s["tokens"]``): the other rows' cross-entropy is multiplied by 0, so their logits,
        left the trained ones, change neither the loss nor the gradients. Otherwise ``s["logits"]``.
        """
        logits = s["logits"]
        prior = getattr(unwrap(self.model), "zero_shot", None)
        if prior is None or prior.mode != "output" or "tokens" not in s:
            return logits
        sel = mask.nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            return logits
        return logits.index_put((sel,), prior.mix(logits[sel], prior.logits(s["tokens"][sel])))

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s, x_ulb_w2=None, y_ulb=None):
        """One step on a labeled batch and an unlabeled batch (views in the module docstring).

        Args:
            x_lb: Labeled images [B_l, 3, H, W]; y_lb: their labels [B_l].
            x_ulb_w, x_ulb_s: Weak and strong views of the unlabeled images [B_u, 3, H, W].
            x_ulb_w2: A second weak view [B_u, 3, H, W] (required by ``ova_views: weak_weak``).
            y_ulb: True unlabeled labels, for logged selection diagnostics only.
        """
        num_lb, num_ulb = y_lb.shape[0], x_ulb_w.shape[0]
        # rows: labeled, strong, weak (and the second weak view): the rows whose coarse branch has a
        # gradient path to a loss come first (labeled: CE; strong: the FixMatch term, once it is on)
        views = [x_lb, x_ulb_s, x_ulb_w]
        if self.ova_views == "weak_weak":
            if x_ulb_w2 is None:
                raise ValueError(
                    "ova_views: weak_weak needs a second weak view of the unlabeled images (x_ulb_w2), "
                    "which the dataset did not provide (set_dataset turns OpenSetDataset.second_weak_view "
                    "on for train_ulb); or set ova_views: weak_strong"
                )
            views.append(x_ulb_w2)
        fix_on = self.it >= self.start_fix
        weak = num_lb + num_ulb  # the first weak row
        with self.amp_cm():
            # The labeled rows' losses use the coarse and fine heads alone: no zero-shot forward for them;
            # it runs on the weak views (pseudo-labels) and, after the selection, on the strong views the
            # FixMatch term selects (_strong_logits); the second weak views' closed logits are unused.
            # The weak views' coarse outputs reach the losses only through no-gradient uses (pseudo-labels,
            # prototypes, the VSI's top-k classes, the kept patches' indices): their coarse branch runs
            # without autograd (same values and gradients, less time and memory; CFSGNet.forward).
            out = self.model(
                torch.cat(views),
                zs_skip=weak,
                zs_stop=weak + num_ulb,
                coarse_grad_rows=num_lb + (num_ulb if fix_on else 0),
            )
            parts = {k: _split(v, num_lb, len(views) - 1) for k, v in out.items()}
            lb, s, w = ({k: p[i] for k, p in parts.items()} for i in range(3))
            # the second view of the OVA losses: another weak view (OpenMatch) or the strong view
            o2 = {k: p[3] for k, p in parts.items()} if self.ova_views == "weak_weak" else s

            ce_coarse = F.cross_entropy(lb["logits_coarse"].float(), y_lb)
            ce_fine = F.cross_entropy(lb["logits_fine"].float(), y_lb)
            l_ova = ova_loss(lb["logits_ova"].float(), y_lb, self.ova_log_eps)
            sup_loss = ce_coarse + ce_fine + self.lambda_ova * l_ova

            eps = self.ova_log_eps
            l_em = (ova_entropy(w["logits_ova"].float(), eps) + ova_entropy(o2["logits_ova"].float(), eps)) / 2
            l_socr = ova_consistency(w["logits_ova"].float(), o2["logits_ova"].float())

            with torch.no_grad():
                net = unwrap(self.model)
                if self.pseudo_labels == "trained":  # the trained heads alone, without the prior
                    logits_w = net.trained_logits(w).detach().float()
                else:
                    logits_w = w["logits"].detach().float()
                    prior = getattr(net, "zero_shot", None)
                    if prior is not None and prior.mode == "weights" and "logits_zs" in w:
                        logits_w = prior.mix(logits_w, w["logits_zs"].float())  # the ensemble's pseudo-labels
                probs_w = torch.softmax(logits_w, dim=1)
                conf, pseudo = probs_w.max(dim=1)
                inlier = w["score_ova"] < self.ood_threshold
                mask = inlier & (conf >= self.p_cutoff)
            if fix_on:
                ce_s = F.cross_entropy(self._strong_logits(s, mask).float(), pseudo, reduction="none")
                l_fix = (ce_s * mask.float()).mean()
            else:
                l_fix = torch.zeros((), device=x_lb.device)
            unsup_loss = self.lambda_em * l_em + self.lambda_socr * l_socr + self.lambda_fix * l_fix
            total_loss = sup_loss + unsup_loss

        with torch.no_grad():
            feats = torch.cat((lb["feat_local"], w["feat_local"]))
            labels = torch.cat((y_lb, pseudo))
            ulb_sel = mask if fix_on and self.vsi_cues != "labeled" else torch.zeros_like(mask)
            sel = torch.cat((torch.ones_like(y_lb, dtype=torch.bool), ulb_sel))
            self._update_prototypes(feats, labels, sel)

        feat_dict = {"x_lb": lb["feat"], "x_ulb_w": w["feat"], "x_ulb_s": s["feat"]}
        out_dict = self.process_out_dict(loss=total_loss, feat=feat_dict)
        log = dict(
            sup_loss=sup_loss.item(),
            ce_coarse=ce_coarse.item(),
            ce_fine=ce_fine.item(),
            ova_loss=l_ova.item(),
            em_loss=l_em.item(),
            socr_loss=l_socr.item(),
            fix_loss=float(l_fix.item()),
            unsup_loss=unsup_loss.item(),
            total_loss=total_loss.item(),
            util_ratio=float(mask.float().mean().item()) if fix_on else 0.0,
            id_ratio=float(inlier.float().mean().item()),
        )
        if y_ulb is not None:
            log.update(self.selection_diagnostics(inlier, y_ulb))
        log_dict = self.process_log_dict(**log)
        return out_dict, log_dict

    def selection_diagnostics(self, selected: torch.Tensor, y_ulb: torch.Tensor) -> Dict[str, float]:
        """Precision/recall of the in-distribution selection against the true labels (diagnostics only)."""
        true_id = y_ulb < self.num_classes
        hit = (selected & true_id).sum().item()
        n_sel, n_id = selected.sum().item(), true_id.sum().item()
        return {
            "id_precision": hit / n_sel if n_sel else float("nan"),
            "id_recall": hit / n_id if n_id else float("nan"),
        }

    # ------------------------------------------------------------ evaluation
    @classmethod
    def compute_unknown_scores(
        cls, outputs: Dict[str, np.ndarray], args: Any, calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """CFSG's unknown scores and the primary one (``ood_score``); higher = more unknown.

        ``ova``, ``mcm`` and ``glmcm`` are the net's ``score_<name>`` outputs; ``energy`` is the base
        class's -logsumexp of ``logits`` (the closed prediction, zero-shot ensembled with
        ``zs_weight`` > 0). ``fused`` is
        :func:`~usb_cfsg.modules.fused_score` over ``ova`` and ``glmcm``: each is mapped to [0, 1]
        with its range ``calibration["ranges"][name] = [lo, hi]`` (fitted by the evaluator on
        training data), then the two are averaged. Without a calibration, ``fused`` is the plain
        mean of the raw scores: UNCALIBRATED, since ``glmcm`` at T = 1 lives in a narrow band
        just below 1 - 1/K while ``ova`` spans [0, 1], so the mean mostly follows ``ova``.

        Args:
            outputs: Net outputs as numpy arrays (``logits`` [N, K]; ``score_<name>`` [N] for every name
                of ``NET_SCORES``).
            args: The run's configuration (``ood_score``).
            calibration: ``{"ranges": {name: [lo, hi]}, "thresholds": {...}, "source": str}`` or None.

        Returns:
            ``(scores, primary)``: name -> float64 array [N] for every name of ``OOD_SCORES`` (``ova``,
            ``mcm``, ``glmcm``, ``fused``, ``msp``, ``energy``).

        Raises:
            ValueError: A calibration without ranges for ``ova`` and ``glmcm``.
        """
        scores = {name: np.asarray(outputs[f"score_{name}"], dtype=np.float64) for name in NET_SCORES}
        scores.update(super().compute_unknown_scores(outputs, args)[0])  # msp, energy of the closed logits
        ranges = None
        if calibration is not None:
            given = calibration.get("ranges") or {}
            missing = [name for name in FUSED_FROM if name not in given]
            if missing:
                raise ValueError(
                    f"calibration has no range for {missing} (ranges given: {sorted(given)}); the fused "
                    f"score needs ranges of {list(FUSED_FROM)} fitted on training data"
                )
            ranges = {name: (float(given[name][0]), float(given[name][1])) for name in FUSED_FROM}
        fused = fused_score({name: torch.from_numpy(scores[name]) for name in FUSED_FROM}, ranges=ranges)
        scores["fused"] = fused.numpy()
        return {name: scores[name] for name in OOD_SCORES}, args.ood_score

    @staticmethod
    def get_argument():
        """USB's key list, from the keys declared in ``usb_cfsg.algorithm_keys``."""
        return ssl_arguments("cfsg_clip")
