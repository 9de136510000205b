#!/usr/bin/env python
"""Generate every YAML config under ``config/`` (our counterpart of USB's ``scripts/config_generator_*.py``).

Usage (from the repository root)::

    PYTHONPATH=. .venv/bin/python scripts/make_configs.py              # rewrite config/
    PYTHONPATH=. .venv/bin/python scripts/make_configs.py --out DIR    # write the same tree under DIR
    PYTHONPATH=. .venv/bin/python scripts/make_configs.py --check      # exit 1 if config/ is stale

Files written (paths relative to the output folder)::

    openset_fg/<alg>/<alg>_<dataset>_<num_labels>_<seed>.yaml   the benchmark (USB naming)
    cfsg_cub.yaml                                                the config the README points to
    demo/<alg>_fmnist.yaml             the CPU demo on Fashion-MNIST, on the demo CLIP (usb_cfsg_tools.demo_clip)
    demo/<alg>_fmnist_randinit.yaml    the same on a randomly initialised clip_tiny

The output is deterministic: a fixed key order (``SECTIONS``), values written by PyYAML, no dates.
The keys of ``cfsg_clip`` come from ``CFSGCLIP.get_argument()``, each written with its default, so a
new switch there shows up in every file after regenerating (tests/test_configs.py fails until then).

Recipe of the fine-grained benchmark (ViT-B/16 CLIP, 224 px, one GPU) and why
-----------------------------------------------------------------------------
* Backbone: clip_vit_b16, pretrained openai (the paper's backbone). Offline, point pretrain_path at a
  local OpenAI/open_clip ViT-B-16 checkpoint instead. num_tuned_blocks 4: the last 4 of 12 visual
  blocks train (DESIGN.md section 3, m = 4); the frozen trunk runs once without autograd.
* text_encoder clip: both algorithms' classifiers are cosine heads initialised from CLIP's class-name
  text embeddings, so FixMatch and CFSG-CLIP start from the same zero-shot classifier.
* optim AdamW, lr 3e-5, weight_decay 0.05, layer_decay 1.0. USB's pretrained-ViT recipe (usb_cv) uses
  AdamW at 5e-5 with batch 8; CLIP fine-tuning is known to be fragile at large learning rates
  (WiSE-FT, FLYP use 1e-5 to 3e-5), and the heads start from text embeddings that are already a good
  classifier, so one small rate for all trained parameters (blocks and heads) keeps them near the
  zero-shot solution early on. 0.05 is the usual AdamW decay for ViT fine-tuning. Layer decay is off:
  only 4 blocks train, there is little depth to decay over.
* batch_size 32, uratio 1: one labeled and one unlabeled batch of 32 (the unlabeled one in two views),
  96 images per step at 224 px fit comfortably with amp; a larger uratio multiplies memory.
* num_train_iter 20000, epoch 20 (USB needs num_train_iter % epoch == 0; 1000 iterations per
  "epoch"), num_warmup_iter 500 (2.5 % of training, USB's usb_cv ratio: 5 of 200 epochs), USB's
  cosine schedule, num_eval_iter 1000, num_log_iter 50. 20000 x 32 unlabeled images is about
  100 passes over CUB's 5994 training images.
* ema_m 0.0: USB's usb_cv configs (pretrained ViTs) use ema_m 0.0 for FixMatch and most algorithms,
  i.e. the evaluated model is the trained one; we keep USB's value so our FixMatch row is USB's
  FixMatch recipe (USB's cosine schedule, 7/16 of a cycle, ends at 0.2 x lr, so the last
  iterations already move the weights little).
* amp true (fp16 + GradScaler on CUDA), eval_batch_size 128, num_workers 4, crop_ratio 0.875 (USB).
* Open-set split: class_split ssb for CUB-200-2011, Stanford Cars and FGVC-Aircraft (the Semantic Shift
  Benchmark's known classes, 100 / 98 / 50, the split fine-grained open-set work reports on; unknown classes
  graded Easy / Medium / Hard, with metrics per group), class_split first for Flowers-102 and Stanford Dogs
  (seen = the first K classes in the dataset's order; no SSB split exists), split_seed 0, every unlabeled
  image kept (ulb_unseen_ratio none), ood_threshold 0.5.
* Label budgets: 4 and 10 labeled images per seen class; num_labels = K x per-class.
* FixMatch: USB's values (hard_label true, T 0.5, p_cutoff 0.95, ulb_loss_ratio 1.0).
* data_dir ./data for every dataset: each reader (usb_cfsg/datasets/<name>.py) accepts the folder that
  holds the publisher's folder (CUB_200_2011/, fgvc-aircraft-2013b/, stanford_cars/, flowers-102/,
  stanford_dogs/) as well as the dataset folder itself; the header of each file says how to unpack.

CPU demo (Fashion-MNIST, classes 0-5 seen, 6-9 unseen)
-------------------------------------------------------
Every demo algorithm (``DEMO_ALGORITHMS``) gets one file per backbone (``DEMO_BACKBONES``, one function
each), identical except for the backbone keys:

* ``<alg>_fmnist.yaml``, the demo CLIP: net clip_tiny with pretrain_path
  ./saved_models/demo_clip/demo_clip_tiny.pt, text_encoder clip. The demo CLIP is clip_tiny trained
  contrastively (both towers) by ``python -m usb_cfsg_tools.demo_clip`` on a fixed half of Fashion-MNIST's
  training images with captions over all ten class names: a toy-scale stand-in for a pretrained CLIP,
  not CLIP, which has the image-text alignment CFSG-CLIP builds on. ``make demo`` builds it once.
  pretrain_pool names its card, so its pretraining images are never labeled or unlabeled images here.
* ``<alg>_fmnist_randinit.yaml``, random init: net clip_tiny, pretrained none (no weights can be
  downloaded here), text_encoder minilm: the text tower of a randomly initialised CLIP maps every class
  name to nearly the same embedding (they collapse), so the class-name embeddings come from the offline
  MiniLM sentence encoder through a learned projection instead. cfsg_clip's headline score is ova there.
* img_size 64 (4 x 4 patches of 16 px; Fashion-MNIST's 28 px images are resized up), crop_ratio 0.875.
* num_labels 60 (10 per seen class), batch_size 16, uratio 2, AdamW lr 1e-3, weight_decay 0.01, no
  warm-up, ema_m 0.99 (a short run: the EMA must follow within tens of iterations).
* num_tuned_blocks 2 of clip_tiny's 4: measured at 300 iterations on the 2-core CPU, m = 2 reached
  70.3 % seen-class accuracy at 0.29 s/iteration, m = 4 68.0 % at 0.37 s/iteration; as good, cheaper.
* DEMO_ITERS 500: measured on the shared 2-core CPU, one cfsg_clip run (start-up, 500 iterations,
  4 evaluations, the open-set test) took 205 s (fixmatch 214 s), seen-class accuracy 70.6 % (fixmatch
  71.9 %); other jobs on the same cores can slow it by about 1.7x before it passes 6 minutes.
  fixmatch_fmnist is identical except for the algorithm and its keys, so the two runs are comparable.
  (Those times were taken when every evaluation used all 10,000 test images.)
* eval_subset 2000 (DEMO_EVAL_SUBSET): the evaluations during training (eval/* and the test_open curves,
  every 125 iterations) use a fixed class-stratified fifth of the test set; the end of training evaluates
  all 10,000. Measured with make demo on the 2 shared cores (load 9): evaluation + checkpoint 5.2-5.7 s
  each instead of 40.6-99.1 s with all images (load 5-7), training losses and the final
  openset_metrics.json identical. model_best.pth is then chosen on the subset.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COMMAND = "PYTHONPATH=. .venv/bin/python scripts/make_configs.py"

#: The benchmark: (dataset, classes in the dataset, K seen classes, how to put it under ./data).
OPENSET_FG_DATASETS: Tuple[Tuple[str, int, int, str], ...] = (
    ("cub200", 200, 100, "tar xzf CUB_200_2011.tgz -C ./data    (-> ./data/CUB_200_2011/)"),
    (
        "stanford_cars",
        196,
        98,
        "devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat in ./data/stanford_cars/",
    ),
    ("fgvc_aircraft", 100, 50, "tar xzf fgvc-aircraft-2013b.tar.gz -C ./data    (-> ./data/fgvc-aircraft-2013b/)"),
    ("flowers102", 102, 51, "102flowers.tgz (unpacked: jpg/), imagelabels.mat, setid.mat in ./data/flowers-102/"),
    ("stanford_dogs", 120, 60, "images.tar and lists.tar unpacked in ./data/stanford_dogs/"),
)
#: Datasets with a Semantic Shift Benchmark split: their benchmark configs use class_split ssb.
SSB_SPLIT_DATASETS: Tuple[str, ...] = ("cub200", "stanford_cars", "fgvc_aircraft")
OPENSET_FG_ALGORITHMS: Tuple[str, ...] = ("fixmatch", "cfsg_clip")
LABELS_PER_CLASS: Tuple[int, ...] = (4, 10)
SEEDS: Tuple[int, ...] = (0,)
OPENSET_FG_SAVE_DIR = "./saved_models/openset_fg"

#: Keys shared by every benchmark config (the recipe explained in the module docstring).
FG_RECIPE: Dict[str, Any] = dict(
    resume=False,
    overwrite=False,
    use_tensorboard=True,
    epoch=20,
    num_train_iter=20000,
    num_warmup_iter=500,
    num_eval_iter=1000,
    num_log_iter=50,
    batch_size=32,
    uratio=1,
    eval_batch_size=128,
    ema_m=0.0,
    optim="AdamW",
    lr=3e-5,
    weight_decay=0.05,
    layer_decay=1.0,
    clip_grad=0.0,
    amp=True,
    net="clip_vit_b16",
    pretrained="openai",
    pretrain_path=None,
    num_tuned_blocks=4,
    text_encoder="clip",
    data_dir="./data",
    img_size=224,
    crop_ratio=0.875,
    class_split="first",
    split_seed=0,
    ulb_unseen_ratio=None,
    include_lb_to_ulb=True,
    num_workers=4,
    ood_threshold=0.5,
    device="auto",
    world_size=1,
    multiprocessing_distributed=False,
)

#: FixMatch as USB configures it (scripts/config_generator_usb_cv.py upstream).
FIXMATCH_KEYS: Dict[str, Any] = dict(hard_label=True, T=0.5, p_cutoff=0.95, ulb_loss_ratio=1.0)

#: CPU demo length: measured on the shared 2-core CPU (see the module docstring and the report).
DEMO_ITERS = 500
#: The demo's headline unknown score (cfsg_clip): see the comment written next to it in the file.
DEMO_OOD_SCORE = "ova"
#: Test images of the demo's evaluations during training (a fixed, class-stratified subset of the 10,000;
#: the final evaluation uses all of them): see the module docstring.
DEMO_EVAL_SUBSET = 2000
DEMO_RECIPE: Dict[str, Any] = dict(
    save_dir="./saved_models/demo",
    resume=False,
    overwrite=True,
    use_tensorboard=True,
    epoch=1,
    num_train_iter=DEMO_ITERS,
    num_warmup_iter=0,
    num_eval_iter=DEMO_ITERS // 4,
    num_log_iter=25,
    num_labels=60,
    batch_size=16,
    uratio=2,
    eval_batch_size=256,
    ema_m=0.99,
    optim="AdamW",
    lr=1e-3,
    weight_decay=0.01,
    layer_decay=1.0,
    clip_grad=0.0,
    amp=False,
    net="clip_tiny",
    num_tuned_blocks=2,
    data_dir="./data",
    dataset="fmnist_openset",
    num_classes=6,
    img_size=64,
    crop_ratio=0.875,
    class_split="first",
    split_seed=0,
    ulb_unseen_ratio=None,
    include_lb_to_ulb=True,
    num_workers=2,
    ood_threshold=0.5,
    eval_subset=DEMO_EVAL_SUBSET,
    device="auto",
    seed=0,
    world_size=1,
    multiprocessing_distributed=False,
)

#: Fixed key order of every file, in sections. Algorithm keys not listed go to the last section.
SECTIONS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("algorithm", ("algorithm",)),
    ("saving & loading (USB names)", ("save_dir", "save_name", "resume", "overwrite", "use_tensorboard")),
    (
        "training schedule",
        (
            "epoch",
            "num_train_iter",
            "num_warmup_iter",
            "num_eval_iter",
            "num_log_iter",
            "num_labels",
            "batch_size",
            "uratio",
            "eval_batch_size",
            "ema_m",
        ),
    ),
    ("optimizer", ("optim", "lr", "weight_decay", "layer_decay", "clip_grad", "amp")),
    ("network", ("net", "pretrained", "pretrain_path", "pretrain_pool", "num_tuned_blocks", "text_encoder")),
    (
        "data and open-set split",
        (
            "data_dir",
            "dataset",
            "num_classes",
            "img_size",
            "crop_ratio",
            "class_split",
            "split_seed",
            "ulb_unseen_ratio",
            "include_lb_to_ulb",
            "num_workers",
            "scene_size",
            "scene_fragments",
            "scene_seed",
            "badge_size",
            "badge_items",
            "badge_marks",
            "badge_erase",
        ),
    ),
    ("open-set evaluation", ("ood_threshold", "eval_subset")),
    ("devices", ("device", "seed", "world_size", "multiprocessing_distributed")),
)
ALGORITHM_SECTION = "algorithm keys"


# ----------------------------------------------------------------------------- algorithm keys
def algorithm_keys(algorithm: str) -> List[Tuple[str, Any, str]]:
    """``(key, value, help)`` of the algorithm's own keys, in the order its files list them.

    FixMatch: USB's recipe. cfsg_clip, openmatch, iomatch, clip_zeroshot: every key of the algorithm's
    ``get_argument()`` with its default (the papers' values, see each algorithm's module docstring).
    """
    if algorithm == "fixmatch":
        return [(k, v, "") for k, v in FIXMATCH_KEYS.items()]
    if algorithm in ("cfsg_clip", "openmatch", "iomatch", "clip_zeroshot"):
        from usb_cfsg.algorithms import get_algorithm_class
        from usb_cfsg.config import algorithm_specs

        specs = algorithm_specs(get_algorithm_class(algorithm))
        return [(name, spec.default, spec.help) for name, spec in specs.items()]
    raise ValueError(f"no algorithm keys defined for {algorithm!r}")


# ----------------------------------------------------------------------------------- rendering
def _scalar(value: Any) -> str:
    """One YAML scalar as PyYAML writes it (``3.0e-05``, ``true``, ``null``, quoted when needed)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text.endswith("..."):
        text = text[: -len("...")].strip()
    return text


