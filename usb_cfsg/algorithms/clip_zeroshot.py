"""Zero-shot CLIP with MCM and GL-MCM unknown scores (``algorithm: clip_zeroshot``); no training.

The classifier is the seen classes' text embeddings t_k (prompt ensemble of the dataset's
templates): ``logits = s * cos(z, t_k)`` with the image embedding ``z`` (CLIP's class token through
``ln_post`` and ``proj``) and CLIP's logit scale s = 100 (the argmax does not depend on s).

Unknown scores (higher = more unknown, :mod:`usb_cfsg.modules.scores`):

* ``mcm`` (Ming et al., NeurIPS 2022): ``1 - max_k softmax_k(cos(z, t_k) / T)``;
* ``glmcm`` (Miyai et al., 2023): ``1 - (S_MCM(z) + max_i S_MCM(l_i)) / 2``, the local features
  l_i of **all** patches computed as GL-MCM's code does (the last block with self-only attention:
  value path, residual and MLP, then ``ln_post`` and ``proj``; ``glmcm_local: value`` drops the
  residual and MLP, MaskCLIP's value path; ``ClipBackbone.dense_features``);
* ``msp`` and ``energy`` (``-T logsumexp(l / T)``, T = ``energy_temperature``) of the zero-shot
  logits taken at the trained cosine heads' scale (:data:`HEAD_LOGIT_SCALE` = 30, i.e.
  ``l = 30 cos(z, t_k)``), so that zero-shot CLIP gets the same scores as every trained CLIP net;

with T = ``mcm_temperature`` (default 1, as both papers) for MCM and GL-MCM. The headline score is
``ood_score``.

``num_train_iter`` may be 0; any other value is ignored with a notice (nothing is trained). The run
folder gets the same files as a trained run: ``config.yaml``, ``latest_model.pth`` (the CLIP weights
as loaded) and ``openset_metrics.json``. With ``text_encoder: minilm`` the class embeddings pass
through an untrained random projection, so zero-shot results are at chance level; a warning says so.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from semilearn.core.algorithmbase import AlgorithmBase

from ..engine.plugin import PluginMixin, msp_and_energy
from ..modules import glmcm_score, mcm_score
from ..modules.scores import max_softmax_cosine
from ..nets.backbone import DENSE_KINDS, DenseKind
from ..nets.clip import NET_HEADS, ClipNet
from ..unknown_scores import score_names
from . import declared_problems, register_algorithm, ssl_arguments

logger = logging.getLogger("usb_cfsg")

#: CLIP's learned logit scale (exp of 4.6052 in OpenAI's checkpoints): the zero-shot logits' scale.
CLIP_LOGIT_SCALE = 100.0
#: the scale of the trained cosine heads (``ClipNet``'s default ``logit_scale``): msp and energy of the
#: zero-shot logits are taken at it, as for the trained nets
HEAD_LOGIT_SCALE = 30.0

#: scores the net computes (as ``score_<name>``); msp and energy come from its logits
NET_ZS_SCORES = score_names("clip_zeroshot", from_net=True)


@NET_HEADS.register("clip_zeroshot")
class ZeroShotClipNet(ClipNet):
    """CLIP image encoder whose classifier is the frozen class text embeddings.

    ``forward`` returns ``logits`` [B, K] (``100 * cos(z, t)``), ``feat`` (z) [B, D], the
    unknown scores ``score_mcm``, ``score_glmcm`` [B] and ``relevance`` [B, N]: GL-MCM's patch map,
    the local MCM ``max_k softmax_k(cos(l_i, t_k) / T)`` of every patch (the evaluator's localization
    metrics and the relevance overlays read it).

    Args:
        mcm_temperature: T of the MCM / GL-MCM softmax.
        glmcm_local: GL-MCM's local features: ``glmcm`` (its authors' code) or ``value`` (MaskCLIP).
    """

    def __init__(
        self,
        backbone,
        text,
        num_classes: int,
        mcm_temperature: float = 1.0,
        glmcm_local: DenseKind = "glmcm",
        **unused: Any,
    ) -> None:
        super().__init__(backbone, text, num_classes, logit_scale=CLIP_LOGIT_SCALE)
        if not mcm_temperature > 0:
            raise ValueError(f"mcm_temperature must be positive, got {mcm_temperature}")
        if glmcm_local not in DENSE_KINDS:
            raise ValueError(f"glmcm_local must be one of {', '.join(DENSE_KINDS)}, got {glmcm_local!r}")
        self.mcm_temperature = float(mcm_temperature)
        self.glmcm_local: DenseKind = glmcm_local

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: Any):
        t = F.normalize(cast(torch.Tensor, self.text_embeddings), dim=-1)
        if only_fc:
            return CLIP_LOGIT_SCALE * F.normalize(x, dim=-1) @ t.to(x.dtype).t()
        bb = self.backbone
        tokens, last_in = bb.tuned(bb.trunk(x), return_last_input=True)
        z = bb.project(tokens[:, :1])[:, 0]
        if only_feat:
            return z
        logits = CLIP_LOGIT_SCALE * F.normalize(z, dim=-1) @ t.to(z.dtype).t()
        with torch.no_grad():
            dense = bb.dense_features(last_in, self.glmcm_local)
            s_mcm = mcm_score(z.float(), t.float(), self.mcm_temperature)
            s_glmcm = glmcm_score(z.float(), dense.float(), t.float(), self.mcm_temperature)
            # GL-MCM's patch map: each patch's local MCM, the term whose max over patches GL-MCM takes
            patch_map = max_softmax_cosine(dense.float(), t.float(), self.mcm_temperature)
        return {"logits": logits, "feat": z, "score_mcm": s_mcm, "score_glmcm": s_glmcm, "relevance": patch_map}


@register_algorithm("clip_zeroshot")
class ClipZeroShot(PluginMixin, AlgorithmBase):
    """Zero-shot CLIP: text embeddings as the classifier, MCM / GL-MCM as unknown scores, no training."""

    net_head = "clip_zeroshot"
    #: What the net's ``relevance`` output is (recorded with the localization metrics).
    relevance_map = "GL-MCM patch map (local MCM of every patch)"

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        super().__init__(args, net_builder, tb_log, logger, **kwargs)
        if getattr(args, "text_encoder", "clip") != "clip":
            logger.warning(
                "clip_zeroshot with text_encoder %s: the class embeddings pass through an untrained "
                "random projection, so zero-shot results are at chance level; use text_encoder: clip "
                "with a pretrained CLIP",
                args.text_encoder,
            )

    @classmethod
    def net_spec(cls, args) -> Tuple[str, Dict[str, Any]]:
        return cls.net_head, {"mcm_temperature": args.mcm_temperature, "glmcm_local": args.glmcm_local}

    @classmethod
    def validate_config(cls, args: Any) -> list:
        """Ranges and rules of clip_zeroshot's keys (declared in ``usb_cfsg.algorithm_keys``), checked before any data is read."""
        return declared_problems("clip_zeroshot", args)

    def train(self):
        """No training: the hooks' before_run / after_run (checkpoint, open-set evaluation) only."""
        if self.num_train_iter:
            self.print_fn(
                f"clip_zeroshot trains nothing: num_train_iter {self.num_train_iter} is ignored; "
                f"evaluating the CLIP weights as loaded"
            )
        self.model.eval()
        self.epoch = 0
        self.call_hook("before_run")
        self.completed_iters = self.it
        self.call_hook("after_run")

    def train_step(self, x_lb, y_lb):  # pragma: no cover - train() never calls it
        raise RuntimeError("clip_zeroshot has no training step")

    @classmethod
    def compute_unknown_scores(
        cls, outputs: Dict[str, np.ndarray], args: Any, calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """MCM and GL-MCM (the net's ``score_mcm`` / ``score_glmcm``), msp and energy at the heads' scale.

        ``outputs["logits"]`` are at CLIP's scale 100; msp and energy are taken from
        ``30 / 100 * logits`` = ``30 cos(z, t)`` (:data:`HEAD_LOGIT_SCALE`). The headline is ``ood_score``.
        """
        scores = {name: np.asarray(outputs[f"score_{name}"], dtype=np.float64) for name in NET_ZS_SCORES}
        head_logits = np.asarray(outputs["logits"], dtype=np.float64) * (HEAD_LOGIT_SCALE / CLIP_LOGIT_SCALE)
        scores.update(msp_and_energy(head_logits, float(getattr(args, "energy_temperature", 1.0))))
        return scores, args.ood_score

    @staticmethod
    def get_argument():
        """USB's key list, from the keys declared in ``usb_cfsg.algorithm_keys``."""
        return ssl_arguments("clip_zeroshot")
