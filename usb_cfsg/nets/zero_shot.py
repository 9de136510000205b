"""The pretrained CLIP's zero-shot classifier kept beside a fine-tuned CLIP net (WiSE-FT), for every head.

Fine-tuning moves CLIP away from its zero-shot classifier; keeping that classifier and ensembling it
with the trained one is WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR
2022). :class:`ZeroShotPrior` is that classifier as a module that any of our CLIP nets carries
(``ClipNet`` and its subclasses for USB's algorithms, ``openmatch`` and ``iomatch``; ``CFSGNet``), so
every algorithm can have the same prior (config keys ``zs_weight`` α and ``zs_mode``):

* ``zs_mode: output`` — the output-space ensemble: closed logits
  ``(1 - α) * trained + α * zero-shot``, the zero-shot logits coming from a frozen copy of the
  pretrained tuned blocks (plus ``ln_post``/``proj``) run on the same frozen-trunk tokens H, against
  the class text embeddings of construction time, on the trained cosine heads' scale (30). Costs one
  more pass through the last m blocks (for the class token only) per image.
* ``zs_mode: weights`` — WiSE-FT proper: training is plain fine-tuning (``logits`` are the trained
  head's; for USB's algorithms the frozen copy does not even run), and for prediction (every
  evaluation, ``eval.py``, ``predict.py``) the net is replaced by a copy whose tuned blocks,
  ``ln_post``, ``proj`` and cosine heads are ``(1 - α) * θ_trained + α * θ_zero-shot``
  (:meth:`ZeroShotPrior.merge_into`), with no frozen copy and no extra forward. ``cfsg_clip`` still
  takes its pseudo-labels from the output ensemble (the net returns ``logits_zs`` for them).

With ``zs_mode: output`` every loss of a USB algorithm sees the ensembled ``logits`` (its trained head
learns a correction to the zero-shot classifier, so it is no classifier on its own: the weight-space
merge of such a head is meaningless, which is why ``weights`` trains without the ensemble);
``cfsg_clip``'s labeled CE terms use its coarse and fine heads alone.
``only_fc`` calls (features in, logits out) return the trained head's logits: without the trunk's
tokens there is no zero-shot forward.
"""

from __future__ import annotations

from typing import Iterable, Tuple, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..modules.cosine_classifier import CosineClassifier
from .backbone import ClipBackbone

ZS_MODES: Tuple[str, ...] = ("output", "weights")


