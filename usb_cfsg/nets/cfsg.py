"""The CFSG-CLIP network (DESIGN.md §3, our reconstruction of the paper).

::

    images ─ frozen trunk (blocks 1..L-m, no autograd) ─ H ─┬─ tuned blocks ─ ln_post/proj ─ g, p_1..p_N
                                                            │        coarse branch: SFM(g, p, t) ─ z_c ─ coarse logits
                                                            │                         (relevance, kept patches, local f)
                                                            └─ [cls ; kept patches of H ; VSI cues(top-k coarse classes)]
                                                                 ─ tuned blocks again ─ z_f ─ fine logits, OVA logits

The fine branch re-runs only the last m blocks, on 1 + ρN + k tokens (``fine_blocks``: the same
blocks, or a trainable or frozen copy of the pretrained ones; ``vsi_inject: deep``: cue tokens
enter every one of those blocks). In both branches the last
block computes its output only for the tokens that are used (the class token; in the coarse branch
also the kept patches), and the value-path dense features reuse that block's values: the same
outputs as running it on every token, at a lower cost (README "Performance"). Every output a user
or the algorithm needs is in the forward's dict; ``logits``/``feat`` keep USB's contract.

With ``zs_weight`` α > 0 the closed logits are ``(1 - α) * trained + α * zero-shot``, the zero-shot
logits coming from a frozen copy of the pretrained tuned blocks run on the same trunk tokens H (one
more pass through the last m blocks for the class token; the trunk is shared): an output-space
ensemble with the classifier CLIP had before fine-tuning.

The net returns the per-image unknown scores ``ova``, ``mcm`` and ``glmcm``. The energy score (minus
the log-sum-exp of the closed logits, Liu et al. 2020) comes from ``logits`` at evaluation, as for any
USB algorithm. The fused score needs score ranges fitted on training data, which the net cannot know;
both are computed from these outputs by ``CFSGCLIP.compute_unknown_scores``, ``fused`` with the
evaluator's calibration.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..algorithm_keys import FINE_BLOCKS, VSI_INJECT
from ..errors import ConfigError
from ..modules import (
    DEFAULT_MCM_TEMPERATURE,
    DEFAULT_SFM_LOGIT_SCALE,
    ClassPrototypes,
    CosineClassifier,
    OVAHead,
    SemanticFilter,
    VisualSemanticInjection,
    gather_tokens,
    glmcm_score,
    mcm_score,
    ova_unknown_score,
)
from ..unknown_scores import score_names
from .backbone import DENSE_KINDS, ClipBackbone, DenseKind
from .clip import NET_HEADS
from .oracle import ORACLE_MODES, mark_patches, oracle_keep
from .text import ClassTextEmbeddings
from .zero_shot import ZeroShotMixin, build_prior, upgrade_legacy_prior_keys

#: ``sfm_filter: soft``: the relevance N * r_i is floored here before its log (a bias of at most -9.2)
SOFT_FILTER_FLOOR = 1e-4
#: unknown scores the network outputs (as ``score_<name>``), higher = more unknown
NET_SCORES = score_names("cfsg_clip", from_net=True)
#: every unknown score of cfsg_clip: the net's, ``fused`` (computed from ova and glmcm at evaluation),
#: and ``msp`` / ``energy`` of the closed logits (as for any USB algorithm); see :mod:`usb_cfsg.unknown_scores`
OOD_SCORES = score_names("cfsg_clip")


@NET_HEADS.register("cfsg")
class CFSGNet(ZeroShotMixin, nn.Module):
    """Coarse (SFM) and fine (VSI) guidance branches and a one-vs-all head on a CLIP ViT.

    Args:
        backbone: The split CLIP vision tower.
        text: Seen-class text embeddings (CLIP text tower, or MiniLM + learned projection).
        num_classes: K.
        use_sfm: Filter patches with the semantic filtering module (else: all patches, mean-pooled).
        use_vsi: Inject category cue tokens into the fine branch (else: re-run on kept patches only).
        sfm_keep_ratio: ρ, fraction of patches kept.
        sfm_temperature: τ_f of the patch-class affinity softmax.
        sfm_posterior_scale: s of the SFM's class posterior softmax(s·cos(g, t)) (CLIP's 100).
        sfm_local_weight: λ_f, weight of the local feature in the coarse feature.
        sfm_dense: Patch features for the affinity: ``value`` (last block's value path, MaskCLIP),
            ``glmcm`` (the value path plus the block's residual and MLP, GL-MCM's local features) or
            ``tokens`` (the final patch tokens); see :meth:`ClipBackbone.dense_features`.
        sfm_relevance: Axis of the SFM's affinity softmax, ``patches`` or ``classes``
            (:class:`~usb_cfsg.modules.semantic_filter.SemanticFilter`'s ``relevance``).
        sfm_scales: ``fixed`` (``sfm_posterior_scale`` and ``sfm_temperature``) or ``clip``: the CLIP
            checkpoint's own logit scale s as the posterior scale and 1/s as the patch temperature
            (``clip_logit_scale``; kept in the net's state, so a rebuilt net gets the trained run's value).
        sfm_oracle: Control of the kept patches (:mod:`usb_cfsg.nets.oracle`): ``none`` (the SFM's own
            choice), ``mark``, ``random`` or ``anti``; needs ``input_mean``/``input_std``.
        vsi_topk: k, number of cue tokens (top-k coarse classes).
        vsi_cues: Visual part of the cue tokens: ``prototypes`` / ``labeled`` (the class prototypes; which
            samples update them is the algorithm's business) or ``own`` (the image's own local feature).
        vsi_inject: Where the cues enter the fine branch: ``input`` (appended to the tokens of its first
            block) or ``deep`` (VPT-deep / MaPLe: every tuned block gets its own cue tokens, each block's
            projection of the same class pairs, replacing the previous block's outputs at those positions).
        fine_blocks: The fine branch's blocks: ``shared`` (the tuned blocks of the coarse branch),
            ``separate`` (a trainable copy of them, made at construction from the pretrained weights) or
            ``frozen`` (a frozen copy: only the cues, heads and OVA head learn from the fine losses, as
            prompts into a frozen encoder).
        clip_logit_scale: The CLIP checkpoint's exp(logit_scale) (given by the builder).
        input_mean: Input normalisation mean (the oracle undoes it to find the mark's colour).
        input_std: Input normalisation std.
        proto_momentum: EMA momentum of the class prototypes.
        closed_head: ``ensemble`` ((coarse + fine) / 2) or ``fine``.
        sfm_filter: How the SFM's selection reaches the fine branch: ``hard`` (the patches of
            ``fine_tokens``) or ``soft`` ("highlight": every patch, with an attention bias
            ``log(N * r_i)`` towards patch i in every tuned block of the fine branch, so relevant patches
            weigh more, none is dropped, and the fine loss trains the relevance through the bias).
        fine_tokens: Patch tokens the fine branch re-runs on with the SFM: ``kept`` (the SFM's kept
            patches only) or ``all`` (every patch; the SFM then shapes the coarse feature, the VSI
            cues and, through them, the fine branch, but hides no patch from it).
        mcm_temperature: T of the MCM / GL-MCM softmax over cosine similarities (1, as both papers).
        glmcm_local: Local features of the GL-MCM score: ``glmcm`` (as GL-MCM's code, default) or
            ``value`` (MaskCLIP's value path alone, this project's earlier choice).
        ova_bias: Whether the OVA head's linear layer has a bias (False, as OpenMatch).
        zs_weight: α of the closed prediction ``(1 - α) * trained + α * zero-shot`` (README "Keeping the
            zero-shot classifier", :mod:`usb_cfsg.nets.zero_shot`): the zero-shot logits come from a frozen
            copy of the tuned blocks as they are at construction (the pretrained weights) and the class text
            embeddings; 0 builds no copy.
        zs_mode: ``output`` (ensemble of logits) or ``weights`` (WiSE-FT weight-space merge for prediction).
        logit_scale: Scale of the cosine classifiers (and of the zero-shot logits).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        text: ClassTextEmbeddings,
        num_classes: int,
        *,
        use_sfm: bool = True,
        use_vsi: bool = True,
        sfm_keep_ratio: float = 0.25,
        sfm_temperature: float = 0.07,
        sfm_posterior_scale: float = DEFAULT_SFM_LOGIT_SCALE,
        sfm_local_weight: float = 1.0,
        sfm_dense: Literal["value", "glmcm", "tokens"] = "glmcm",
        sfm_relevance: str = "patches",
        sfm_scales: str = "fixed",
        sfm_oracle: str = "none",
        vsi_topk: int = 3,
        vsi_cues: str = "prototypes",
        vsi_inject: str = "input",
        fine_blocks: str = "shared",
        clip_logit_scale: float | None = None,
        input_mean: tuple | None = None,
        input_std: tuple | None = None,
        proto_momentum: float = 0.99,
        closed_head: Literal["ensemble", "fine"] = "ensemble",
        fine_tokens: Literal["kept", "all"] = "kept",
        sfm_filter: str = "hard",
        mcm_temperature: float = DEFAULT_MCM_TEMPERATURE,
        glmcm_local: DenseKind = "glmcm",
        ova_bias: bool = False,
        zs_weight: float = 0.0,
        zs_mode: str = "output",
        logit_scale: float = 30.0,
        **unused: Any,
    ) -> None:
        super().__init__()
        if sfm_dense not in DENSE_KINDS + ("tokens",):
            raise ConfigError(f"sfm_dense must be one of {', '.join(DENSE_KINDS)}, tokens; got {sfm_dense!r}")
        if glmcm_local not in DENSE_KINDS:
            raise ConfigError(f"glmcm_local must be one of {', '.join(DENSE_KINDS)}, got {glmcm_local!r}")
        if closed_head not in ("ensemble", "fine"):
            raise ConfigError(f"closed_head must be ensemble or fine, got {closed_head!r}")
        if fine_tokens not in ("kept", "all"):
            raise ConfigError(f"fine_tokens must be kept or all, got {fine_tokens!r}")
        self.fine_tokens = fine_tokens
        if sfm_scales not in ("fixed", "clip"):
            raise ConfigError(f"sfm_scales must be fixed or clip, got {sfm_scales!r}")
        if sfm_oracle not in ORACLE_MODES:
            raise ConfigError(f"sfm_oracle must be one of {', '.join(ORACLE_MODES)}, got {sfm_oracle!r}")
        if sfm_oracle != "none" and (input_mean is None or input_std is None or sfm_dense == "tokens" or not use_sfm):
            raise ConfigError(
                "sfm_oracle needs the SFM on value-path features (use_sfm: true, sfm_dense: glmcm or value) and the "
                "input normalisation (cfsg_clip passes it)"
            )
        if vsi_cues not in ("prototypes", "labeled", "own"):
            raise ConfigError(f"vsi_cues must be prototypes, labeled or own, got {vsi_cues!r}")
        if sfm_filter not in ("hard", "soft"):
            raise ConfigError(f"sfm_filter must be hard or soft, got {sfm_filter!r}")
        if sfm_filter == "soft" and (sfm_oracle != "none" or not use_sfm):
            raise ConfigError(
                "sfm_filter: soft biases attention by the SFM's relevance: it needs use_sfm and no sfm_oracle"
            )
        if vsi_inject not in VSI_INJECT:
            raise ConfigError(f"vsi_inject must be one of {', '.join(VSI_INJECT)}, got {vsi_inject!r}")
        if vsi_inject == "deep" and not use_vsi:
            raise ConfigError("vsi_inject: deep injects the VSI cues into every tuned block: it needs use_vsi: true")
        if fine_blocks not in FINE_BLOCKS:
            raise ConfigError(f"fine_blocks must be one of {', '.join(FINE_BLOCKS)}, got {fine_blocks!r}")
        if fine_blocks == "separate" and zs_mode == "weights":
            raise ConfigError(
                "zs_mode: weights merges the shared tuned blocks only, not fine_blocks: separate's copy; "
                "use zs_mode: output (or fine_blocks: shared)"
            )
        self.sfm_oracle, self.vsi_cues, self.sfm_filter = sfm_oracle, vsi_cues, sfm_filter
        self.vsi_inject, self.fine_blocks = vsi_inject, fine_blocks
        self.input_mean, self.input_std = input_mean, input_std
        if not 0.0 < sfm_keep_ratio <= 1.0:
            raise ConfigError(f"sfm_keep_ratio must be in (0, 1], got {sfm_keep_ratio}")
        if not mcm_temperature > 0:
            raise ConfigError(f"mcm_temperature must be positive, got {mcm_temperature} (MCM/GL-MCM use 1.0)")
        if not sfm_posterior_scale > 0:
            raise ConfigError(f"sfm_posterior_scale must be positive, got {sfm_posterior_scale} (CLIP's is 100)")
        backbone.check_value_path()  # value-path dense features feed GL-MCM (and the SFM with sfm_dense: value)
        self.backbone = backbone
        self.text = text
        self.num_classes = num_classes
        self.use_sfm, self.use_vsi = bool(use_sfm), bool(use_vsi)
        self.sfm_dense, self.closed_head = sfm_dense, closed_head
        self.glmcm_local: DenseKind = glmcm_local
        self.mcm_temperature = float(mcm_temperature)
        dim, width = backbone.joint_dim, backbone.width
        with torch.no_grad():
            t0 = text()
        if t0.shape[0] != num_classes:
            raise ConfigError(f"got {t0.shape[0]} class names for num_classes={num_classes}")
        self.sfm = SemanticFilter(
            keep_ratio=sfm_keep_ratio,
            temperature=sfm_temperature,
            logit_scale=sfm_posterior_scale,
            local_weight=sfm_local_weight,
            relevance=sfm_relevance,
        )
        if sfm_scales == "clip":  # a buffer: eval.py / predict.py rebuild the net without the CLIP weights
            if clip_logit_scale is None or not clip_logit_scale > 0:
                raise ConfigError(
                    "sfm_scales: clip needs the CLIP checkpoint's logit scale, which this net did not get"
                )
            self.register_buffer("sfm_clip_scale", torch.tensor(float(clip_logit_scale)))
        self.coarse_head = CosineClassifier.from_text(t0, scale=logit_scale)
        self.fine_head = CosineClassifier.from_text(t0, scale=logit_scale)
        self.prototypes = ClassPrototypes(num_classes, dim, momentum=proto_momentum)
        self.vsi = VisualSemanticInjection(
            dim, width, topk=vsi_topk, depth=backbone.num_tuned_blocks if vsi_inject == "deep" else 1
        )
        if fine_blocks != "shared":  # copied before any training: the pretrained tuned blocks
            self.fine_backbone = backbone.tuned_copy(frozen=fine_blocks == "frozen")
        self.ova = OVAHead(dim, num_classes, bias=bool(ova_bias))
        self.num_features = dim
        self.logit_scale = float(logit_scale)
        self.zero_shot = build_prior(backbone, text, zs_weight, zs_mode, logit_scale)
        self.zs_weight = float(zs_weight)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        upgrade_legacy_prior_keys(state_dict, prefix)  # checkpoints of the previous release (zs_tail, zs_text)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def text_embeddings(self) -> torch.Tensor:
        """Seen-class text embeddings t [K, D] (normalised)."""
        return self.text()

    def _coarse(self, g: torch.Tensor, p: torch.Tensor, dense: torch.Tensor, t: torch.Tensor) -> Dict[str, Any]:
        if self.use_sfm:
            s = self.sfm(g, p, t, affinity_feat=p if self.sfm_dense == "tokens" else dense)
            return dict(coarse=s.coarse, local=s.local, relevance=s.relevance, keep_idx=s.keep_idx)
        B, N, _ = p.shape
        keep = torch.arange(N, device=p.device).expand(B, N)
        local = p.mean(dim=1)
        return dict(
            coarse=F.normalize(g, dim=-1),
            local=local,
            relevance=torch.full((B, N), 1.0 / N, device=p.device),
            keep_idx=keep,
        )

    def _sync_sfm_scales(self) -> None:
        if hasattr(self, "sfm_clip_scale"):  # sfm_scales: clip (the buffer may come from a checkpoint)
            scale = float(cast(torch.Tensor, self.sfm_clip_scale))
            self.sfm.logit_scale, self.sfm.temperature = scale, 1.0 / scale

    def _coarse_branch(
        self, h: torch.Tensor, t: torch.Tensor, mark: torch.Tensor | None = None
    ) -> Dict[str, torch.Tensor]:
        """The coarse branch on trunk tokens H [B, 1 + N, W] with text embeddings t [K, D].

        Returns ``g`` (global feature), ``coarse``, ``local``, ``relevance``, ``keep_idx``,
        ``logits_coarse`` and ``glmcm_local`` (GL-MCM's local features of the patches, no gradient).
        Every operation is per image, so running it on a part of the batch gives those rows' values.
        """
        bb = self.backbone
        # The last block's keys and values are computed once; its values also give the value-path
        # dense features. Its output is computed only for the tokens that are used (same values as
        # running it on all tokens): with the SFM on value-path features, the class token and the
        # kept patches; otherwise (sfm_dense: tokens, use_sfm: false) every token.
        state = bb.last_block_state(bb.tuned_until_last(h))
        # dense features of the SFM's affinity (sfm_dense) and GL-MCM's local features (glmcm_local):
        # computed once when both are the same kind
        dense = bb.state_dense_features(state, self.glmcm_local if self.sfm_dense == "tokens" else self.sfm_dense)
        dense = dense[:, 1:]
        t = t.to(dense.dtype)
        if self.use_sfm and self.sfm_dense != "tokens":
            g = bb.project(bb.last_block_queries(state))[:, 0]
            _, _, relevance, keep_idx, _ = self.sfm.select(g, dense, t)
            if mark is not None:  # sfm_oracle: the control's kept patches instead of the SFM's
                keep_idx = oracle_keep(self.sfm_oracle, relevance, mark, keep_idx.shape[1])
            local, coarse = self.sfm.pool(
                g, bb.project(bb.last_block_queries(state, keep_idx + 1)), relevance, keep_idx
            )
            c = dict(coarse=coarse, local=local, relevance=relevance, keep_idx=keep_idx)
        else:
            everything = torch.arange(state.x.shape[1], device=h.device).expand(h.shape[0], -1)
            z = bb.project(bb.last_block_queries(state, everything))
            g, p = z[:, 0], z[:, 1:]
            c = self._coarse(g, p, dense, t)
        with torch.no_grad():
            local_feat = dense
            if self.sfm_dense not in ("tokens", self.glmcm_local):
                local_feat = bb.state_dense_features(state, self.glmcm_local)[:, 1:]
        return dict(g=g, logits_coarse=self.coarse_head(c["coarse"]), glmcm_local=local_feat, **c)

    def forward(
        self,
        x: torch.Tensor,
        only_fc: bool = False,
        only_feat: bool = False,
        zs_skip: int = 0,
        zs_stop: int | None = None,
        coarse_grad_rows: int | None = None,
        **kwargs: Any,
    ):
        """USB contract plus CFSG outputs.

        Args:
            x: Images [B, 3, H, W]; with ``only_fc``, fine features [B, D].
            only_fc: Return the fine classifier's logits of the features ``x``.
            only_feat: Return the fine feature z_f [B, D].
            zs_skip: With a zero-shot prior, the first ``zs_skip`` images need no zero-shot logits
                (cfsg_clip's labeled images: their losses use the coarse and fine heads alone), so
                their zero-shot forward is skipped (:meth:`ZeroShotMixin.with_prior`).
            zs_stop: Nor do the images from ``zs_stop`` on (None: every image after ``zs_skip`` gets
                zero-shot logits). When given, the output also holds the trunk tokens ``tokens``
                [B, 1 + N, W], so that the caller can run the prior on some of those images later
                (:meth:`ZeroShotPrior.logits`; cfsg_clip: the strong views its FixMatch term selects).
            coarse_grad_rows: Only the first ``coarse_grad_rows`` images need gradients through the
                coarse branch (None: all). The others' coarse branch runs without autograd: the
                same values, no activations kept for backward and no backward pass. For images
                whose coarse outputs reach the losses only through no-gradient uses (cfsg_clip's
                weak views: pseudo-labels, prototypes, the VSI's top-k classes and the fine
                branch's kept patches, which are indices), the gradients are those of the full
                computation.

        Returns:
            Dict with ``logits`` (closed-set prediction) [B, K], ``feat`` (z_f) [B, D],
            ``logits_coarse``, ``logits_fine`` [B, K], ``logits_ova`` [B, 2, K], ``feat_local`` [B, D],
            ``feat_global`` [B, D], ``relevance`` [B, N] (a distribution over patches),
            ``keep_idx`` [B, n_keep], and unknown scores ``score_ova``, ``score_mcm``,
            ``score_glmcm`` [B] (higher = more unknown; see :data:`NET_SCORES`). ``glmcm`` is GL-MCM
            as its authors compute it: the global MCM plus the largest MCM over the local features
            of all N patches (:meth:`ClipBackbone.dense_features` of kind ``glmcm_local``), both at
            ``mcm_temperature``.
        """
        if only_fc:
            return self.fine_head(x)
        bb = self.backbone
        self._sync_sfm_scales()
        mark = None
        if self.sfm_oracle != "none" and self.input_mean is not None and self.input_std is not None:
            patch: Any = bb.visual.patch_size
            mark = mark_patches(
                x, int(patch[0] if isinstance(patch, tuple) else patch), self.input_mean, self.input_std
            )
        h = bb.trunk(x)
        t = self.text()
        n = h.shape[0] if coarse_grad_rows is None else min(max(int(coarse_grad_rows), 0), h.shape[0])
        if n == h.shape[0] or not torch.is_grad_enabled():
            c = self._coarse_branch(h, t, mark)
        else:
            parts = [self._coarse_branch(h[:n], t, None if mark is None else mark[:n])] if n > 0 else []
            with torch.no_grad():
                parts.append(self._coarse_branch(h[n:], t, None if mark is None else mark[n:]))
            c = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        g, logits_coarse = c["g"], c["logits_coarse"]
        t = t.to(c["glmcm_local"].dtype)

        fb = self.fine_backbone if self.fine_blocks != "shared" else bb
        fine_in = [h[:, :1]]
        key_bias = None
        prompts: tuple = ()
        if self.sfm_filter == "soft":  # every patch, attention biased towards the relevant ones
            r = c["relevance"]
            key_bias = torch.log((r * r.shape[1]).clamp_min(SOFT_FILTER_FLOOR))
            key_bias = F.pad(key_bias, (1, self.vsi.topk if self.use_vsi else 0))  # class token and cues: 0
            fine_in.append(h[:, 1:])
        elif self.use_sfm and self.fine_tokens == "kept":
            fine_in.append(gather_tokens(h[:, 1:], c["keep_idx"]))
        else:
            fine_in.append(h[:, 1:])
        if self.use_vsi:
            protos = self.prototypes.get(fallback=t.detach().float()).to(h.dtype)
            own = c["local"].detach() if self.vsi_cues == "own" else None
            if self.vsi_inject == "deep":  # the pairs once, for the first block's cues and the later blocks'
                pairs, _ = self.vsi.cue_pairs(logits_coarse, protos, t.to(h.dtype), own=own)
                cues = self.vsi.tokens(pairs)
                prompts = self.vsi.deep_cues(pairs)
            else:  # the module's forward: what compile: true compiles (engine.device.compile_targets)
                cues = self.vsi(logits_coarse, protos, t.to(h.dtype), own=own).cues
            fine_in.append(cues.to(h.dtype))
        tokens_in = torch.cat(fine_in, dim=1)
        if key_bias is not None:
            key_bias = key_bias[:, : tokens_in.shape[1]]
        fine_state = fb.last_block_state(fb.tuned_until_last(tokens_in, key_bias, prompts))
        z_f = fb.project(fb.last_block_queries(fine_state, key_bias=key_bias))[:, 0]  # only the class token is used
        if only_feat:
            return z_f
        logits_fine = self.fine_head(z_f)
        logits = self.trained_logits({"logits_coarse": logits_coarse, "logits_fine": logits_fine})
        extra: Dict[str, torch.Tensor] = {}
        logits, logits_zs = self.with_prior(logits, h, zs_skip, need_zs=True, stop=zs_stop)  # pseudo-labels use them
        if logits_zs is not None:
            extra["logits_zs"] = logits_zs
        if zs_stop is not None:
            extra["tokens"] = h
        logits_ova = self.ova(z_f)
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            s_ova = ova_unknown_score(logits_ova.float(), pred)
            s_mcm = mcm_score(g.float(), t.float(), self.mcm_temperature)
            s_glmcm = glmcm_score(g.float(), c["glmcm_local"].float(), t.float(), self.mcm_temperature)
        return {
            **extra,
            "logits": logits,
            "feat": z_f,
            "logits_coarse": logits_coarse,
            "logits_fine": logits_fine,
            "logits_ova": logits_ova,
            "feat_local": c["local"],
            "feat_global": g,
            "relevance": c["relevance"],
            "keep_idx": c["keep_idx"],
            "score_ova": s_ova,
            "score_mcm": s_mcm,
            "score_glmcm": s_glmcm,
        }

    def trained_logits(self, out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The closed prediction of the trained heads alone (no zero-shot prior) from a forward's outputs.

        ``logits_fine`` with ``closed_head: fine``, else ``(logits_coarse + logits_fine) / 2``: the
        ``logits`` of the same forward when ``zs_weight`` is 0 or ``zs_mode`` is ``weights``.
        """
        if self.closed_head == "fine":
            return out["logits_fine"]
        return (out["logits_coarse"] + out["logits_fine"]) / 2

    def group_matcher(self, coarse: bool = False, prefix: str = "") -> dict:
        return self.backbone.group_matcher(coarse, prefix=f"{prefix}backbone.")

    def no_weight_decay(self) -> set:
        """Parameters USB's optimizer builder keeps out of weight decay (besides biases and 1-d ones).

        The cosine heads' weights are normalised in every forward pass, so their norm never reaches
        the logits: weight decay would only shrink them, which raises the effective learning rate
        of their direction as training goes on. The type embedding is an embedding (as ViT's).
        """
        return self.backbone.no_weight_decay(prefix="backbone.") | {
            "vsi.type_embedding",
            "coarse_head.weight",
            "fine_head.weight",
        }
