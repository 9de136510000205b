"""The unknown scores, declared once: name, meaning, who reports them, how a threshold treats them.

Every score is higher = more unknown. A score is declared here and computed where its inputs are:

* ``msp`` and ``energy`` come from an algorithm's closed-set logits
  (:func:`usb_cfsg.engine.plugin.msp_and_energy`), for every algorithm, USB's included
  (``algorithms=("*",)``);
* a score in an algorithm's ``from_net`` is returned by that algorithm's net as ``score_<name>`` [B];
* any other is built by the algorithm's ``compute_unknown_scores`` from the net's outputs.

What reads the declarations: the ``ood_score`` choices of each algorithm (:mod:`usb_cfsg.algorithm_keys`),
the scores cfsg_clip and clip_zeroshot take from their nets, the threshold rule (``rank_only`` scores get
Otsu's threshold, :mod:`usb_cfsg.evaluation.thresholds`), and a contract test that runs every
algorithm's ``compute_unknown_scores`` and compares the names it returns with :func:`score_names`.

**To add a score**: one :func:`register_unknown_score` call below, and its computation (the net's
``score_<name>`` output for a ``from_net`` score, else a line in the algorithm's
``compute_unknown_scores``). It is then an ``ood_score`` choice of the algorithms it names, and every
report (per-score AUROC, ROC figure, ``open_scores.npz``) carries it.

Standard library only: :mod:`usb_cfsg.algorithm_keys` imports this module for ``--help`` and key checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .errors import RegistryError, did_you_mean

#: ``algorithms`` of a score every algorithm reports (computed from closed-set logits).
EVERY_ALGORITHM = "*"


@dataclass(frozen=True)
class UnknownScore:
    """One unknown score.

    Args:
        name: The key in score dicts, ``ood_score`` and reports (``energy``).
        summary: One line: what it is.
        algorithms: The algorithms that report it, or ``("*",)`` for every algorithm.
        from_net: Those of ``algorithms`` whose net returns it as ``score_<name>``.
        rank_only: Its values only rank images (no fixed cut such as ``ood_threshold`` is meaningful),
            so the ``otsu`` threshold rule gives it Otsu's threshold of its training values.
        reference: The paper and public code it follows.
    """

    name: str
    summary: str
    algorithms: Tuple[str, ...]
    from_net: Tuple[str, ...] = ()
    rank_only: bool = False
    reference: str = ""

    def reported_by(self, algorithm: str) -> bool:
        """Whether ``algorithm`` reports this score."""
        return EVERY_ALGORITHM in self.algorithms or algorithm in self.algorithms


_SCORES: Dict[str, UnknownScore] = {}  # declaration order is the order of choices and of score_names()


def register_unknown_score(
    name: str,
    summary: str,
    algorithms: Tuple[str, ...],
    from_net: Tuple[str, ...] = (),
    rank_only: bool = False,
    reference: str = "",
) -> UnknownScore:
    """Declare a score (a name declared twice is an error).

    Returns:
        The declaration.
    """
    if name in _SCORES:
        raise RegistryError(f"unknown score {name!r} is already declared ({_SCORES[name]})")
    if not algorithms:
        raise RegistryError(f"unknown score {name!r}: name the algorithms that report it (or '*')")
    stray = [a for a in from_net if a not in algorithms]
    if stray:
        raise RegistryError(f"unknown score {name!r}: from_net names {stray}, which are not in algorithms {algorithms}")
    score = UnknownScore(name, summary, tuple(algorithms), tuple(from_net), rank_only, reference)
    _SCORES[name] = score
    return score


def get_unknown_score(name: str) -> UnknownScore:
    """The declaration of ``name``; an undeclared name lists the declared ones and the closest."""
    try:
        return _SCORES[name]
    except KeyError:
        raise RegistryError(
            f"unknown score {name!r} is not declared{did_you_mean(name, _SCORES)} "
            f"Declared: {', '.join(_SCORES)} (usb_cfsg/unknown_scores.py)"
        ) from None


def score_names(algorithm: Optional[str] = None, from_net: bool = False) -> Tuple[str, ...]:
    """Declared names in declaration order: all, those ``algorithm`` reports, or (``from_net``) those its
    net returns as ``score_<name>``."""
    if from_net and algorithm is None:
        raise ValueError("score_names(from_net=True) needs an algorithm")
    return tuple(
        s.name
        for s in _SCORES.values()
        if (algorithm is None or s.reported_by(algorithm)) and (not from_net or algorithm in s.from_net)
    )


def rank_only_scores() -> frozenset:
    """Names of the scores whose values only rank images (``rank_only``)."""
    return frozenset(s.name for s in _SCORES.values() if s.rank_only)


# The declarations: each algorithm's own scores first, then the two every algorithm has.
register_unknown_score(
    "ova",
    "p_neg of the predicted class in the one-vs-all (multi-binary) head",
    ("cfsg_clip", "openmatch", "iomatch"),
    from_net=("cfsg_clip",),
    reference="OpenMatch (Saito et al., NeurIPS 2021), VisionLearningGroup/OP_Match",
)
register_unknown_score(
    "mcm",
    "1 - max softmax of cos(global feature, class texts) / T",
    ("cfsg_clip", "clip_zeroshot"),
    from_net=("cfsg_clip", "clip_zeroshot"),
    rank_only=True,
    reference="MCM (Ming et al., NeurIPS 2022), deeplearning-wisc/MCM",
)
register_unknown_score(
    "glmcm",
    "1 - (global MCM + the largest patch MCM) / 2",
    ("cfsg_clip", "clip_zeroshot"),
    from_net=("cfsg_clip", "clip_zeroshot"),
    rank_only=True,
    reference="GL-MCM (Miyai et al., 2023), AtsuMiyai/GL-MCM",
)
register_unknown_score(
    "fused",
    "mean of ova and glmcm, each mapped to [0, 1] by its range on unlabeled training images",
    ("cfsg_clip",),
)
register_unknown_score(
    "open",
    "unknown probability of the (K+1)-way open-set head",
    ("iomatch",),
    reference="IOMatch (Li et al., ICCV 2023), nukezil/IOMatch",
)
register_unknown_score(
    "mb",
    "unknown entry of the open-set targets built from the closed-set and multi-binary heads",
    ("iomatch",),
    reference="IOMatch (Li et al., ICCV 2023), nukezil/IOMatch",
)
register_unknown_score(
    "msp",
    "1 - max softmax of the closed-set logits",
    (EVERY_ALGORITHM,),
    reference="Hendrycks & Gimpel, ICLR 2017",
)
register_unknown_score(
    "energy",
    "-T logsumexp(logits / T) of the closed-set logits (T = energy_temperature)",
    (EVERY_ALGORITHM,),
    reference="Liu et al., NeurIPS 2020, wetliu/energy_ood",
)

__all__ = [
    "EVERY_ALGORITHM",
    "UnknownScore",
    "get_unknown_score",
    "rank_only_scores",
    "register_unknown_score",
    "score_names",
]