class ZeroShotPrior(nn.Module):
    """A frozen copy of a CLIP net's pretrained tuned blocks and its class text embeddings.

    Args:
        backbone: The net's split vision tower, still holding the pretrained weights (the copy is
            taken now, at construction).
        text: The seen classes' text embeddings [K, D] at construction (the zero-shot classifier).
        weight: α in (0, 1].
        mode: ``output`` or ``weights`` (:data:`ZS_MODES`).
        scale: Scale of the zero-shot logits: the trained cosine heads' (30), so that both terms of
            the ensemble are on one scale.
    """

    def __init__(self, backbone: ClipBackbone, text: torch.Tensor, weight: float, mode: str, scale: float) -> None:
        super().__init__()
        if not 0.0 < weight <= 1.0:
            raise ConfigError(f"zs_weight must be in (0, 1] to keep a zero-shot prior, got {weight}")
        if mode not in ZS_MODES:
            raise ConfigError(f"zs_mode must be one of {', '.join(ZS_MODES)}, got {mode!r}")
        self.weight, self.mode, self.scale = float(weight), mode, float(scale)
        self.tail = backbone.tuned_copy(frozen=True)
        self.register_buffer("text", F.normalize(text.detach().float(), dim=-1).clone())

    @torch.no_grad()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``scale * cos(g0, t0)`` [B, K] (float32, no gradient) of trunk tokens H [B, 1 + N, W]."""
        tail = self.tail
        g0 = tail.project(tail.last_block_queries(tail.last_block_state(tail.tuned_until_last(h))))[:, 0]
        return self.scale * F.normalize(g0.float(), dim=-1) @ self.get_buffer("text").t()

    def mix(self, trained: torch.Tensor, zero_shot: torch.Tensor) -> torch.Tensor:
        """``(1 - α) * trained + α * zero_shot`` in the trained logits' dtype."""
        return (1.0 - self.weight) * trained + self.weight * zero_shot.to(trained.dtype)

    @torch.no_grad()
    def merge_into(self, backbone: ClipBackbone, heads: Iterable[nn.Module]) -> None:
        """WiSE-FT in weight space, in place: ``θ <- (1 - α) θ + α θ_zero-shot``.

        The tuned blocks, ``ln_post`` and ``proj`` of ``backbone`` move towards the frozen copy's
        (pretrained) values; each cosine head's weight towards the text embeddings it was
        initialised from (rows normalised first, as the heads use them). Other trained parts (OVA
        heads, projections, VSI) have no zero-shot counterpart and stay as trained.

        Args:
            backbone: The net's tower (the trained values).
            heads: The net's text-initialised cosine classifiers (``weight`` [K, D]).
        """
        a = self.weight
        mine = dict(_tuned_parameters(backbone))
        theirs = dict(_tuned_parameters(self.tail))
        if mine.keys() != theirs.keys():
            raise RuntimeError(f"zero-shot copy and net differ: {sorted(set(mine) ^ set(theirs))[:5]}")
        for name, p in mine.items():
            p.mul_(1.0 - a).add_(theirs[name].to(p.dtype), alpha=a)
        text = self.get_buffer("text")
        for head in heads:
            w = cast(torch.Tensor, head.weight)
            w.copy_((1.0 - a) * F.normalize(w, dim=-1) + a * text.to(w.dtype))


def _tuned_parameters(backbone: ClipBackbone) -> Iterable[Tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the tuned blocks, ``ln_post`` and ``proj``, named alike in net and copy."""
    for i, block in enumerate(backbone.tuned_blocks):
        for name, p in block.named_parameters():
            yield f"block{i}.{name}", p
    for name, p in backbone.visual.ln_post.named_parameters():
        yield f"ln_post.{name}", p
    yield "proj", cast(nn.Parameter, backbone.visual.proj)


def build_prior(
    backbone: ClipBackbone, text: nn.Module, weight: float, mode: str, scale: float
) -> ZeroShotPrior | None:
    """The prior for ``zs_weight`` α (None for α = 0), refused where there is no zero-shot classifier.

    Args:
        backbone: The net's tower, pretrained weights still in place.
        text: The net's :class:`~usb_cfsg.nets.text.ClassTextEmbeddings`.
        weight: α in [0, 1].
        mode: ``output`` or ``weights``.
        scale: The trained heads' logit scale.

    Raises:
        ConfigError: α out of range, an unknown mode, or text embeddings that do not come from
            CLIP's own text tower (MiniLM through a random projection: no zero-shot classifier).
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"zs_weight must be in [0, 1], got {weight} (0 = no zero-shot prior)")
    if mode not in ZS_MODES:
        raise ConfigError(f"zs_mode must be one of {', '.join(ZS_MODES)}, got {mode!r}")
    if weight == 0:
        return None
    if getattr(text, "proj", None) is not None:
        raise ConfigError(
            f"zs_weight {weight} keeps CLIP's zero-shot classifier, which needs CLIP's own text tower; "
            "with text_encoder: minilm the class embeddings pass a randomly initialised projection, so "
            "there is no zero-shot classifier to keep: set zs_weight: 0 or text_encoder: clip"
        )
    with torch.no_grad():
        t0 = text()
    return ZeroShotPrior(backbone, t0, weight, mode, scale)


