"""The unknown-score declarations and the contract every algorithm's ``compute_unknown_scores`` keeps
with them: it returns exactly the scores declared for it, each [N] float, and its headline is one."""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest

from usb_cfsg import algorithm_keys
from usb_cfsg.errors import RegistryError
from usb_cfsg.unknown_scores import (
    get_unknown_score,
    rank_only_scores,
    register_unknown_score,
    score_names,
)

N, K = 5, 3


def _outputs(algorithm: str) -> dict:
    """Net outputs of N images with the keys each algorithm's net returns."""
    rng = np.random.default_rng(0)
    out = {"logits": rng.normal(size=(N, K)).astype(np.float32)}
    for name in score_names(algorithm, from_net=True):
        out[f"score_{name}"] = rng.uniform(size=N)
    if algorithm == "openmatch":
        out["logits_ova"] = rng.normal(size=(N, 2, K)).astype(np.float32)
    if algorithm == "iomatch":
        out["logits_mb"] = rng.normal(size=(N, 2, K))
        out["logits_open"] = rng.normal(size=(N, K + 1))
    return out


@pytest.mark.parametrize("algorithm", ["cfsg_clip", "clip_zeroshot", "openmatch", "iomatch", "fixmatch"])
def test_every_algorithm_returns_exactly_its_declared_scores(algorithm):
    from usb_cfsg.engine.plugin import plugin_class

    cls = plugin_class(algorithm)
    declared = score_names(algorithm)
    args = Namespace(ood_score=declared[0], energy_temperature=1.0)
    scores, primary = cls.compute_unknown_scores(_outputs(algorithm), args)
    assert set(scores) == set(declared), (algorithm, sorted(scores), declared)
    assert primary in declared
    for name, values in scores.items():
        assert np.asarray(values).shape == (N,) and np.isfinite(values).all(), name


def test_ood_score_choices_are_the_declared_scores():
    keys = {a: {k.name: k for k in algorithm_keys.ALGORITHMS[a].keys} for a in ("cfsg_clip", "clip_zeroshot")}
    assert keys["cfsg_clip"]["ood_score"].choices == score_names("cfsg_clip")
    assert keys["clip_zeroshot"]["ood_score"].choices == score_names("clip_zeroshot")
    assert score_names("fixmatch") == ("msp", "energy")  # what every USB algorithm gets from its logits


def test_the_nets_read_their_declared_scores():
    from usb_cfsg.algorithms.clip_zeroshot import NET_ZS_SCORES
    from usb_cfsg.nets.cfsg import NET_SCORES, OOD_SCORES

    assert NET_SCORES == ("ova", "mcm", "glmcm") and NET_ZS_SCORES == ("mcm", "glmcm")
    assert OOD_SCORES == score_names("cfsg_clip")


def test_rank_only_scores_get_otsu_thresholds():
    from usb_cfsg.evaluation.thresholds import RANK_ONLY_SCORES

    assert RANK_ONLY_SCORES == rank_only_scores() == {"mcm", "glmcm"}


def test_undeclared_and_twice_declared_names_fail_with_the_fix():
    with pytest.raises(RegistryError, match=r"'enrgy' is not declared.*energy"):
        get_unknown_score("enrgy")
    with pytest.raises(RegistryError, match="already declared"):
        register_unknown_score("energy", "again", ("*",))
    with pytest.raises(RegistryError, match="from_net names"):
        register_unknown_score("new_score", "x", ("openmatch",), from_net=("cfsg_clip",))
    with pytest.raises(ValueError, match="needs an algorithm"):
        score_names(from_net=True)
    assert "new_score" not in score_names()  # a failed declaration leaves nothing behind
