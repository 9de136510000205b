"""semilearn 0.3.2 without the packages it imports but our code paths never use.

``import semilearn`` imports, at import time, ``wandb`` (``core/hooks/wandb.py``), ``aim``
(``core/hooks/aim.py``), ``torchaudio`` (its audio datasets) and ``skimage`` (its MedMNIST reader),
so pip's requirement set of semilearn brings them, with aim's web UI, database, AWS and web-server
stacks: about 340 MB (measured; ``README.md``, "Install"). None of them is on a code path of ours:
the hooks run only with ``use_wandb`` / ``use_aim``, the readers only for USB's audio and MedMNIST
datasets. ``make install`` therefore installs semilearn with ``--no-deps`` and our own requirement
list (``setup.py``), and :func:`stand_ins` lets ``import semilearn`` succeed without them.

While semilearn's package executes (``usb_cfsg/__init__.py`` wraps it), each of
:data:`OPTIONAL_MODULES` that is **not installed** is served by a stand-in module, and the stand-ins
leave ``sys.modules`` again once semilearn has imported: nothing else (open_clip, timm, ...) ever sees
them, and an installed package is always the real one. Any use of a stand-in (``wandb.init(...)``)
raises :class:`MissingOptionalPackage` naming the package to install; ``use_wandb: true`` /
``use_aim: true`` are refused earlier, with the same advice, by the configuration check
(:func:`missing_for_config`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .errors import UsbCfsgError

#: Packages semilearn imports at import time that our code paths never use -> what needs them.
OPTIONAL_MODULES: Dict[str, str] = {
    "wandb": "use_wandb: true (USB's WANDBHook)",
    "aim": "use_aim: true (USB's AimHook)",
    "torchaudio": "USB's audio datasets",
    "skimage": "USB's MedMNIST datasets",
}
#: The pip requirement that installs each of them (the distribution's name where it differs).
PIP_NAMES: Dict[str, str] = {"wandb": "wandb", "aim": "aim", "torchaudio": "torchaudio", "skimage": "scikit-image"}
#: Config keys that need an optional package when true.
CONFIG_NEEDS: Dict[str, str] = {"use_wandb": "wandb", "use_aim": "aim"}


class MissingOptionalPackage(UsbCfsgError, ImportError):
    """A stand-in for a package this installation leaves out was used."""


def install_advice(module: str) -> str:
    """How to install ``module``: the pip command, with the tested pin of ``constraints.txt``."""
    pip = PIP_NAMES.get(module, module)
    return f"pip install {pip}  (from a checkout, the tested version: pip install -c constraints.txt {pip})"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported for real (a stand-in in ``sys.modules`` does not count)."""
    current = sys.modules.get(module)
    if isinstance(current, _StandIn):
        return False
    if current is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_for_config(args: Any) -> List[str]:
    """Problems of a configuration that needs a package this installation leaves out (one message each)."""
    get = args.get if isinstance(args, dict) else (lambda k, d=None: getattr(args, k, d))
    problems = []
    for key, module in CONFIG_NEEDS.items():
        if get(key, False) is True and not is_installed(module):
            problems.append(
                f"{key}: true needs the {module} package, which this installation leaves out (make install "
                f"installs semilearn without wandb and aim): {install_advice(module)}"
            )
    return problems


def _fail(module: str, what: str) -> MissingOptionalPackage:
    return MissingOptionalPackage(
        f"{what} needs the {module} package, which is not installed (needed for "
        f"{OPTIONAL_MODULES.get(module.split('.')[0], 'this feature')}): {install_advice(module.split('.')[0])}"
    )


class _MissingMeta(type):
    """Metaclass of the placeholders: any class attribute (``BertModel.from_pretrained``) fails clearly."""

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise _fail(cls.__module__, f"{cls.__qualname__}.{attr}")


class _StandIn(ModuleType):
    """A module whose every attribute is a placeholder class that fails clearly when used.

    Placeholders are classes (not functions) so that semilearn's import-time uses of them, such as
    ``Union[bool, str, PaddingStrategy]`` in a dataclass field, still work.
    """

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        module = self.__name__

        def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
            raise _fail(module, f"{module}.{attr}")

        placeholder = _MissingMeta(attr, (), {"__init__": __init__, "__module__": module, "__qualname__": attr})
        setattr(self, attr, placeholder)
        return placeholder


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return _StandIn(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        module.__path__ = []  # a package: submodule imports (``from skimage.util import montage``) work


class _StandInFinder(importlib.abc.MetaPathFinder):
    """Serves stand-ins for the given top-level modules (found not installed) and their submodules."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = frozenset(roots)

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        if fullname.split(".")[0] not in self.roots:
            return None
        return importlib.machinery.ModuleSpec(fullname, _StandInLoader(), is_package=True)


@contextlib.contextmanager
def stand_ins(modules: Sequence[str] = tuple(OPTIONAL_MODULES)) -> Iterator[List[str]]:
    """Within the block, the modules of ``modules`` that are not installed import as stand-ins.

    Yields the names given stand-ins. On exit the stand-ins (and the finder) leave ``sys.modules``;
    modules imported within the block keep the references they took.
    """
    missing = [m for m in modules if m not in sys.modules and not is_installed(m)]
    if not missing:
        yield []
        return
    finder = _StandInFinder(missing)
    sys.meta_path.insert(0, finder)  # only for modules found missing above
    try:
        yield missing
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
        for name in [n for n, mod in sys.modules.items() if isinstance(mod, _StandIn)]:
            del sys.modules[name]


__all__ = [
    "CONFIG_NEEDS",
    "MissingOptionalPackage",
    "OPTIONAL_MODULES",
    "PIP_NAMES",
    "install_advice",
    "is_installed",
    "missing_for_config",
    "stand_ins",
]