class ZeroShotMixin:
    """What a CLIP net with an optional :class:`ZeroShotPrior` shares (``ClipNet``, ``CFSGNet``).

    The net sets ``self.zero_shot`` (``build_prior(...)``, None without a prior); its forward passes the
    trained closed logits through :meth:`with_prior`.
    """

    zero_shot: ZeroShotPrior | None
    backbone: ClipBackbone

    def zero_shot_heads(self) -> list:
        """The cosine classifiers that WiSE-FT's weight-space merge interpolates: every one the net holds.

        Our CLIP nets build each of them from the class text embeddings (``ClipNet.classifier``,
        ``CFSGNet.coarse_head`` / ``fine_head``); the prior's frozen copy holds none.
        """
        return [m for m in cast(nn.Module, self).modules() if isinstance(m, CosineClassifier)]

    def with_prior(
        self, logits: torch.Tensor, h: torch.Tensor, skip: int = 0, need_zs: bool = False, stop: int | None = None
    ) -> Tuple[torch.Tensor, torch.Tensor | None]:
        """``(closed logits, zero-shot logits or None)`` of a net with or without a prior.

        ``zs_mode: output``: the closed logits are the ensemble ``(1 - α) trained + α zero-shot``.
        ``zs_mode: weights`` (WiSE-FT): the closed logits stay the trained ones (training is plain
        fine-tuning; prediction merges the weights, :meth:`for_prediction`), and the zero-shot logits
        are computed only when ``need_zs`` (cfsg_clip's pseudo-labels).

        Args:
            logits: The trained closed logits [B, K].
            h: The frozen trunk's tokens of the same images [B, 1 + N, W].
            skip: The first ``skip`` rows need no zero-shot logits (e.g. labeled images whose losses
                use the trained heads alone): their zero-shot forward is not run, their ``logits``
                stay the trained ones and their zero-shot logits are NaN.
            need_zs: With ``zs_mode: weights``, compute the zero-shot logits anyway.
            stop: Nor do the rows from ``stop`` on (None: B): the zero-shot forward runs on rows
                ``skip:stop`` only.
        """
        prior = self.zero_shot
        if prior is None:
            return logits, None
        B = logits.shape[0]
        stop = B if stop is None else stop
        if not 0 <= skip <= stop <= B:
            raise ValueError(f"need 0 <= skip <= stop <= {B}, got skip {skip}, stop {stop}")
        if prior.mode == "weights" and not need_zs:
            return logits, None
        zs_rows = prior.logits(h[skip:stop])
        if skip == 0 and stop == B:
            zs = zs_rows
        else:
            nan = zs_rows.new_full((B, zs_rows.shape[1]), float("nan"))
            zs = torch.cat([nan[:skip], zs_rows, nan[stop:]])
        if prior.mode == "weights":
            return logits, zs
        if skip == 0 and stop == B:
            return prior.mix(logits, zs), zs
        return torch.cat([logits[:skip], prior.mix(logits[skip:stop], zs_rows), logits[stop:]]), zs

    def for_prediction(self) -> nn.Module:
        """The network to predict with: with ``zs_mode: weights`` a merged copy without the prior, else itself.

        The copy (:meth:`ZeroShotPrior.merge_into`) is a plain network: no frozen copy, no extra
        forward. The original net (and its checkpoint) keeps the prior, so training can go on.
        """
        if self.zero_shot is None or self.zero_shot.mode != "weights":
            return self  # type: ignore[return-value]
        import copy

        merged = copy.deepcopy(self)
        prior = merged.zero_shot
        merged.zero_shot = None
        assert prior is not None
        prior.merge_into(merged.backbone, merged.zero_shot_heads())
        return merged  # type: ignore[return-value]


def upgrade_legacy_prior_keys(state_dict: dict, prefix: str) -> None:
    """Rename the zero-shot keys of checkpoints written before :class:`ZeroShotPrior` (``zs_tail.*``, ``zs_text``)."""
    for key in [k for k in state_dict if k.startswith(prefix + "zs_tail.") or k == prefix + "zs_text"]:
        rest = key[len(prefix) :]
        new = "zero_shot.tail." + rest[len("zs_tail.") :] if rest.startswith("zs_tail.") else "zero_shot.text"
        state_dict[prefix + new] = state_dict.pop(key)
