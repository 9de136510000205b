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
