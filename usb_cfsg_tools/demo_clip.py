"""The demo CLIP: an offline stand-in for a pretrained CLIP, trained here on part of Fashion-MNIST.

No pretrained CLIP weights can be downloaded on our machines, and a randomly initialised CLIP has no
image-text alignment at all, so nothing CFSG-CLIP builds on (MCM, GL-MCM, the SFM's patch-text
affinity, text-initialised heads) can be shown with it. This module trains the ``clip_tiny``
architecture (width 128, 4 visual blocks, patch 16; a 2-block text tower) *contrastively*, both
towers, on a fixed pretraining pool of Fashion-MNIST **training** images, with captions built from
all ten class names and five templates. It is a toy-scale stand-in for a pretrained CLIP, not CLIP:
its "web" is 30,000 clothing pictures and 50 captions.

It plays the role a web-pretrained CLIP plays for CUB: it has seen images of every class, the
ones the open-set split later calls unseen included, together with their names. The open-set SSL
data must then come from the *other* training images: a config naming the card
(``pretrain_pool: <dir>/card.json``) makes ``fmnist_openset`` drop the pool from its training set.

Recipe (what ``build_demo_clip`` does):

* Pool: a class-stratified, seeded half of the 60,000 training images (3,000 per class).
* Images as the demo sees them: the 28 px image resized (PIL bilinear) to ``floor(64 / 0.875) = 73``
  px once, then per step a random 64 px crop and a random horizontal flip (the demo's weak view),
  normalised with CLIP's mean/std. Evaluation uses the demo's eval transform (resize, center crop).
  Training runs at the demo's ``img_size`` 64 (a 4 x 4 patch grid), so no positional-embedding
  resizing happens when the demo loads the weights.
* Captions: every class name in five templates (50 captions). Each step encodes the 50 distinct
  captions once (not once per image), through a copy of only the token-embedding rows they use
  (written back into the full table at the end) and a context cut to the longest caption, which is
  exact for CLIP's causal text transformer and saves AdamW from updating 3.2 M unused rows.
* Loss: InfoNCE in both directions with soft targets: an image's positives are the five captions of
  its class; a caption's positives are the batch's images of its class. The logit scale is fixed at
  5 (``--logit-scale``, ``--learn-logit-scale``): with CLIP's learned scale (init 1/0.07) the loss is
  satisfied by small cosine margins, and MCM, which reads raw cosines at T = 1, suffers (measured
  below). A small fixed scale keeps pushing the classes' embeddings apart.
* AdamW (betas 0.9/0.98, eps 1e-6), lr 2e-3, weight decay 0.1 on matrices only, 30 warm-up steps
  then cosine decay; 600 steps of 256 images (about 5 passes over the pool).

Measured (seed 0, test set, MCM over the prompts of classes 0-5 at T = 1, unknown = positive):
default recipe: zero-shot 10-way accuracy 80.12 %, seen 6-way 86.57 %, MCM AUROC 88.38 % (torch 2.14.1,
2 threads; an earlier machine gave 79.7 / 86.3 / 88.8). Time (README, "The demo CLIP"): 138 s on 2 idle
cores; on 2 cores shared with other jobs (load 9) 436 s wall, 197 CPU seconds of training, with OpenMP
threads that sleep while waiting (``OMP_WAIT_POLICY=PASSIVE``, set by ``python -m usb_cfsg_tools.demo_clip``;
the same weights); with spinning threads 1258 s and 698 CPU seconds at load 5-6. Fewer steps cost the
figures: 400 steps gave 77.92 %, 85.3 %, MCM AUROC 83.64 % (1 thread). With CLIP's learned scale instead
(500 steps): 78.2 %, 85.1 %, MCM AUROC 64.4 % (Sneaker images then look like confident Sandals to the six
seen prompts).

Run: ``python -m usb_cfsg_tools.demo_clip --out ./saved_models/demo_clip`` (``make demo`` does this once).
Writes ``<out>/demo_clip_tiny.pt`` (an open_clip state dict: ``pretrain_path`` loads it) and
``<out>/card.json`` (pool indices, recipe, steps, seed, zero-shot figures on the test set, sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if __name__ == "__main__":  # python -m usb_cfsg_tools.demo_clip: before torch loads
    # OpenMP threads sleep instead of spinning while they wait: the same weights (same threads and kernels),
    # 4.9x faster per step on the 2 cores shared with other jobs (README, "The demo CLIP").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from usb_cfsg.datasets.fmnist_badged import DEFAULT_BADGE
from usb_cfsg.datasets.pretrain_pool import CARD_FILE, load_card, pool_indices, without_pretrain_pool  # noqa: F401
from usb_cfsg.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from usb_cfsg.datasets.base import SourceData

logger = logging.getLogger("usb_cfsg")

#: Files written into ``--out``.
WEIGHTS_FILE = "demo_clip_tiny.pt"
CARD_FORMAT = 1
#: The architecture (net name, open_clip name) and the demo's input geometry.
NET = "clip_tiny"
ARCH = "clip-tiny"
DATASET = "fmnist_openset"
#: Five caption templates: the three Fashion-MNIST prompt templates the demo uses, and two more.
CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of a {}, a type of clothing.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of the {}.",
)
#: The demo's seen classes (``class_split: first``, ``num_classes: 6``): MCM uses their prompts.
DEMO_SEEN = 6
#: The scene task (:mod:`usb_cfsg.datasets.fmnist_cluttered`) and the scale of the zero-shot logits
#: whose energy the card reports (the cosine heads' scale, that of cfsg_clip's zero-shot classifier).
SCENE_DATASET = "fmnist_cluttered"
#: The badged task (:mod:`usb_cfsg.datasets.fmnist_badged`): classes differ by a small mark.
BADGE_DATASET = "fmnist_badged"
ENERGY_LOGIT_SCALE = 30.0


@dataclass
class Recipe:
    """How the demo CLIP is trained (all of it goes into the card).

    Attributes:
        steps: Optimiser steps.
        batch_size: Images per step (all 50 captions are encoded every step).
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (matrices only; no decay on gains, biases, embeddings).
        warmup_steps: Linear warm-up steps, then cosine decay to 0.
        pool_fraction: Fraction of each class's training images in the pretraining pool.
        pool_seed: Seed of the pool (fixed, so cards of different training seeds share the pool).
        img_size: Input size (the demo's ``img_size``).
        crop_ratio: The demo's ``crop_ratio``: images are resized to ``floor(img_size / crop_ratio)``.
        templates: Caption templates.
        init_logit_scale: Initial logit scale (CLIP: 1 / 0.07; here 5, see below).
        learn_logit_scale: Whether the logit scale is learned (CLIP) or stays at its initial value
            (here fixed: a small fixed scale keeps pushing the ten classes' embeddings apart, so
            cosines, which MCM reads at T = 1, separate the classes by wide margins).
        max_logit_scale: Cap of the learned logit scale (CLIP: 100).
        images: Pretraining images: ``clean`` (the pool's Fashion-MNIST items, filling the frame) or
            ``scenes`` (the pool's ``fmnist_cluttered`` scenes, clutter from pool images only).
        caption_noise: Share of pool images whose captions name a wrong class (drawn once per image,
            seeded by ``pool_seed``: a fixed noisy caption, as a web caption is).
        task: The dataset the card's zero-shot figures are measured on (its test set) and the card is
            made for: ``fmnist_openset`` or ``fmnist_cluttered`` (the scene recipe).
        scene_size: ``fmnist_cluttered``'s ``scene_size`` (scenes in pretraining or task).
        scene_fragments: ``fmnist_cluttered``'s ``scene_fragments``.
        scene_seed: ``fmnist_cluttered``'s ``scene_seed``.
        pretrain_fragments: Clutter fragments of the pretraining scenes (``images: scenes``); None:
            ``scene_fragments`` (the task's scenes); 0: the item alone at the scenes' places and scales.
        pretrain_clutter: Share of the pretraining scenes that have their clutter (drawn once per pool
            image from ``pool_seed``); the others show the item alone at the same place and scale.
        badge_size: ``fmnist_badged``'s ``badge_size`` (the badged recipe).
        p_fine: Badged recipe: share of pool images whose captions also name the mark ("a photo of a
            coat with a one badge"; drawn once per image from ``pool_seed``); the others name the item
            only, so the CLIP learns the general attribute well and the detail weakly.
    """

    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    pool_fraction: float = 0.5
    pool_seed: int = 0
    img_size: int = 64
    crop_ratio: float = 0.875
    templates: Tuple[str, ...] = field(default=CAPTION_TEMPLATES)
    init_logit_scale: float = 5.0
    learn_logit_scale: bool = False
    max_logit_scale: float = 100.0
    images: str = "clean"
    caption_noise: float = 0.0
    task: str = DATASET
    scene_size: int = 96
    scene_fragments: int = 2  # fmnist_cluttered's default
    scene_seed: int = 0
    pretrain_fragments: Optional[int] = None
    pretrain_clutter: float = 1.0
    badge_size: int = DEFAULT_BADGE
    p_fine: float = 0.0

    def check(self) -> None:
        """Raise ConfigError on values that cannot work."""
        if self.steps < 1 or self.batch_size < 2:
            raise ConfigError(f"steps must be >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if not 0.0 < self.pool_fraction < 1.0:
            raise ConfigError(
                f"pool_fraction must lie in (0, 1) so the demo keeps training images of its own, "
                f"got {self.pool_fraction}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError(
                f"lr must be > 0, weight_decay and warmup_steps >= 0, got {self.lr}, "
                f"{self.weight_decay}, {self.warmup_steps}"
            )
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ConfigError(f"crop_ratio must lie in (0, 1], got {self.crop_ratio}")
        if self.images not in ("clean", "scenes", "badged") or self.task not in (DATASET, SCENE_DATASET, BADGE_DATASET):
            raise ConfigError(
                f"images must be clean, scenes or badged and task {DATASET}, {SCENE_DATASET} or {BADGE_DATASET}, "
                f"got {self.images!r} and {self.task!r}"
            )
        if (self.images == "badged") != (self.task == BADGE_DATASET):
            raise ConfigError(f"images: badged goes with task: {BADGE_DATASET} (the badged recipe), and only with it")
        if not 0.0 <= self.p_fine <= 1.0:
            raise ConfigError(f"p_fine must lie in [0, 1], got {self.p_fine}")
        if not 0.0 <= self.pretrain_clutter <= 1.0:
            raise ConfigError(f"pretrain_clutter must lie in [0, 1], got {self.pretrain_clutter}")
        if not 0.0 <= self.caption_noise < 1.0:
            raise ConfigError(f"caption_noise must lie in [0, 1), got {self.caption_noise}")
        for t in self.templates:
            if "{}" not in t:
                raise ConfigError(f"caption template {t!r} has no '{{}}' for the class name")


# ------------------------------------------------------------------------------------------ pool
def select_pool(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A class-stratified, seeded subset of the training images.

    Args:
        targets: Class of every training image.
        fraction: Fraction of each class's images to take (rounded down, at least one).
        seed: Seed of the choice.

    Returns:
        Sorted int64 indices into the training set.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        take = max(1, int(math.floor(len(idx) * fraction)))
        chosen.append(rng.permutation(idx)[:take])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# -------------------------------------------------------------------------------------- images
def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images [N, H, W] (grayscale) or [N, H, W, 3] (RGB) to side ``size`` as the demo's transforms do.

    (torchvision's ``Resize((size, size))`` on a PIL image: PIL bilinear.)
    """
    from PIL import Image

    out = np.empty((len(images), size, size, *images.shape[3:]), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    return out


def eval_tensors(
    images: np.ndarray, img_size: int, crop_ratio: float, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The demo's eval transform applied to uint8 images (grayscale or RGB): a float tensor [N, 3, S, S]."""
    from usb_cfsg.datasets.images import load_rgb
    from usb_cfsg.datasets.transforms import build_transforms

    evaluate = build_transforms(img_size, crop_ratio, mean, std)[2]
    return torch.stack([evaluate(load_rgb(img)) for img in images])


class BatchAugment:
    """The demo's weak view on a batch: random ``img_size`` crop of pre-resized images, random flip.

    Args:
        resized: uint8 [N, R, R] (grayscale) or [N, R, R, 3] (RGB) images already resized to
            ``floor(img_size / crop_ratio)``.
        img_size: Crop size.
        mean: Per-channel mean (3 values).
        std: Per-channel std (3 values).
    """

    def __init__(self, resized: np.ndarray, img_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(resized))
        self.size = img_size
        self.span = self.images.shape[1] - img_size + 1
        self.scale = (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)

    def __call__(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = len(idx)
        oy = torch.randint(0, self.span, (b,), generator=gen)
        ox = torch.randint(0, self.span, (b,), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        ar = torch.arange(self.size)
        rows = (oy[:, None] + ar)[:, :, None]
        cols = ox[:, None] + torch.where(flip[:, None], ar.flip(0), ar)
        crops = self.images[idx[:, None, None], rows, cols[:, None, :]].float()
        crops = crops.permute(0, 3, 1, 2) if crops.dim() == 4 else crops.unsqueeze(1)
        return crops * self.scale - self.shift


# ------------------------------------------------------------------------------------- captions
class CaptionEncoder(nn.Module):
    """Encodes a fixed set of captions with an open_clip CLIP text tower, cheaply and exactly.

    Holds a trainable copy of only the token-embedding rows the captions use, and cuts the context
    to the longest caption: CLIP's text transformer is causal and pools at the end-of-text token,
    so positions after it never influence the result. :meth:`write_back` copies the trained rows
    into the model's full token-embedding table.

    Args:
        model: An open_clip ``CLIP`` (``text_pool_type`` argmax).
        tokens: Tokenised captions [C, context_length].
    """

    def __init__(self, model: nn.Module, tokens: torch.Tensor) -> None:
        super().__init__()
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ValueError("CaptionEncoder needs an open_clip CLIP with argmax (end-of-text) pooling")
        length = int((tokens != 0).sum(dim=1).max())
        tokens = tokens[:, :length]
        vocab, local = torch.unique(tokens, return_inverse=True)
        self.register_buffer("vocab", vocab)
        self.register_buffer("local", local)
        self.register_buffer("eot", tokens.argmax(dim=-1))
        self.rows = nn.Parameter(model.token_embedding.weight.detach()[vocab].clone())
        self.length = length

    def forward(self, model: nn.Module) -> torch.Tensor:
        """Caption embeddings [C, D] (not normalised), as ``model.encode_text`` would give them."""
        n = self.length
        x = F.embedding(self.local, self.rows) + model.positional_embedding[:n]
        x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), self.eot]
        proj = model.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @torch.no_grad()
    def write_back(self, model: nn.Module) -> None:
        """Copy the trained rows into ``model.token_embedding``."""
        model.token_embedding.weight[self.vocab] = self.rows.detach()


def soft_infonce(
    img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, caption_class: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE in which every same-class caption/image is a positive (soft targets).

    Args:
        img: Normalised image embeddings [B, D].
        txt: Normalised caption embeddings [C, D].
        labels: Class of each image [B].
        caption_class: Class of each caption [C].
        scale: Logit scale (a scalar tensor).

    Returns:
        Mean of the image->caption and caption->image cross-entropies.
    """
    logits = scale * img @ txt.t()  # [B, C]
    pos = (labels[:, None] == caption_class[None, :]).float()
    i2t = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    present = pos.sum(0) > 0  # captions whose class has images in the batch
    t_logp = logits.t()[present].log_softmax(dim=1)
    t_pos = pos.t()[present]
    t2i = -(t_pos / t_pos.sum(1, keepdim=True) * t_logp).sum(1).mean()
    return 0.5 * (i2t + t2i)


# ------------------------------------------------------------------------------------ zero-shot
@torch.no_grad()
def zero_shot_figures(
    model: nn.Module,
    tokenizer: Any,
    images: torch.Tensor,
    targets: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str],
    num_seen: int = DEMO_SEEN,
    temperature: float = 1.0,
    batch_size: int = 1000,
    groups: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """Zero-shot accuracy (all classes, seen classes) and MCM AUROC of a CLIP on preprocessed images.

    MCM uses the prompts of the first ``num_seen`` classes only, temperature ``temperature``; unseen-
    class images are the positives (unknown = positive, as everywhere in this project).

    The energy score is ``-logsumexp(30 * cos(image, t_k))`` over the seen prompts (the scale of
    cfsg_clip's zero-shot classifier, :data:`ENERGY_LOGIT_SCALE`).

    With ``groups`` (per image its unseen group, ``""`` for seen images; the badged task's ``near`` /
    ``far``), both AUROCs are also given per group: seen images against that group's, as
    ``mcm_auroc_<group>`` and ``energy_auroc_<group>``.

    Returns:
        ``{"acc_all": ..., "acc_seen": ..., "mcm_auroc": ..., "energy_auroc": ...}`` in percent.
    """
    from usb_cfsg.evaluation.metrics import auroc
    from usb_cfsg.modules.scores import mcm_score
    from usb_cfsg.nets.text import clip_text_embeddings

    model.eval()
    text = clip_text_embeddings(model, tokenizer, class_names, templates)
    feats = torch.cat(
        [F.normalize(model.encode_image(images[i : i + batch_size]), dim=-1) for i in range(0, len(images), batch_size)]
    )
    targets = np.asarray(targets)
    pred_all = (feats @ text.t()).argmax(1).numpy()
    seen = targets < num_seen
    pred_seen = (feats[torch.from_numpy(seen)] @ text[:num_seen].t()).argmax(1).numpy()
    score = mcm_score(feats, text[:num_seen], temperature).numpy()
    energy = -torch.logsumexp(ENERGY_LOGIT_SCALE * feats @ F.normalize(text[:num_seen], dim=-1).t(), dim=1)
    out = {
        "acc_all": round(100.0 * float((pred_all == targets).mean()), 2),
        "acc_seen": round(100.0 * float((pred_seen == targets[seen]).mean()), 2),
        "mcm_auroc": round(100.0 * auroc(score, ~seen), 2),
        "energy_auroc": round(100.0 * auroc(energy.numpy(), ~seen), 2),
    }
    group_of = np.asarray(list(groups) if groups is not None else [""] * len(targets))
    for group in sorted(set(group_of[~seen].tolist()) - {""}):
        rows = seen | (group_of == group)
        out[f"mcm_auroc_{group}"] = round(100.0 * auroc(score[rows], ~seen[rows]), 2)
        out[f"energy_auroc_{group}"] = round(100.0 * auroc(energy.numpy()[rows], ~seen[rows]), 2)
    return out


# ------------------------------------------------------------------------------------- training
def _lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    t = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _param_groups(model: nn.Module, captions: CaptionEncoder, weight_decay: float) -> List[Dict[str, Any]]:
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name and "class_embedding" not in name else no_decay).append(p)
    no_decay.append(captions.rows)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Progress:
    """A tqdm bar on a terminal; a log line every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, desc: str, every_s: float = 15.0) -> None:
        self.total, self.desc, self.every_s = total, desc, every_s
        self.start = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, step: int, **info: float) -> None:
        text = {k: f"{v:.3g}" for k, v in info.items()}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(text, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s or step == self.total:
            self.last = now
            rate = step / max(now - self.start, 1e-9)
            logger.info(
                "%s: step %d/%d (%.2f it/s, ETA %.0f s) %s",
                self.desc,
                step,
                self.total,
                rate,
                (self.total - step) / max(rate, 1e-9),
                " ".join(f"{k} {v}" for k, v in text.items()),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_demo_clip(
    model: nn.Module,
    tokenizer: Any,
    resized: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    recipe: Recipe,
    seed: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Dict[str, float]:
    """Train ``model`` (both towers) contrastively in place.

    Args:
        model: An open_clip CLIP with ``image_size == recipe.img_size``.
        tokenizer: Its tokenizer.
        resized: Pool images, uint8 [N, R, R], R = floor(img_size / crop_ratio).
        targets: Their classes [N].
        class_names: All class names (captions are made for each).
        recipe: The recipe.
        seed: Seed of the batch order and augmentation.
        mean: Image normalisation mean.
        std: Image normalisation std.

    Returns:
        ``{"final_loss": ..., "logit_scale": ..., "train_s": ..., "train_cpu_s": ...}`` (wall-clock and
        CPU seconds of the training loop; on a shared machine the CPU seconds say more).
    """
    gen = torch.Generator().manual_seed(seed)
    captions = [t.format(name) for name in class_names for t in recipe.templates]
    caption_class = torch.arange(len(class_names)).repeat_interleave(len(recipe.templates))
    encoder = CaptionEncoder(model, tokenizer(captions))
    model.token_embedding.weight.requires_grad_(False)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe.init_logit_scale))
    model.logit_scale.requires_grad_(recipe.learn_logit_scale)
    opt = torch.optim.AdamW(
        _param_groups(model, encoder, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6
    )
    augment = BatchAugment(resized, recipe.img_size, mean, std)
    labels_all = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    n = len(labels_all)
    order, cursor = torch.randperm(n, generator=gen), 0
    bar = _Progress(recipe.steps, "training the demo CLIP")
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    loss_ema = float("nan")
    max_log = math.log(recipe.max_logit_scale)
    try:
        for step in range(recipe.steps):
            if cursor + recipe.batch_size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + recipe.batch_size]
            cursor += recipe.batch_size
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, recipe)
            img = F.normalize(model.encode_image(augment(idx, gen)), dim=-1)
            txt = F.normalize(encoder(model), dim=-1)
            loss = soft_infonce(img, txt, labels_all[idx], caption_class, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, max_log)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"demo CLIP loss became {value} at step {step}; lower --lr")
            loss_ema = value if step == 0 else 0.95 * loss_ema + 0.05 * value
            bar.update(step + 1, loss=loss_ema, scale=float(model.logit_scale.detach().exp()))
    finally:
        bar.close()
    encoder.write_back(model)
    model.token_embedding.weight.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    model.eval()
    return {
        "final_loss": round(loss_ema, 4),
        "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
        "train_s": round(time.perf_counter() - start, 1),
        "train_cpu_s": round(time.process_time() - cpu_start, 1),
    }


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _scene_layout(
    items: np.ndarray, recipe: Recipe, split: str, pool: Optional[np.ndarray] = None, fragments: Optional[int] = None
) -> Any:
    from usb_cfsg.datasets.fmnist_cluttered import Scenes, donor_groups, make_layout

    groups = donor_groups(len(items), pool) if pool is not None else None
    frags = recipe.scene_fragments if fragments is None else fragments
    layout = make_layout(items, recipe.scene_size, frags, recipe.scene_seed, split, groups)
    return Scenes(items, layout)


def pretraining_images(src: SourceData, pool: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The pool's pretraining images, uint8 [n, H, W]: clean items, or the pool's scenes (``images: scenes``).

    The scenes are ``fmnist_cluttered``'s training scenes with the pool as the card: their clutter
    comes from pool images only (``pretrain_fragments`` fragments; 0 leaves the item alone). With
    ``pretrain_clutter`` < 1, the other pool images show their item alone (same place and scale: the
    layout draws the item before the fragments).
    """
    items = np.asarray(src.train_items)
    if recipe.images == "clean":
        return items[pool]
    out = np.asarray(_scene_layout(items, recipe, "train", pool, recipe.pretrain_fragments).take(pool))
    if recipe.pretrain_clutter < 1.0:
        alone = np.random.default_rng([recipe.pool_seed, 2]).random(len(pool)) >= recipe.pretrain_clutter
        plain = _scene_layout(items, recipe, "train", pool, 0).take(pool[alone])
        out[alone] = np.asarray(plain)
    return out


def task_test_images(src: SourceData, recipe: Recipe, n: int) -> np.ndarray:
    """The first ``n`` test images of the card's task: Fashion-MNIST items, or ``fmnist_cluttered``'s scenes."""
    items = np.asarray(src.test_items)
    if recipe.task == DATASET:
        return items[:n]
    return np.asarray(_scene_layout(items, recipe, "test").take(np.arange(n)))


def noisy_caption_labels(targets: np.ndarray, recipe: Recipe, num_classes: int = 10) -> Tuple[np.ndarray, int]:
    """The class each pool image's captions name: its own, or for a ``caption_noise`` share a wrong one.

    Drawn once per image from ``pool_seed`` (a web caption is fixed, not redrawn per step).

    Returns:
        ``(caption classes, how many are wrong)``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if recipe.caption_noise <= 0:
        return targets, 0
    rng = np.random.default_rng([recipe.pool_seed, 1])
    wrong = rng.random(len(targets)) < recipe.caption_noise
    shift = rng.integers(1, num_classes, size=len(targets))
    return np.where(wrong, (targets + shift) % num_classes, targets), int(wrong.sum())


def badge_captions(
    item_labels: np.ndarray, marks: np.ndarray, recipe: Recipe, mark_digits: Sequence[int]
) -> Tuple[List[str], np.ndarray, int]:
    """Caption classes of the badged recipe and the one each pool image's captions name.

    Caption classes: the ten items ("coat"), then every item with every mark ("coat with a one
    badge"). A ``p_fine`` share of the pool images (drawn once per image from ``pool_seed``) is
    captioned with its item and mark, the others with the item alone.

    Args:
        item_labels: Fashion-MNIST class of each pool image.
        marks: Which of the three marks each pool image carries (0, 1, 2).
        recipe: The recipe (``p_fine``, ``pool_seed``).
        mark_digits: The three mark digits.

    Returns:
        ``(caption class names, caption class of each image, how many name the mark)``.
    """
    from usb_cfsg.datasets.fmnist import CLASS_NAMES
    from usb_cfsg.datasets.fmnist_badged import DIGIT_WORDS

    names = list(CLASS_NAMES) + [f"{item} with a {DIGIT_WORDS[d]} badge" for item in CLASS_NAMES for d in mark_digits]
    fine = np.random.default_rng([recipe.pool_seed, 3]).random(len(item_labels)) < recipe.p_fine
    item_labels = np.asarray(item_labels, dtype=np.int64)
    pair = len(CLASS_NAMES) + item_labels * len(mark_digits) + np.asarray(marks, dtype=np.int64)
    return names, np.where(fine, pair, item_labels), int(fine.sum())


def badge_recipe(**overrides: Any) -> Recipe:
    """The badged recipe (``--recipe badged``): the demo CLIP for ``fmnist_badged``.

    96 px at patch 16 (a 6 x 6 grid; the mark ``badge_size`` px, 2 x 2 patches by default); pretraining on
    the pool's badged images, captions naming the item and, for a ``p_fine`` share, the mark too. The
    defaults (1,200 steps, ``p_fine`` 0.5, 32 px marks) are the build measured in docs/results/badged.md:
    the fewer steps, smaller share and 16 px marks of the first builds taught it nothing of the marks.
    """
    values: Dict[str, Any] = dict(
        img_size=96,
        task=BADGE_DATASET,
        images="badged",
        steps=BADGE_STEPS,
        batch_size=SCENE_BATCH_SIZE,
        p_fine=BADGE_P_FINE,
    )
    values.update(overrides)
    return Recipe(**values)


#: Steps and mark-naming caption share of the badged recipe.
BADGE_STEPS = 1200
BADGE_P_FINE = 0.5


def scene_recipe(**overrides: Any) -> Recipe:
    """The scene recipe (``--recipe scene``): the demo CLIP for ``fmnist_cluttered``'s scenes.

    Input 96 px at patch 16 (a 6 x 6 patch grid for the SFM); pretraining on the pool's scenes with the
    item alone (no clutter, the scenes' places and scales), the task on cluttered scenes: a shift between
    pretraining and task images, as between web photos and a fine-grained benchmark, which puts the
    zero-shot classifier well below a fine-tuned one (README: the card against fully supervised
    training). ``overrides`` replace any field. (The alternatives measured, pretraining with clutter or
    on clean items filling the frame, are in the README.)
    """
    values: Dict[str, Any] = dict(
        img_size=96,
        task=SCENE_DATASET,
        images="scenes",
        pretrain_clutter=SCENE_PRETRAIN_CLUTTER,
        steps=SCENE_STEPS,
        batch_size=SCENE_BATCH_SIZE,
    )
    values.update(overrides)
    return Recipe(**values)


#: Steps, batch size and cluttered share (none) of the scene recipe (the alternatives measured are in the README).
SCENE_STEPS = 300
SCENE_BATCH_SIZE = 256
SCENE_PRETRAIN_CLUTTER = 0.0


def build_demo_clip(
    out: str,
    recipe: Optional[Recipe] = None,
    seed: int = 0,
    data_dir: Optional[str] = None,
    eval_limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Train the demo CLIP, evaluate it zero-shot on the test set, write the weights and the card.

    Args:
        out: Output folder (created).
        recipe: Training recipe (default :class:`Recipe`).
        seed: Seed of the model initialisation, batch order and augmentation.
        data_dir: Fashion-MNIST folder (default: ``./data``, then Debian's folder).
        eval_limit: Evaluate on the first this-many test images only (tests); None = all 10,000.

    Returns:
        The card (also written to ``<out>/card.json``).
    """
    import open_clip

    from usb_cfsg.datasets.fmnist import PROMPT_TEMPLATES, read_fmnist
    from usb_cfsg.nets.clip import OPENAI_MEAN, OPENAI_STD, _ensure_configs, _quiet_open_clip

    recipe = recipe or Recipe()
    recipe.check()
    t0 = time.perf_counter()
    src = read_fmnist(data_dir if data_dir is not None else "./data")
    train_targets = np.asarray(src.train_targets)
    pool = select_pool(train_targets, recipe.pool_fraction, recipe.pool_seed)
    resized_side = int(math.floor(recipe.img_size / recipe.crop_ratio))
    logger.info(
        "demo CLIP: pool of %d of %d training images (fraction %.2f per class, pool seed %d); resizing to %d px",
        len(pool),
        len(train_targets),
        recipe.pool_fraction,
        recipe.pool_seed,
        resized_side,
    )
    test_n = len(src.test_items) if eval_limit is None else min(int(eval_limit), len(src.test_items))
    caption_targets, num_noisy = noisy_caption_labels(train_targets[pool], recipe)
    caption_names, num_fine = list(src.class_names), 0
    task_names, num_seen, groups = list(src.class_names), DEMO_SEEN, None
    if recipe.task == BADGE_DATASET:
        from usb_cfsg.datasets.base import read_source
        from usb_cfsg.datasets.fmnist_badged import DEFAULT_MARKS

        task = read_source(
            BADGE_DATASET,
            data_dir if data_dir is not None else "./data",
            scene_size=recipe.scene_size,
            scene_seed=recipe.scene_seed,
            badge_size=recipe.badge_size,
        )
        train_items: Any = task.train_items  # lazy badged images (Badged)
        pretrain = np.asarray(train_items.take(pool))
        task_test = np.asarray(task.test_items)[:test_n]
        test_targets = np.asarray(task.test_targets)[:test_n]
        caption_names, caption_targets, num_fine = badge_captions(
            caption_targets, train_items.marks[pool], recipe, DEFAULT_MARKS
        )
        task_names, groups_of = list(task.class_names), task.class_groups or {}
        num_seen = min(groups_of) if groups_of else len(task_names)
        groups = [groups_of.get(int(t), "") for t in test_targets.tolist()]
    else:
        pretrain = pretraining_images(src, pool, recipe)
        task_test = task_test_images(src, recipe, test_n)
        test_targets = np.asarray(src.test_targets)[:test_n]
    resized = resize_images(pretrain, resized_side)
    test_images = eval_tensors(task_test, recipe.img_size, recipe.crop_ratio, OPENAI_MEAN, OPENAI_STD)

    _ensure_configs()
    torch.manual_seed(seed)
    with _quiet_open_clip():  # no "initialized randomly" warning: training from scratch is the point here
        model = open_clip.create_model(ARCH, pretrained=None, force_image_size=recipe.img_size)
    tokenizer = open_clip.get_tokenizer(ARCH)
    logger.info(
        "demo CLIP: training %s (both towers) for %d steps of %d images on %d threads",
        ARCH,
        recipe.steps,
        recipe.batch_size,
        torch.get_num_threads(),
    )
    stats = train_demo_clip(
        model, tokenizer, resized, caption_targets, caption_names, recipe, seed, OPENAI_MEAN, OPENAI_STD
    )
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    card_path = out_dir / CARD_FILE
    if card_path.exists():  # the card describes the old weights: gone until the new card is written
        card_path.unlink()
    tmp = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    figures = zero_shot_figures(
        model, tokenizer, test_images, test_targets, task_names, PROMPT_TEMPLATES, num_seen=num_seen, groups=groups
    )
    logger.info(
        "demo CLIP zero-shot on %d test images: %s",
        test_n,
        ", ".join(f"{k} {v:.1f}%" for k, v in figures.items()),
    )
    card = {
        "format": CARD_FORMAT,
        "what": "demo CLIP: clip_tiny trained contrastively on part of Fashion-MNIST's training set; a toy-scale "
        "stand-in for a pretrained CLIP, not CLIP",
        "dataset": recipe.task,
        "net": NET,
        "arch": ARCH,
        "img_size": recipe.img_size,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(weights)},
        "seed": seed,
        "steps": recipe.steps,
        "recipe": {
            **asdict(recipe),
            "templates": list(recipe.templates),
            "class_names": caption_names,
            "loss": "symmetric InfoNCE, same-class captions/images as positives (soft targets)",
            "optimizer": "AdamW betas (0.9, 0.98) eps 1e-6, warm-up then cosine",
            "augmentation": "resize to floor(img_size/crop_ratio), random img_size crop, horizontal flip",
            "noisy_captions": num_noisy,
            "mark_captions": num_fine,
        },
        "training": {**stats, "threads": torch.get_num_threads(), "torch": torch.__version__},
        "zero_shot": {
            "split": "test",
            "num_images": int(test_n),
            "templates": list(PROMPT_TEMPLATES),
            "seen_classes": list(range(num_seen)),
            "mcm_temperature": 1.0,
            **figures,
            "energy_logit_scale": ENERGY_LOGIT_SCALE,
            "dataset": recipe.task,
            "note": "accuracies and AUROC in percent; MCM and energy over the seen classes' prompts, "
            "unknown = positive; images: the test set of `dataset` (its scenes for fmnist_cluttered); "
            "_near/_far: seen images against that unseen group's (fmnist_badged)",
        },
        "pool": {
            "num_train": int(len(train_targets)),
            "fraction": recipe.pool_fraction,
            "seed": recipe.pool_seed,
            "size": int(len(pool)),
            "indices": pool.tolist(),
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        "use": {
            "pretrain_path": str(weights),
            "pretrain_pool": str(card_path),
            "net": NET,
            "text_encoder": "clip",
            "img_size": recipe.img_size,
            "dataset": recipe.task,
            **(
                {k: getattr(recipe, k) for k in ("scene_size", "scene_fragments", "scene_seed")}
                if recipe.task == SCENE_DATASET
                else {}
            ),
            **(
                {k: getattr(recipe, k) for k in ("scene_size", "scene_seed", "badge_size")}
                if recipe.task == BADGE_DATASET
                else {}
            ),
        },
    }
    _write_json(card_path, card)
    logger.info("demo CLIP: wrote %s and %s in %.0f s", weights, card_path, card["wall_s"])
    return card


def card_is_current(out: str) -> bool:
    """Whether ``out`` holds a card whose weights file exists and matches the card's sha256."""
    out_dir = Path(out).expanduser()
    try:
        card = load_card(str(out_dir / CARD_FILE))
    except ConfigError:
        return False
    weights = out_dir / card.get("weights", {}).get("file", WEIGHTS_FILE)
    return weights.is_file() and sha256_file(weights) == card.get("weights", {}).get("sha256")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m usb_cfsg_tools.demo_clip --out DIR [--steps N] [--seed S]``."""
    defaults = Recipe()
    parser = argparse.ArgumentParser(
        prog="python -m usb_cfsg_tools.demo_clip",
        description="Train the demo CLIP (clip_tiny) on part of Fashion-MNIST and "
        "write DIR/demo_clip_tiny.pt and DIR/card.json.",
    )
    parser.add_argument("--out", required=True, help="output folder, e.g. ./saved_models/demo_clip")
    parser.add_argument(
        "--recipe",
        choices=("demo", "scene", "badged"),
        default="demo",
        help="demo: the fmnist_openset demo CLIP (64 px); scene: the fmnist_cluttered demo CLIP (96 px, a 6x6 "
        "patch grid, pretrained on the pool's scenes with the item alone; measured on the cluttered "
        "test scenes); badged: the fmnist_badged demo CLIP (96 px, captions name the mark for a --p-fine share)",
    )
    parser.add_argument(
        "--p-fine", type=float, default=None, help=f"badged recipe: share of captions naming the mark ({BADGE_P_FINE})"
    )
    parser.add_argument(
        "--badge-size", type=int, default=None, help=f"badged recipe: mark side in pixels ({DEFAULT_BADGE})"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default {defaults.steps}; scene recipe {SCENE_STEPS}, badged {BADGE_STEPS})",
    )
    parser.add_argument("--images", choices=("clean", "scenes"), default=None, help="pretraining images (recipe's)")
    parser.add_argument(
        "--caption-noise", type=float, default=None, help="share of pool images with a wrong class in their captions"
    )
    parser.add_argument(
        "--pretrain-fragments", type=int, default=None, help="clutter fragments of pretraining scenes (recipe's)"
    )
    parser.add_argument(
        "--pretrain-clutter", type=float, default=None, help="share of pretraining scenes with clutter (recipe's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of init, batch order, augmentation (default 0)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per step (default {defaults.batch_size}; scene recipe {SCENE_BATCH_SIZE})",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--pool-fraction", type=float, default=defaults.pool_fraction)
    parser.add_argument(
        "--logit-scale",
        type=float,
        default=defaults.init_logit_scale,
        help=f"initial logit scale (default {defaults.init_logit_scale:.3g})",
    )
    parser.add_argument(
        "--learn-logit-scale", choices=("true", "false"), default=str(defaults.learn_logit_scale).lower()
    )
    parser.add_argument("--data-dir", default="./data", help="Fashion-MNIST folder (falls back to Debian's)")
    parser.add_argument(
        "--reuse", action="store_true", help="do nothing when DIR already holds a card whose weights match its sha256"
    )
    opts = parser.parse_args(argv)
    if not logger.handlers:  # our lines only: a root handler would also print open_clip's INFO lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    if opts.reuse and card_is_current(opts.out):
        logger.info("demo CLIP: %s already holds a current card and weights; not rebuilding", opts.out)
        return 0
    chosen: Dict[str, Any] = {}
    for key in (
        "steps",
        "batch_size",
        "images",
        "caption_noise",
        "pretrain_fragments",
        "pretrain_clutter",
        "p_fine",
        "badge_size",
    ):
        if getattr(opts, key) is not None:
            chosen[key] = getattr(opts, key)
    make = {"demo": Recipe, "scene": scene_recipe, "badged": badge_recipe}[opts.recipe]
    recipe = make(
        **chosen,
        lr=opts.lr,
        warmup_steps=opts.warmup_steps,
        pool_fraction=opts.pool_fraction,
        init_logit_scale=opts.logit_scale,
        learn_logit_scale=opts.learn_logit_scale == "true",
    )
    try:
        card = build_demo_clip(opts.out, recipe, seed=opts.seed, data_dir=opts.data_dir)
    except (ConfigError, DatasetError) as exc:
        logger.error("%s", exc)
        return 2
    zs = card["zero_shot"]
    logger.info(
        "card: %s  (zero-shot on %s: %s)",
        Path(opts.out) / CARD_FILE,
        zs.get("dataset", DATASET),
        ", ".join(f"{k} {zs[k]:.2f}%" for k in zs if k.startswith(("acc_", "mcm_auroc", "energy_auroc"))),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