def render(cfg: Dict[str, Any], header: Sequence[str], comments: Optional[Dict[str, str]] = None) -> str:
    """The text of one config file: a header comment, then the keys section by section.

    Raises:
        ValueError: a key of ``cfg`` that no section lists and that has no algorithm comment slot
            (every key must have a fixed place, so files stay deterministic).
    """
    comments = comments or {}
    lines = [f"# {line}".rstrip() for line in header]
    placed = set()
    for title, keys in SECTIONS:
        present = [k for k in keys if k in cfg]
        if not present:
            continue
        lines += ["", f"# --- {title}"]
        for key in present:
            lines.append(f"{key}: {_scalar(cfg[key])}")
            placed.add(key)
    rest = [k for k in cfg if k not in placed]
    unexpected = [k for k in rest if k not in comments]
    if unexpected:
        raise ValueError(f"keys without a place in SECTIONS: {unexpected}")
    if rest:
        lines += ["", f"# --- {ALGORITHM_SECTION} ({cfg['algorithm']})"]
        for key in rest:
            note = comments[key]
            lines.append(f"{key}: {_scalar(cfg[key])}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def _with_algorithm(cfg: Dict[str, Any], algorithm: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """``cfg`` plus the algorithm's keys; keys the recipe already sets keep the recipe's value."""
    out = dict(cfg)
    comments: Dict[str, str] = {}
    for key, value, help_text in algorithm_keys(algorithm):
        if key in out:
            continue
        out[key] = value
        comments[key] = help_text
    return out, comments


def _generated_header(description: Iterable[str]) -> List[str]:
    return [f"GENERATED by scripts/make_configs.py; do not edit. Regenerate: {COMMAND}", *description]


# --------------------------------------------------------------------------------------- files
def openset_fg_files() -> Dict[str, str]:
    """``openset_fg/<alg>/<alg>_<dataset>_<num_labels>_<seed>.yaml`` -> text."""
    files: Dict[str, str] = {}
    for algorithm in OPENSET_FG_ALGORITHMS:
        for dataset, total, seen, data_note in OPENSET_FG_DATASETS:
            for per_class in LABELS_PER_CLASS:
                for seed in SEEDS:
                    num_labels = seen * per_class
                    save_name = f"{algorithm}_{dataset}_{num_labels}_{seed}"
                    cfg = dict(
                        algorithm=algorithm,
                        save_dir=OPENSET_FG_SAVE_DIR,
                        save_name=save_name,
                        **FG_RECIPE,
                    )
                    ssb = dataset in SSB_SPLIT_DATASETS
                    cfg.update(
                        dataset=dataset,
                        num_classes=seen,
                        num_labels=num_labels,
                        seed=seed,
                        class_split="ssb" if ssb else "first",
                    )
                    cfg, comments = _with_algorithm(cfg, algorithm)
                    which = " (the Semantic Shift Benchmark's known classes)" if ssb else ""
                    header = _generated_header(
                        [
                            f"{algorithm} on {dataset}: {seen} of {total} classes seen{which}, {per_class} labels per seen "
                            f"class, seed {seed}.",
                            "Recipe and reasons: the docstring of scripts/make_configs.py.",
                            f"Data: {data_note}",
                            f"Run: python train.py --c config/openset_fg/{algorithm}/{save_name}.yaml",
                        ]
                    )
                    files[f"openset_fg/{algorithm}/{save_name}.yaml"] = render(cfg, header, comments)
    return files


def cfsg_cub_file() -> Dict[str, str]:
    """``cfsg_cub.yaml``: cfsg_clip on CUB-200-2011, 100 seen classes, 4 labels each (the README's example)."""
    save_dir, save_name = "./saved_models", "cfsg_cub"
    cfg = dict(
        algorithm="cfsg_clip",
        save_dir=save_dir,
        save_name=save_name,
        **FG_RECIPE,
    )
    cfg.update(dataset="cub200", num_classes=100, num_labels=400, seed=0, class_split="ssb")
    cfg, comments = _with_algorithm(cfg, "cfsg_clip")
    header = _generated_header(
        [
            "CFSG-CLIP on CUB-200-2011: ViT-B/16 CLIP (pretrained openai), the Semantic Shift Benchmark split (100",
            "known classes seen, 100 unseen graded Easy / Medium / Hard), 4 labeled images per seen class (num_labels 400).",
            "Same recipe as config/openset_fg/cfsg_clip/cfsg_clip_cub200_400_0.yaml.",
            "Data: tar xzf CUB_200_2011.tgz -C ./data    (-> ./data/CUB_200_2011/)",
            "Offline: --pretrain_path /path/to/ViT-B-16.pt (an OpenAI or open_clip checkpoint).",
            "Run: python train.py --c config/cfsg_cub.yaml   (any key can be overridden: --key value)",
            "Baselines on the same data and backbone: add --algorithm fixmatch (or openmatch, iomatch, clip_zeroshot);",
            "the run folder is then <algorithm>_cub200_400_<seed> (this file's save_name is dropped).",
        ]
    )
    return {"cfsg_cub.yaml": render(cfg, header, comments)}


#: The demo CLIP built by ``python -m usb_cfsg_tools.demo_clip --out DEMO_CLIP_DIR`` (``make demo`` does it once).
DEMO_CLIP_DIR = "./saved_models/demo_clip"
#: Demo algorithms and the stem of their files: config/demo/<stem>_fmnist.yaml (demo CLIP) and
#: config/demo/<stem>_fmnist_randinit.yaml (random init). To add an algorithm, append it here; its keys
#: come from ``algorithm_keys`` (give demo-specific values per backbone in ``DemoBackbone.algorithm_keys``).
DEMO_ALGORITHMS: Tuple[Tuple[str, str], ...] = (
    ("cfsg_clip", "cfsg"),
    ("fixmatch", "fixmatch"),
    ("openmatch", "openmatch"),
    ("iomatch", "iomatch"),
    ("clip_zeroshot", "clip_zeroshot"),
)


class DemoBackbone(NamedTuple):
    """One backbone of the CPU demo.

    Attributes:
        suffix: Appended to ``<stem>_fmnist`` in file and run names ("" for the default backbone).
        keys: Network keys (``net`` is the recipe's clip_tiny).
        description: Header lines saying what the backbone is.
        algorithm_keys: Per algorithm, keys whose demo value differs from the algorithm's default,
            as ``key -> (value, comment)``.
    """

    suffix: str
    keys: Dict[str, Any]
    description: Tuple[str, ...]
    algorithm_keys: Dict[str, Dict[str, Tuple[Any, str]]] = {}


def demo_clip_backbone() -> DemoBackbone:
    """The demo CLIP (the default demo): aligned clip_tiny weights and their pretraining pool."""
    return DemoBackbone(
        suffix="",
        keys=dict(
            pretrained=None,
            pretrain_path=f"{DEMO_CLIP_DIR}/demo_clip_tiny.pt",
            pretrain_pool=f"{DEMO_CLIP_DIR}/card.json",
            text_encoder="clip",
        ),
        description=(
            "Backbone: the demo CLIP, clip_tiny trained contrastively (image and text towers) by",
            "python -m usb_cfsg_tools.demo_clip on a fixed half of Fashion-MNIST's training images with captions over",
            "all ten class names: a toy-scale stand-in for a pretrained CLIP, not CLIP. text_encoder clip: its",
            "own text tower gives the class embeddings. pretrain_pool names its card, so none of its pretraining",
            "images is ever a labeled or unlabeled image of this run.",
            f"Build it first (once; 114 s on 2 idle cores, 436 s on 2 shared ones: docs/results/demo.md): make demo  "
            f"(or python -m usb_cfsg_tools.demo_clip --out {DEMO_CLIP_DIR})",
        ),
        algorithm_keys={
            "clip_zeroshot": {
                "ood_score": (
                    "energy",
                    "headline: energy of the zero-shot logits at the heads' scale 30, zero-shot CLIP's strongest "
                    "score on the demo CLIP (AUROC 93.91 against MCM's 88.38)",
                )
            }
        },
    )


def randinit_backbone() -> DemoBackbone:
    """A randomly initialised clip_tiny with MiniLM class embeddings (no alignment at all)."""
    return DemoBackbone(
        suffix="_randinit",
        keys=dict(pretrained=None, pretrain_path=None, text_encoder="minilm"),
        description=(
            "Backbone: clip_tiny from a random init (pretrained: none); text_encoder minilm because the class-name",
            "embeddings of a random-init CLIP text tower collapse to nearly one vector: the names come from the",
            "offline MiniLM sentence encoder through a learned projection.",
        ),
        algorithm_keys={
            "cfsg_clip": {
                "ood_score": (
                    DEMO_OOD_SCORE,
                    "headline score: ova. mcm/glmcm (and fused, which averages ova and glmcm) rest on a "
                    "pretrained CLIP's image-text alignment, which a random init lacks",
                ),
                "zs_weight": (0.0, "a random init has no zero-shot classifier to keep"),
            }
        },
    )


#: The scene demo CLIP (``python -m usb_cfsg_tools.demo_clip --recipe scene --out DEMO_CLIP_SCENE_DIR``).
DEMO_CLIP_SCENE_DIR = "./saved_models/demo_clip_scene"
#: Labeled images of the scene configs (25 per seen class; chosen, not yet measured against the
#: issue's target that fixmatch without the prior beats zero-shot closed accuracy).
SCENE_NUM_LABELS = 150


def scene_backbone() -> DemoBackbone:
    """The scene demo: fmnist_cluttered at 96 px (a 6 x 6 patch grid) on the scene demo CLIP."""
    return DemoBackbone(
        suffix="_cluttered",
        keys=dict(
            pretrained=None,
            pretrain_path=f"{DEMO_CLIP_SCENE_DIR}/demo_clip_tiny.pt",
            pretrain_pool=f"{DEMO_CLIP_SCENE_DIR}/card.json",
            text_encoder="clip",
            dataset="fmnist_cluttered",
            img_size=96,
            scene_size=96,
            scene_fragments=2,
            scene_seed=0,
            num_labels=SCENE_NUM_LABELS,
        ),
        description=(
            "Data: fmnist_cluttered, 96 px scenes of one Fashion-MNIST item (30-50% of the side) beside 2 fragments",
            "of other items; img_size 96 at patch 16 gives the SFM a 6x6 patch grid; the item's box gives the",
            "localization metrics. Backbone: the scene demo CLIP (python -m usb_cfsg_tools.demo_clip --recipe scene),",
            "clip_tiny at 96 px pretrained on a fixed half of the training images, each item alone on the canvas:",
            "the task's cluttered scenes are a shift from its pretraining images. pretrain_pool names its card.",
            f"Build it first (once): make demo-clip-scene  (or python -m usb_cfsg_tools.demo_clip --recipe scene --out "
            f"{DEMO_CLIP_SCENE_DIR})",
        ),
    )


#: The badged demo CLIP (``python -m usb_cfsg_tools.demo_clip --recipe badged --out DEMO_CLIP_BADGED_DIR``).
DEMO_CLIP_BADGED_DIR = "./saved_models/demo_clip_badged"
#: Labeled images of the badged configs (K = 8 seen (item, mark) classes: 100 each).
BADGE_NUM_LABELS = 800
#: Budget of the badged configs: every block tuned (the mark is learned from the lower blocks up) for
#: 1,000 iterations (docs/results/badged.md: at 2 tuned blocks and 500 iterations nothing reads the mark).
BADGE_TUNED_BLOCKS = 4
BADGE_TRAIN_ITER = 1000


def badged_backbone() -> DemoBackbone:
    """The fine-grained demo: fmnist_badged at 96 px (a 6 x 6 grid, the mark 2 x 2 patches) on its demo CLIP."""
    return DemoBackbone(
        suffix="_badged",
        keys=dict(
            pretrained=None,
            pretrain_path=f"{DEMO_CLIP_BADGED_DIR}/demo_clip_tiny.pt",
            pretrain_pool=f"{DEMO_CLIP_BADGED_DIR}/card.json",
            text_encoder="clip",
            dataset="fmnist_badged",
            num_classes=8,
            img_size=96,
            scene_size=96,
            scene_seed=0,
            badge_size=32,
            badge_items=["T-shirt/top", "Pullover", "Coat", "Bag"],
            badge_marks=[0, 1, 4],
            badge_erase=False,
            num_labels=BADGE_NUM_LABELS,
            num_tuned_blocks=BADGE_TUNED_BLOCKS,
            num_train_iter=BADGE_TRAIN_ITER,
            num_eval_iter=BADGE_TRAIN_ITER // 4,
        ),
        description=(
            "Data: fmnist_badged, 96 px images of one large Fashion-MNIST item carrying a 32 px red digit mark",
            "(2x2 patches of the 6x6 grid); seen classes: 4 items x marks 0 and 1; near-OOD: the same items",
            "with mark 4; far-OOD: the other 6 items. The mark's box gives the localization metrics.",
            "Backbone: the badged demo CLIP (python -m usb_cfsg_tools.demo_clip --recipe badged), clip_tiny at 96 px",
            "pretrained on a fixed half of the training images; captions name the item, and for a p_fine share",
            "also the mark. pretrain_pool names its card.",
            f"Build it first (once): python -m usb_cfsg_tools.demo_clip --recipe badged --out {DEMO_CLIP_BADGED_DIR}",
        ),
    )


#: Every demo algorithm gets one file per backbone.
DEMO_BACKBONES: Tuple[Callable[[], DemoBackbone], ...] = (
    demo_clip_backbone,
    randinit_backbone,
    scene_backbone,
    badged_backbone,
)


def demo_file(algorithm: str, stem: str, backbone: DemoBackbone) -> Tuple[str, str]:
    """``(relative path, text)`` of one demo config."""
    name = f"{stem}_fmnist{backbone.suffix}"
    cfg = dict(algorithm=algorithm, save_name=name, **DEMO_RECIPE)
    cfg.update(backbone.keys)
    overrides = dict(backbone.algorithm_keys.get(algorithm, {}))
    cfg.update({key: value for key, (value, _) in overrides.items()})
    cfg, comments = _with_algorithm(cfg, algorithm)
    comments.update({key: note for key, (_, note) in overrides.items()})
    others = [f"{s}_fmnist{backbone.suffix}" for a, s in DEMO_ALGORITHMS if a != algorithm]
    others_text = others[0] if len(others) == 1 else "{" + ",".join(others) + "}"
    header = _generated_header(
        [
            f"CPU demo: {algorithm} on badged Fashion-MNIST, classes 0-7 seen ((item, mark) pairs), 8-11 near-OOD,"
            if cfg["dataset"] == "fmnist_badged"
            else f"CPU demo: {algorithm} on {'cluttered ' if cfg['dataset'] == 'fmnist_cluttered' else ''}"
            "Fashion-MNIST, classes 0-5 seen (T-shirt/top ... Sandal), 6-9 unseen,",
            f"{cfg['num_labels'] // cfg['num_classes']} labeled images per seen class. Identical to the other demo "
            "configs of this backbone",
            f"(config/demo/{others_text}.yaml) except the algorithm keys."
            if others
            else "Same recipe as every demo config of this backbone.",
            "Files: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), found when ./data lacks it."
            if cfg["dataset"] in ("fmnist_cluttered", "fmnist_badged")
            else "Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), found when ./data lacks it.",
            *backbone.description,
            f"Run: python train.py --c config/demo/{name}.yaml",
        ]
    )
    return f"demo/{name}.yaml", render(cfg, header, comments)


def demo_files() -> Dict[str, str]:
    """``demo/<stem>_fmnist[<suffix>].yaml`` for every demo algorithm and backbone: the same CPU budget."""
    files: Dict[str, str] = {}
    for make_backbone in DEMO_BACKBONES:
        backbone = make_backbone()
        for algorithm, stem in DEMO_ALGORITHMS:
            rel, text = demo_file(algorithm, stem, backbone)
            files[rel] = text
    return files


def all_files() -> Dict[str, str]:
    """Every generated file: relative path -> text, sorted by path."""
    files: Dict[str, str] = {}
    files.update(openset_fg_files())
    files.update(cfsg_cub_file())
    files.update(demo_files())
    return dict(sorted(files.items()))


def write(out: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, path)


def check(out: Path, files: Dict[str, str]) -> List[str]:
    """Differences between ``files`` and the YAML files under ``out`` (empty when up to date)."""
    problems: List[str] = []
    present = {p.relative_to(out).as_posix() for p in out.rglob("*.yaml")} if out.is_dir() else set()
    for rel in sorted(present - set(files)):
        problems.append(f"{rel}: not generated by scripts/make_configs.py (remove it or add it to the generator)")
    for rel, text in files.items():
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        old = path.read_text(encoding="utf-8")
        if old != text:
            diff = "".join(
                difflib.unified_diff(
                    old.splitlines(True), text.splitlines(True), f"{rel} (on disk)", f"{rel} (generated)", n=1
                )
            )
            problems.append(f"{rel}: differs from the generator's output\n{diff}")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "config"), help="output folder (default: config/ of this repo)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from the output")
    opts = parser.parse_args(argv)
    out = Path(opts.out)
    files = all_files()
    if opts.check:
        problems = check(out, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{len(problems)} config file(s) out of date; regenerate with: {COMMAND}", file=sys.stderr)
            return 1
        print(f"{len(files)} config files up to date in {out}")
        return 0
    write(out, files)
    print(f"wrote {len(files)} config files under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
