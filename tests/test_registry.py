"""Our names resolve through semilearn's own lookups; clashes raise instead of printing."""

import pytest
import semilearn.nets
from semilearn.core.utils import ALGORITHMS, get_net_builder

import usb_cfsg  # noqa: F401
from usb_cfsg.algorithms import get_algorithm_class, register_algorithm
from usb_cfsg.errors import RegistryError
from usb_cfsg.nets import BUILDERS, register_nets
from usb_cfsg.registry import Registry


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_nets_resolve_through_semilearn(name):
    assert get_net_builder(name, False) is BUILDERS[name]


def test_usb_algorithms_resolve():
    assert get_algorithm_class("fixmatch") is ALGORITHMS["fixmatch"]


def test_algorithm_clash_raises():
    class Impostor:
        pass

    with pytest.raises(RegistryError, match="'fixmatch' is already registered"):
        register_algorithm("fixmatch")(Impostor)
    assert ALGORITHMS["fixmatch"] is not Impostor


def test_net_clash_raises(monkeypatch):
    monkeypatch.setattr(semilearn.nets, "clip_tiny", lambda **kw: None)
    with pytest.raises(RegistryError, match="'clip_tiny' already exists"):
        register_nets()


def test_registry_duplicate_and_unknown():
    reg = Registry("widget")
    reg.register("alpha")(int)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha")(float)
    with pytest.raises(RegistryError, match=r"unknown widget 'alpah', did you mean 'alpha'"):
        reg.get("alpah")


def test_every_declared_algorithm_is_a_registered_module_of_its_name():
    """An algorithm of this package is its module and its keys' entry: the package imports
    ``usb_cfsg/algorithms/<name>.py`` for every declared name, and each module registers that name."""
    from usb_cfsg import algorithm_keys

    for name in algorithm_keys.ALGORITHMS:
        assert get_algorithm_class(name).__module__ == f"usb_cfsg.algorithms.{name}"


def test_keys_without_a_module_name_the_missing_file(tmp_path):
    import subprocess
    import sys

    code = (
        "import usb_cfsg.algorithm_keys as k; k.ALGORITHMS['toy_missing'] = k.ALGORITHMS['openmatch']; "
        "import usb_cfsg.algorithms"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "algorithm 'toy_missing' has keys in usb_cfsg/algorithm_keys.py but no module" in run.stderr
    assert "usb_cfsg/algorithms/toy_missing.py" in run.stderr
