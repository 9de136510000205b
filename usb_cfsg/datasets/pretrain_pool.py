"""A demo CLIP card's pretraining pool, kept out of the open-set data (``pretrain_pool: <dir>/card.json``).

``python -m usb_cfsg_tools.demo_clip`` trains the demo CLIP on a pool of Fashion-MNIST training images and
writes the pool's indices into its card. A config naming the card makes the dataset drop those images
before the open-set split, so none is ever a labeled or unlabeled image. Reading the card and removing
the pool is data-layer work and lives here; the demo CLIP tool imports it, never the other way round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..errors import ConfigError, DatasetError
from .base import SourceData, take

logger = logging.getLogger("usb_cfsg")

#: The card's file name in a demo CLIP folder.
CARD_FILE = "card.json"
#: The dataset the demo CLIP's pool indexes.
DEMO_DATASET = "fmnist_openset"


def load_card(path: str) -> Dict[str, Any]:
    """Read and check a demo CLIP card.

    Args:
        path: ``card.json`` written by :func:`build_demo_clip` (or the folder holding it).

    Returns:
        The card.

    Raises:
        ConfigError: When the file is missing or not a demo CLIP card; the message says how to build one.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CARD_FILE
    build = "build one with: python -m usb_cfsg_tools.demo_clip --out ./saved_models/demo_clip (or make demo)"
    if not p.is_file():
        raise ConfigError(f"pretrain_pool {str(p)!r} does not exist; {build}")
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"pretrain_pool {str(p)!r} is not a readable JSON card ({exc}); {build}") from None
    pool = card.get("pool") if isinstance(card, dict) else None
    if not isinstance(pool, dict) or not isinstance(pool.get("indices"), list) or "num_train" not in pool:
        raise ConfigError(
            f"pretrain_pool {str(p)!r} is not a demo CLIP card (no pool.indices / pool.num_train); {build}"
        )
    return card


#: Datasets whose training sets are the same images in the same order as another's, so that a card
#: made on one applies to the other (the cluttered scenes: scene i shows Fashion-MNIST training image i).
POOL_FAMILIES: Dict[str, str] = {"fmnist_cluttered": DEMO_DATASET, "fmnist_badged": DEMO_DATASET}


def _pool_family(dataset: Any) -> Any:
    return POOL_FAMILIES.get(dataset, dataset)


def pool_indices(card: Dict[str, Any], num_train: int, dataset: str = DEMO_DATASET) -> np.ndarray:
    """The pretraining pool of a card, checked against the training set it indexes.

    Args:
        card: From :func:`load_card`.
        num_train: Size of the training set being read.
        dataset: The dataset being read.

    Returns:
        Sorted unique int64 indices.

    Raises:
        DatasetError: When the card was made for another dataset or another training-set size.
    """
    if _pool_family(card.get("dataset")) != _pool_family(dataset):
        raise DatasetError(
            f"pretrain_pool: the card was made on {card.get('dataset')!r}, not {dataset!r}; "
            f"remove pretrain_pool or use a card built on {dataset}"
        )
    if int(card["pool"]["num_train"]) != int(num_train):
        raise DatasetError(
            f"pretrain_pool: the card's pool indexes {card['pool']['num_train']} training images, "
            f"this {dataset} has {num_train}; rebuild the demo CLIP on these files"
        )
    idx = np.unique(np.asarray(card["pool"]["indices"], dtype=np.int64))
    if idx.size and (idx[0] < 0 or idx[-1] >= num_train):
        raise DatasetError(f"pretrain_pool: pool indices outside 0..{num_train - 1}")
    return idx


def without_pretrain_pool(source: SourceData, card_path: str) -> SourceData:
    """The dataset with a demo CLIP card's pretraining images removed from its training set.

    The open-set split then draws labeled and unlabeled images from the remaining training images
    only (its indices index that remainder); the test set is untouched.

    Args:
        source: The dataset as its reader returns it.
        card_path: The card (``pretrain_pool`` in a config).

    Returns:
        A copy of ``source`` whose ``train_items``/``train_targets`` exclude the pool.

    Raises:
        ConfigError: When the card is missing or malformed.
        DatasetError: When the card was made on another dataset or another training-set size.
    """
    card = load_card(card_path)
    n = len(source.train_items)
    pool = pool_indices(card, n, source.name)
    keep = np.setdiff1d(np.arange(n, dtype=np.int64), pool)
    logger.info(
        "%s: %d of %d training images are the demo CLIP's pretraining pool (%s) and are left out; "
        "labeled and unlabeled images come from the other %d",
        source.name,
        len(pool),
        n,
        card_path,
        len(keep),
    )
    return dataclasses.replace(
        source, train_items=take(source.train_items, keep), train_targets=np.asarray(source.train_targets)[keep]
    )
