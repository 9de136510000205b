"""get_dataset raises on an unknown name instead of returning None."""

import argparse

import pytest
from semilearn.core.utils import get_dataset


def test_an_unknown_dataset_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown dataset 'cifar01', did you mean 'cifar10'"):
        get_dataset(argparse.Namespace(), "fixmatch", "cifar01", 40, 10)


def test_no_dataset_builds_nothing():
    assert get_dataset(argparse.Namespace(), "fixmatch", None, 40, 10) is None
