"""get_dataset raises on an unknown name instead of returning None."""

import argparse
import ast
import inspect
import textwrap

import pytest
from semilearn.core.utils import get_dataset


def test_an_unknown_dataset_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown dataset 'cifar01', did you mean 'cifar10'"):
        get_dataset(argparse.Namespace(), "fixmatch", "cifar01", 40, 10)


def test_no_dataset_builds_nothing():
    assert get_dataset(argparse.Namespace(), "fixmatch", None, 40, 10) is None


def _compared_names(func):
    """The dataset names get_dataset's branches compare `dataset` with (`==` or `in [...]`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "dataset":
            for right in node.comparators:
                values = right.elts if isinstance(right, (ast.List, ast.Tuple)) else [right]
                names.update(v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return names


def test_the_known_names_are_the_names_get_dataset_handles():
    from semilearn.core.utils import build

    assert sorted(build.dataset_names()) == sorted(_compared_names(build.get_dataset))
