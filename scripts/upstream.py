"""Generate ``patches/``: this plug-in as a patch series for USB (microsoft/Semi-supervised-learning).

    python -m scripts.upstream --out patches/            # (re)write the series and patches/README.md
    python -m scripts.upstream --out patches/ --check    # exit 1 if patches/ is not a fresh generation

The series applies with ``git am`` to USB at the commit released as ``semilearn==0.3.2``
(:data:`USB_COMMIT`). Only three parts of that commit are touched, so the base tree is defined as:

* ``semilearn/``: the installed ``semilearn==0.3.2`` wheel, whose ``semilearn/`` tree is byte-identical
  to the commit's (git tree :data:`SEMILEARN_TREE`; checked on every generation);
* ``train.py`` and ``docs/algorithm_zoo.md``: the commit's files, kept unmodified in ``patches/base/``
  (the wheel does not ship them) and checked against their git blob hashes (:data:`BASE_FILES`).

The series has three kinds of patches:

1. Fixes of USB problems the plug-in works around (:data:`FIXES`): hand-written edits of USB code.
2. The open-set code: our modules, *moved* into the semilearn layout (:data:`PACKAGE_MAP`) with their
   imports rewritten to absolute ``semilearn.`` imports and ``usb_cfsg.`` references in the text
   rewritten to their new modules -- nothing else changes, so the patched tree runs the code the
   plug-in runs. The algorithms come from ``usb_cfsg.algorithms._MODULES`` (new ones join
   automatically); every module they import, directly or lazily, comes along.
3. Glue in USB's own files (registration in ``ALL_MODULES``, net exports, ``get_dataset`` branches,
   ``train.py`` defaults of the open-set keys), configs and the docs' algorithm list.

Output is deterministic: fixed author and dates, full blob hashes, zeroed commit ids, no signature.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import filecmp
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger("usb_cfsg")

#: microsoft/Semi-supervised-learning commit released as semilearn 0.3.2
USB_COMMIT = "a8ec1d7b2c3bee96f490acc7745311ce6c6d1584"
#: git tree hash of that commit's ``semilearn/`` folder (equal to the wheel's ``semilearn/``)
SEMILEARN_TREE = "ab271eb9b206e4825becd545e040449b97d813c2"
#: files of that commit outside ``semilearn/`` the series touches -> their git blob hashes
BASE_FILES: Dict[str, str] = {
    "train.py": "3ba78ba316032dc9814e1182a7f3f2702f3fb716",
    "docs/algorithm_zoo.md": "c5ef6102963958959fb88fa83cca087e0bb8dd95",
    "setup.py": "c7d9d44abdd196bb35b13724edecf5058b1f37df",
    "requirements.txt": "56cc617640d0fd7f824c3e6494faa855ee41d006",
    "README.md": "95c7648fccedce4b455426518b62bf50fd8c25f8",
}
#: USB's GitHub main as last checked by hand (``USB_MAIN_CLONE=<clone> pytest tests/test_upstream.py``):
#: commit, its date, the date of the check and what it found; written into patches/README.md.
MAIN_CHECK: Dict[str, str] = {
    "commit": "1ef4cbebcc0b368158315aeb425053858cf6c845",
    "commit_date": "2025-09-24",
    "checked": "2026-12-06 with `USB_MAIN_CLONE=<clone> pytest tests/test_upstream.py` (clone of the fetched "
    "GitHub snapshot; CPU, torch 2.14.1, timm 1.0.31, scikit-learn 1.9.1)",
    "result": "rebased. The series generate against main (the hand-written edits of algorithmbase.py and "
    "build.py carry main's text as alternatives; the mechanical ones follow main, e.g. MultiMatch's `.cuda()`); "
    "each fix alone, the fixes series alone, each open-set series after the ones it needs and everything "
    "together apply with `git am`; the series' own tests pass in the patched tree, none skipped. Main itself "
    "does not import with timm 1.0 (`timm.models.layers.helpers`), which the timm fix repairs. Not fixed here, "
    "since 0.3.2 does not have the code: main's `evaluate()` scores top-5 accuracy with sklearn's "
    "`top_k_accuracy_score`, which raises on a two-class evaluation set (the tests' semi_aves replica has five "
    "classes), and main's TimerHook logs `train/prefecth_time`.",
}
#: Names of the plug-in and its development setup that must not appear in the patched USB tree.
FORBIDDEN_NAMES: Tuple[str, ...] = ("usb_cfsg", "usb-cfsg", "UsbCfsg", "make_configs", ".venv", "demo_clip")
AUTHOR_NAME = "CFSG-CLIP contributors"
AUTHOR_EMAIL = "cfsg-clip@users.noreply.github.com"
#: fixed author/committer date of every commit, so regeneration is byte-identical
DATE = "2026-01-01T00:00:00+00:00"
REGENERATE = "python -m scripts.upstream --out patches/"

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = REPO_ROOT / "usb_cfsg"

#: usb_cfsg package -> semilearn package of its modules (longest prefix wins). ``usb_cfsg.algorithms.<m>``
#: becomes ``semilearn.algorithms.<m>.<m>`` and ``usb_cfsg.algorithms`` itself (the registration
#: helpers) ``semilearn.core.openset.algorithms``: see :func:`target_module`.
PACKAGE_MAP: Tuple[Tuple[str, str], ...] = (
    ("usb_cfsg.modules", "semilearn.nets.clip.modules"),
    ("usb_cfsg.nets", "semilearn.nets.clip"),
    ("usb_cfsg.datasets", "semilearn.datasets.openset_datasets"),
    ("usb_cfsg.evaluation", "semilearn.core.hooks.openset"),
    ("usb_cfsg.engine", "semilearn.core.openset"),
    ("usb_cfsg", "semilearn.core.openset"),
)
#: Packages whose ``__init__`` is moved with them (the others get a generated docstring-only ``__init__``).
MOVED_INITS = ("usb_cfsg.modules", "usb_cfsg.nets", "usb_cfsg.datasets", "usb_cfsg.evaluation")
#: Plug-in only: never part of the series (importing one of them from moved code is an error).
PLUGIN_ONLY: Dict[str, str] = {
    "usb_cfsg": "registers everything with an unpatched semilearn; the patched tree registers by its own imports",
    "usb_cfsg.engine": "package __init__ re-exports the launcher",
    "usb_cfsg.engine.launch": "replaces USB's train.py main/main_worker; the series fixes train.py instead",
    "usb_cfsg.evaluation.offline": "eval.py of the plug-in (checkpoint format of its own launcher)",
    "usb_cfsg.evaluation.predict": "predict.py of the plug-in",
    "usb_cfsg.cli": "the plug-in's commands (train, eval, predict); the series fixes USB's own train.py instead",
}
#: Paper links of the algorithms, for the docs' list (an algorithm without one is listed without a link).
PAPERS: Dict[str, str] = {
    "openmatch": "https://arxiv.org/abs/2105.14148",
    "iomatch": "https://arxiv.org/abs/2308.13168",
    "clip_zeroshot": "https://arxiv.org/abs/2211.13445",
}
#: Where no link is known: the paper as authors, venue.
REFERENCES: Dict[str, str] = {"cfsg_clip": "Li, Huang, Guan, CVPR 2025"}
DISPLAY_NAMES: Dict[str, str] = {
    "cfsg_clip": "CFSG-CLIP",
    "openmatch": "OpenMatch",
    "iomatch": "IOMatch",
    "clip_zeroshot": "CLIP zero-shot (MCM / GL-MCM)",
}


class UpstreamError(RuntimeError):
    """The series cannot be generated (base tree differs, an edit does not apply, an import cannot move)."""


# ---------------------------------------------------------------------------------------------- modules
def module_file(name: str) -> Path:
    """Source file of a ``usb_cfsg`` module or package (its ``__init__.py``)."""
    rel = Path(*name.split("."))
    pkg = REPO_ROOT / rel / "__init__.py"
    if pkg.is_file():
        return pkg
    mod = REPO_ROOT / rel.with_suffix(".py")
    if mod.is_file():
        return mod
    raise UpstreamError(f"no module {name!r} under {REPO_ROOT}")


def is_package(name: str) -> bool:
    return (REPO_ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def module_exists(name: str) -> bool:
    try:
        module_file(name)
        return True
    except UpstreamError:
        return False


def algorithm_modules() -> Tuple[str, ...]:
    """The algorithm modules of the package (``usb_cfsg.algorithms._MODULES``), in registration order."""
    return tuple(importlib.import_module("usb_cfsg.algorithms")._MODULES)


def target_module(name: str) -> str:
    """The semilearn module a ``usb_cfsg`` module moves to.

    Raises:
        UpstreamError: ``name`` stays plug-in only.
    """
    if name in PLUGIN_ONLY:
        raise UpstreamError(f"{name} stays plug-in only ({PLUGIN_ONLY[name]})")
    if name == "usb_cfsg.algorithms":
        return "semilearn.core.openset.algorithms"
    if name.startswith("usb_cfsg.algorithms."):
        leaf = name.split(".")[2]
        return f"semilearn.algorithms.{leaf}.{leaf}" + name[len(f"usb_cfsg.algorithms.{leaf}") :]
    for src, dst in PACKAGE_MAP:
        if name == src or name.startswith(src + "."):
            return dst + name[len(src) :]
    raise UpstreamError(f"{name} is not a usb_cfsg module")


def target_path(name: str) -> str:
    """Repository path of the file :func:`target_module` ``(name)`` lives in."""
    rel = target_module(name).replace(".", "/")
    if name in MOVED_INITS:
        return rel + "/__init__.py"
    return rel + ".py"


def _absolute(current: str, level: int, module: Optional[str]) -> str:
    """Absolute name of ``from <'.' * level><module> import ...`` written in module ``current``."""
    if level == 0:
        return module or ""
    package = current if is_package(current) else current.rsplit(".", 1)[0]
    parts = package.split(".")
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


@dataclasses.dataclass
class ImportRef:
    """One import statement of a module that names usb_cfsg code."""

    lineno: int
    col: int
    source: str  # the module written in the statement ("..modules", "usb_cfsg.x")
    absolute: str  # its absolute name
    names: Tuple[str, ...]  # names of a from-import ("" for ``import x``)
    is_from: bool


def usb_imports(name: str) -> List[ImportRef]:
    """Every import statement of module ``name`` (top level or inside functions) that names usb_cfsg code."""
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    refs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            absolute = _absolute(name, node.level, node.module)
            if absolute == "usb_cfsg" or absolute.startswith("usb_cfsg."):
                written = "." * node.level + (node.module or "")
                refs.append(
                    ImportRef(node.lineno, node.col_offset, written, absolute, tuple(a.name for a in node.names), True)
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "usb_cfsg" or alias.name.startswith("usb_cfsg."):
                    refs.append(ImportRef(node.lineno, node.col_offset, alias.name, alias.name, ("",), False))
    return sorted(refs, key=lambda r: (r.lineno, r.col))


def imported_modules(name: str) -> List[str]:
    """The usb_cfsg modules module ``name`` imports (a from-import of a submodule counts the submodule)."""
    out = []
    for ref in usb_imports(name):
        out.append(ref.absolute)
        if ref.is_from:
            out.extend(f"{ref.absolute}.{n}" for n in ref.names if module_exists(f"{ref.absolute}.{n}"))
    return out


def closure(roots: Iterable[str]) -> List[str]:
    """``roots`` and every usb_cfsg module they import, transitively, sorted.

    Packages that are only a path to a submodule (``usb_cfsg.engine`` in ``from ..engine.plugin import``)
    are not included unless imported themselves.

    Raises:
        UpstreamError: a module of the closure imports a plug-in-only module.
    """
    seen: Dict[str, str] = {}
    todo = [(r, "root") for r in roots]
    while todo:
        name, by = todo.pop()
        if name in seen:
            continue
        if name in PLUGIN_ONLY:
            raise UpstreamError(
                f"{by} imports {name}, which stays plug-in only ({PLUGIN_ONLY[name]}); import "
                f"the module you need directly, or move it out of {name}"
            )
        seen[name] = by
        todo.extend((m, name) for m in imported_modules(name))
    return sorted(seen)


# ------------------------------------------------------------------------------------------ transform
_FROM_RE = re.compile(r"from\s+([.\w]+)\s+import\b")
_IMPORT_RE = re.compile(r"import\s+([.\w]+)")
_REF_RE = re.compile(r"\busb_cfsg((?:\.\w+)+)")


#: Roots of the moved code: every algorithm module, and the packages the series adds.
MOVED_ROOTS: Tuple[str, ...] = (
    "usb_cfsg.algorithms",
    "usb_cfsg.nets",
    "usb_cfsg.modules",
    "usb_cfsg.datasets",
    "usb_cfsg.evaluation",
    "usb_cfsg.engine.plugin",
)
_MOVED_CACHE: Dict[str, Tuple[str, ...]] = {}


def moved_modules() -> Tuple[str, ...]:
    """Every module the series moves into semilearn (cached; :func:`generate` clears the cache)."""
    if "all" not in _MOVED_CACHE:
        roots = [f"usb_cfsg.algorithms.{m}" for m in algorithm_modules()] + list(MOVED_ROOTS)
        _MOVED_CACHE["all"] = tuple(closure(roots))
    return _MOVED_CACHE["all"]


def _rewrite_refs(text: str) -> str:
    """Rewrite ``usb_cfsg.<module>[.<attr>...]`` references of moved modules to their semilearn names
    (references of modules that stay in the plug-in are left to :func:`sanitize`)."""
    moved = set(moved_modules())

    def repl(match: re.Match) -> str:
        parts = ("usb_cfsg" + match.group(1)).split(".")
        for n in range(len(parts), 1, -1):
            mod = ".".join(parts[:n])
            if module_exists(mod):
                if mod not in moved:
                    return match.group(0)
                return ".".join([target_module(mod)] + parts[n:])
        return match.group(0)

    return _REF_RE.sub(repl, text)


_PATH_RE = re.compile(r"\busb_cfsg/([\w/]+)\.py\b")
_PLUGIN_REF_RE = re.compile(r"(?:python -m )?\busb_cfsg((?:\.\w+)+)")
#: the plug-in's tools beside its package (``python -m usb_cfsg_tools.compare``, ``usb-cfsg-demo-clip``)
_TOOL_REF_RE = re.compile(r"(?:python -m )?\busb_cfsg_tools\.(\w+)|\busb-cfsg-([\w-]+)")


def sanitize(text: str) -> str:
    """Text of the patched USB tree without the plug-in's names (:data:`FORBIDDEN_NAMES`).

    After :func:`_rewrite_refs`, what still names the plug-in is rewritten generically:
    ``usb_cfsg/<module>.py`` paths of moved modules become their semilearn paths; a reference of a
    module that stays plug-in only (``python -m usb_cfsg.evaluation.predict``) becomes "the CFSG-CLIP
    plug-in's evaluation predict tool", one of the plug-in's tools (``python -m usb_cfsg_tools.compare``,
    ``usb-cfsg-compare``) "the CFSG-CLIP plug-in's compare tool"; identifiers ``usb_cfsg_*`` become
    ``openset_*`` and ``UsbCfsg*`` ``OpenSet*``; the package name itself (logger names, checkpoint tags, messages) becomes
    ``semilearn``; ``demo_clip`` (the plug-in's demo) becomes "demo CLIP".
    """
    moved = set(moved_modules())

    def path(match: re.Match) -> str:
        mod = "usb_cfsg." + match.group(1).replace("/", ".")
        if mod.endswith(".__init__"):
            mod = mod[: -len(".__init__")]
        if module_exists(mod) and mod in moved:
            return target_path(mod)
        return "the CFSG-CLIP plug-in's " + match.group(1).replace("/", " ").replace("_", " ")

    def plugin_ref(match: re.Match) -> str:
        parts = match.group(1).strip(".").split(".")
        if not any(module_exists(".".join(["usb_cfsg"] + parts[:n])) for n in range(1, len(parts) + 1)):
            return match.group(0).replace("usb_cfsg", "semilearn")  # a name, not a module (format tags)
        return "the CFSG-CLIP plug-in's " + " ".join(parts).replace("_", " ") + " tool"

    def tool_ref(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return "the CFSG-CLIP plug-in's " + name.replace("_", " ").replace("-", " ") + " tool"

    text = _TOOL_REF_RE.sub(tool_ref, text)
    text = _PATH_RE.sub(path, text)
    text = _PLUGIN_REF_RE.sub(plugin_ref, text)
    text = re.sub(r"\busb_cfsg_(?=\w)", "openset_", text)
    text = text.replace("UsbCfsg", "OpenSet")
    text = re.sub(r"\busb_cfsg\b", "semilearn", text)
    text = text.replace("usb-cfsg", "semilearn")
    # identifiers keep working (renamed consistently in every moved file: demo_clip_sha256 -> democlip_sha256);
    # the word itself (the plug-in's demo tool) becomes words
    text = re.sub(r"(?<=\w)demo_clip|demo_clip(?=\w)", "democlip", text)
    return text.replace("demo_clip", "demo CLIP")


def sanitize_config(text: str) -> str:
    """A config file for the USB tree: comment lines naming the plug-in's tools dropped, the rest sanitized."""
    lines = [
        line
        for line in text.splitlines(keepends=True)
        if not (line.lstrip().startswith("#") and any(n in line for n in FORBIDDEN_NAMES + ("scripts/",)))
    ]
    return sanitize("".join(lines))


def forbidden_names(text: str) -> List[str]:
    """The :data:`FORBIDDEN_NAMES` that occur in ``text``."""
    return [n for n in FORBIDDEN_NAMES if n in text]


def _drop_registration_loop(name: str, source: str) -> str:
    """``usb_cfsg.algorithms`` imports its algorithm modules in a top-level loop over ``_MODULES``;
    semilearn imports them through ``ALL_MODULES`` instead, so the moved helpers module drops that loop."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    loops = [
        n for n in tree.body if isinstance(n, ast.For) and isinstance(n.iter, ast.Name) and n.iter.id == "_MODULES"
    ]
    if len(loops) != 1:
        raise UpstreamError(
            f"{name}: expected one top-level `for ... in _MODULES:` loop importing the algorithm "
            f"modules, found {len(loops)}; update scripts/upstream.py's _drop_registration_loop"
        )
    loop = loops[0]
    del lines[loop.lineno - 1 : loop.end_lineno]
    return "".join(lines).rstrip("\n") + "\n"


def transform(name: str) -> str:
    """The semilearn version of module ``name``: imports made absolute ``semilearn.`` imports,
    ``usb_cfsg.`` references renamed; no other change (``usb_cfsg.algorithms`` also drops its
    import loop, see :func:`_drop_registration_loop`)."""
    source = module_file(name).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    for ref in reversed(usb_imports(name)):
        if ref.is_from:
            new_module = target_module(ref.absolute)
            for n in ref.names:
                sub = f"{ref.absolute}.{n}"
                if module_exists(sub) and target_module(sub) != f"{new_module}.{n}":
                    raise UpstreamError(
                        f"{name}: `from {ref.source} import {n}` cannot move: {sub} goes to "
                        f"{target_module(sub)}, not under {new_module}"
                    )
            if ref.absolute not in MOVED_INITS and is_package(ref.absolute) and ref.absolute != "usb_cfsg.algorithms":
                missing = [n for n in ref.names if not module_exists(f"{ref.absolute}.{n}")]
                if missing:
                    raise UpstreamError(
                        f"{name}: `from {ref.source} import {', '.join(missing)}` takes names from "
                        f"package {ref.absolute}, whose __init__ does not move; import them from "
                        f"their module"
                    )
            regex, old = _FROM_RE, ref.source
        else:
            new_module, regex, old = target_module(ref.absolute), _IMPORT_RE, ref.source
        line = lines[ref.lineno - 1]
        head, tail = line[: ref.col], line[ref.col :]
        match = regex.match(tail)
        if match is None or match.group(1) != old:
            raise UpstreamError(f"{name}:{ref.lineno}: cannot parse the import statement {line.strip()!r}")
        lines[ref.lineno - 1] = head + tail[: match.start(1)] + new_module + tail[match.end(1) :]
    out = sanitize(_rewrite_refs("".join(lines)))
    if name == "usb_cfsg.algorithms":
        out = _drop_registration_loop(name, out)
    return out


def _package_data(name: str) -> Dict[str, bytes]:
    """Non-Python files of a moved package (configs, split lists), by path relative to the package."""
    folder = module_file(name).parent
    data = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            rel = path.relative_to(folder)
            if rel.parts[0] in ("__pycache__",) or (folder / rel.parts[0] / "__init__.py").is_file():
                continue  # belongs to a subpackage
            data[rel.as_posix()] = path.read_bytes()
    return data


def registered_class(module: str) -> str:
    """Name of the class module ``module`` registers with ``@register_algorithm(...)``."""
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register_algorithm":
                    return node.name
    raise UpstreamError(f"{module} defines no class decorated with @register_algorithm(...)")


# ------------------------------------------------------------------------------------------- patches
@dataclasses.dataclass
class Edit:
    """Replace the one occurrence of ``old`` in ``path`` with ``new`` (a hand-written change of USB code).

    ``alternatives`` are further ``(old, new)`` pairs for other bases (USB's main), tried in order
    when ``old`` is not in the file.
    """

    path: str
    old: str
    new: str
    alternatives: Tuple[Tuple[str, str], ...] = ()


@dataclasses.dataclass
class Rewrite:
    """Regular-expression substitution in every file matching one of ``globs`` (a mechanical change of USB
    code, computed on the base tree, so it follows the base: 0.3.2 or main)."""

    globs: Tuple[str, ...]
    pattern: str
    repl: str
    #: added after the first ``import torch`` line of a file the substitution changed
    add_import: str = ""


@dataclasses.dataclass
class Patch:
    """One commit of the series."""

    subject: str
    body: str
    edits: List[Edit] = dataclasses.field(default_factory=list)
    files: Dict[str, bytes] = dataclasses.field(default_factory=dict)  # new or replaced files
    summary: str = ""  # one line for patches/README.md
    rewrites: List[Rewrite] = dataclasses.field(default_factory=list)
    requirements: List[str] = dataclasses.field(default_factory=list)  # lines added to requirements.txt
    package_data: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # merged into setup.py


def _apply_edit(root: Path, edit: Edit) -> None:
    path = root / edit.path
    if not path.is_file():
        raise UpstreamError(f"edit of {edit.path}: the base tree has no such file")
    text = path.read_text(encoding="utf-8")
    for old, new in ((edit.old, edit.new), *edit.alternatives):
        count = text.count(old)
        if count == 1:
            path.write_text(text.replace(old, new), encoding="utf-8")
            return
    raise UpstreamError(
        f"edit of {edit.path} expects its old text exactly once (or one of {len(edit.alternatives)} "
        f"alternatives), found it {text.count(edit.old)} times:\n{edit.old}"
    )


def _apply_rewrite(root: Path, rewrite: Rewrite) -> int:
    """Apply ``rewrite`` to the files under ``root``; returns the number of substitutions."""
    total = 0
    paths = sorted({p for g in rewrite.globs for p in root.glob(g) if p.is_file()})
    for path in paths:
        text = path.read_text(encoding="utf-8")
        new, n = re.subn(rewrite.pattern, rewrite.repl, text, flags=re.M)
        if n and rewrite.add_import and rewrite.add_import not in new:
            new = re.sub(r"^import torch\n", "import torch\n" + rewrite.add_import + "\n", new, count=1, flags=re.M)
        if n:
            path.write_text(new, encoding="utf-8")
            total += n
    return total


_ALGORITHM_GLOBS = ("semilearn/algorithms/**/*.py", "semilearn/imb_algorithms/**/*.py")

_GET_DATASET_HEAD = """\
def get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir='./data', include_lb_to_ulb=True):
    \"\"\"
    create dataset

    Args
        args: argparse arguments
        algorithm: algorithm name, used for specific return items in __getitem__ of datasets
        dataset: dataset name\x20
        num_labels: number of labeled data in dataset
        num_classes: number of classes
        data_dir: data folder
        include_lb_to_ulb: flag of including labeled data into unlabeled data
    \"\"\"
    from semilearn.datasets import get_eurosat, get_medmnist, get_semi_aves, get_cifar, get_svhn, get_stl10, get_imagenet, get_json_dset, get_pkl_dset

    if dataset == "eurosat":
        lb_dset, ulb_dset, eval_dset = get_eurosat(args, algorithm, dataset, num_labels, num_classes, data_dir=data_dir, include_lb_to_ulb=include_lb_to_ulb)
        test_dset = None
    elif dataset in ["tissuemnist"]:
        lb_dset, ulb_dset, eval_dset = get_medmnist(args, algorithm, dataset, num_labels, num_classes, data_dir=data_dir,  include_lb_to_ulb=include_lb_to_ulb)
        test_dset = None
    elif dataset == "semi_aves":
"""
_GET_DATASET_NAMES = """\
def dataset_names():
    \"\"\"
    names get_dataset knows
    \"\"\"
    return ['eurosat', 'tissuemnist', 'semi_aves', 'semi_aves_out', 'cifar10', 'cifar100', 'svhn', 'stl10',
            'imagenet', 'imagenet127', 'esc50', 'fsdnoisy', 'gtzan', 'superbks', 'superbsi', 'urbansound8k',
            'aclImdb', 'ag_news', 'amazon_review', 'dbpedia', 'yahoo_answers', 'yelp_review']


def unknown_dataset_message(dataset, names):
    import difflib
    close = difflib.get_close_matches(str(dataset), names, n=3, cutoff=0.5)
    hint = ", did you mean {}?".format(", ".join(repr(c) for c in close)) if close else ""
    return "unknown dataset {!r}{} Known datasets: {}".format(dataset, hint, ", ".join(sorted(names)))


"""


def _get_dataset_edit() -> Edit:
    """get_dataset() learns dataset=None and gets the list of the names it knows. USB's main also knows
    semi_inat (`elif dataset in ["semi_aves", "semi_inat"]:`), so its list names it too."""

    def edit(head: str, names: str) -> Tuple[str, str]:
        new = head.replace(
            '    if dataset == "eurosat":\n',
            "    if dataset is None:\n"
            "        # no dataset: the caller builds its own data loaders (e.g. for semilearn.Trainer)\n"
            "        return None\n"
            '    elif dataset == "eurosat":\n',
        )
        return head, names + new

    main_head = _GET_DATASET_HEAD.replace(
        '    elif dataset == "semi_aves":\n', '    elif dataset in ["semi_aves", "semi_inat"]:\n'
    )
    main_names = _GET_DATASET_NAMES.replace(
        "'semi_aves', 'semi_aves_out',", "'semi_aves', 'semi_inat', 'semi_aves_out',"
    )
    old, new = edit(_GET_DATASET_HEAD, _GET_DATASET_NAMES)
    return Edit("semilearn/core/utils/build.py", old, new, alternatives=(edit(main_head, main_names),))


FIXES: List[Patch] = [
    Patch(
        subject="Run on CPU: device-agnostic batches, evaluation, timers and model placement",
        summary="USB on a machine without CUDA: `AlgorithmBase.device`, `.to(device)` in process_batch/evaluate, "
        "wall-clock TimerHook, guarded `cuda.synchronize`, `send_model_cuda` and train.py on CPU.",
        body="""\
semilearn 0.3.2 cannot train or evaluate without a GPU:

* AlgorithmBase.process_batch() and evaluate() move every tensor with
  .cuda(self.gpu);
* TimerHook creates torch.cuda.Event objects and ParamUpdateHook calls
  torch.cuda.synchronize();
* send_model_cuda() raises "ONLY GPU TRAINING IS SUPPORTED";
* train.py computes `rank % ngpus_per_node` with ngpus_per_node = 0
  (ZeroDivisionError), and AlgorithmBase.ngpus_per_node is 0 as well, which
  the logging, evaluation and checkpoint hooks divide by; NCCL, the default
  backend, needs GPUs.

This makes CPU a supported device without changing anything on GPUs:

* new semilearn.core.utils.get_device(gpu): cuda:<gpu> (or the current CUDA
  device) when CUDA is available, else cpu; AlgorithmBase keeps it as
  self.device and process_batch()/evaluate() use .to(self.device);
* TimerHook uses CUDA events on GPUs and a wall-clock stand-in with the same
  record()/elapsed_time() interface on CPU; ParamUpdateHook synchronizes only
  when CUDA is available;
* send_model_cuda() returns the model unchanged on CPU (DDP without
  device_ids when distributed);
* ngpus_per_node counts at least one process per node; on CPU,
  distributed training uses gloo.

Tested: tests/test_cpu.py (added here; CPU-only machine, torch 2.14.1):
get_device, the wall-clock TimerHook, send_model_cuda on CPU, and
`python train.py --c <config>` training fixmatch (WideResNet-28-2, 32 px) on
a semi_aves replica the test writes, evaluating and writing
latest_model.pth. The GPU code paths are unchanged. Not run: distributed
training on CPU (gloo).""",
        rewrites=[
            Rewrite(
                ("semilearn/core/algorithmbase.py",),
                r"^(\s*)self\.gpu = args\.gpu\n",
                r"\1self.gpu = args.gpu\n\1self.device = get_device(args.gpu)\n",
                add_import="from semilearn.core.utils.misc import get_device",
            ),
            Rewrite(
                ("semilearn/core/algorithmbase.py",),
                r"^(\s*)self\.ngpus_per_node = torch\.cuda\.device_count\(\)$",
                r"\1# at least one process per node: CPU-only machines have no GPU to count\n"
                r"\1self.ngpus_per_node = max(torch.cuda.device_count(), 1)",
            ),
            Rewrite(("semilearn/core/algorithmbase.py",), r"\.cuda\(self\.gpu\)", ".to(self.device)"),
            Rewrite(("semilearn/core/algorithmbase.py",), r"send (var|data) to cuda", r"send \1 to self.device"),
        ],
        edits=[
            Edit(
                "semilearn/core/utils/misc.py",
                """def send_model_cuda(args, model, clip_batch=True):
    if not torch.cuda.is_available():
        raise Exception('ONLY GPU TRAINING IS SUPPORTED')
    elif args.distributed:""",
                """def get_device(gpu=None):
    \"\"\"
    The device a process trains on: CUDA device `gpu` (the current CUDA device when `gpu` is None),
    or the CPU on a machine without CUDA.
    \"\"\"
    if not torch.cuda.is_available():
        return torch.device('cpu')
    return torch.device('cuda', gpu if gpu is not None else torch.cuda.current_device())


def send_model_cuda(args, model, clip_batch=True):
    if not torch.cuda.is_available():
        # CPU: one process keeps the model as it is; several processes (gloo) share gradients with DDP
        if args.distributed:
            model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False,
                                                              find_unused_parameters=True)
        return model
    elif args.distributed:""",
            ),
            Edit(
                "semilearn/core/hooks/timer.py",
                """import torch
from .hook import Hook


class TimerHook(Hook):
    \"\"\"
    Timer Hook
    \"\"\"
\x20\x20\x20\x20
    def before_run(self, algorithm):
        algorithm.start_batch = torch.cuda.Event(enable_timing=True)
        algorithm.end_batch = torch.cuda.Event(enable_timing=True)

        algorithm.start_run = torch.cuda.Event(enable_timing=True)
        algorithm.end_run = torch.cuda.Event(enable_timing=True)
""",
                """import time

import torch
from .hook import Hook


class WallClockEvent:
    \"\"\"
    Stand-in for torch.cuda.Event(enable_timing=True) on machines without CUDA
    \"\"\"

    def __init__(self):
        self.time = None

    def record(self):
        self.time = time.perf_counter()

    def elapsed_time(self, end_event):
        \"\"\"milliseconds from this event to `end_event`, as torch.cuda.Event.elapsed_time\"\"\"
        return (end_event.time - self.time) * 1000.


def timing_event():
    return torch.cuda.Event(enable_timing=True) if torch.cuda.is_available() else WallClockEvent()


class TimerHook(Hook):
    \"\"\"
    Timer Hook (CUDA events on GPU, wall clock on CPU)
    \"\"\"
\x20\x20\x20\x20
    def before_run(self, algorithm):
        algorithm.start_batch = timing_event()
        algorithm.end_batch = timing_event()

        algorithm.start_run = timing_event()
        algorithm.end_run = timing_event()
""",
            ),
            Edit(
                "semilearn/core/hooks/param_update.py",
                """        if hasattr(algorithm, 'start_run'):
            torch.cuda.synchronize()
            algorithm.start_run.record()""",
                """        if hasattr(algorithm, 'start_run'):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            algorithm.start_run.record()""",
            ),
            Edit(
                "semilearn/core/hooks/param_update.py",
                """            algorithm.end_run.record()
            torch.cuda.synchronize()""",
                """            algorithm.end_run.record()
            if torch.cuda.is_available():
                torch.cuda.synchronize()""",
            ),
            Edit(
                "train.py",
                """    ngpus_per_node = torch.cuda.device_count()  # number of gpus of each node
""",
                """    # number of gpus of each node; one process per node on a machine without CUDA
    ngpus_per_node = max(torch.cuda.device_count(), 1)
""",
            ),
            Edit(
                "train.py",
                """        dist.init_process_group(
            backend=args.dist_backend,""",
                """        dist.init_process_group(
            # NCCL needs GPUs: CPU-only processes communicate with gloo
            backend=args.dist_backend if torch.cuda.is_available() else "gloo",""",
            ),
        ],
    ),
    Patch(
        subject="Load YAML configs with ruamel.yaml >= 0.18",
        summary="`over_write_args_from_file` uses `YAML(typ='safe', pure=True)` instead of `yaml.load(..., "
        "Loader=...)`, which ruamel.yaml 0.18 removed.",
        body="""\
over_write_args_from_file() reads the --c config with
ruamel.yaml.load(text, Loader=ruamel.yaml.Loader). ruamel.yaml 0.18 removed
that old API, so with a current ruamel.yaml every `python train.py --c ...`
fails before training starts (users pin ruamel.yaml<0.18 as a workaround).

Read the file with ruamel.yaml's YAML(typ="safe", pure=True) loader instead,
available since ruamel.yaml 0.15: it builds plain dicts, lists and scalars
from the same YAML 1.2 documents (USB's configs use no tags), and it cannot
construct arbitrary Python objects from a config file. An empty file now sets
no keys instead of failing on `for k in None`.

Tested: tests/test_yaml_config.py (added here) with ruamel.yaml 0.17.40;
by hand with
ruamel.yaml 0.18.17, where the unpatched function fails with '"load()" has
been removed' and the patched one reads the same values.""",
        edits=[
            Edit(
                "semilearn/core/utils/misc.py",
                """    with open(yml, 'r', encoding='utf-8') as f:
        dic = yaml.load(f.read(), Loader=yaml.Loader)
        for k in dic:""",
                """    with open(yml, 'r', encoding='utf-8') as f:
        # the safe loader of the YAML() API: yaml.load(..., Loader=...) is gone in ruamel.yaml>=0.18
        dic = yaml.YAML(typ='safe', pure=True).load(f) or {}
        for k in dic:""",
            ),
        ],
    ),
    Patch(
        subject="Resume checkpoints under torch >= 2.6 (weights_only loading)",
        summary="Checkpoints store plain Python numbers; `load_model` loads with `weights_only=True` and still "
        "reads 0.3.2 checkpoints, whose numpy scalars it allows explicitly.",
        body="""\
Since torch 2.6, torch.load() defaults to weights_only=True. USB's
checkpoints hold best_eval_acc as the numpy float64 that sklearn's
accuracy_score returns, which the weights-only unpickler rejects, so
AlgorithmBase.load_model() fails on every checkpoint with a current torch
(and train.py then silently starts over, see the next patch).

* get_save_dict() stores it, epoch, best_it and best_eval_acc as plain Python
  numbers, so new checkpoints hold only tensors and plain types;
* load_model() loads with weights_only=True explicitly (no code in a
  checkpoint file is executed) and, for checkpoints written by semilearn
  0.3.2, retries with numpy's scalar reconstruction allowed
  (torch.serialization.safe_globals), still weights-only.

semilearn.nets.utils.load_checkpoint() (pretrained weights) loads
weights-only explicitly as well, so older torch versions do not run code from
a downloaded weights file either.

Tested with torch 2.14.1 (tests/test_checkpoint_load.py): a checkpoint
holding a numpy float64 best_eval_acc, as 0.3.2 wrote them, loads; a weights
file loads through load_checkpoint(); a run's latest_model.pth resumes
(tests/test_resume.py, with the train.py patch).""",
        edits=[
            Edit(
                "semilearn/core/algorithmbase.py",
                """import contextlib
import os
""",
                """import contextlib
import os
import pickle
""",
                alternatives=(("import os\nimport contextlib\n", "import os\nimport contextlib\nimport pickle\n"),),
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """            "it": self.it + 1,
            "epoch": self.epoch + 1,
            "best_it": self.best_it,
            "best_eval_acc": self.best_eval_acc,
        }""",
                """            # plain Python numbers: torch>=2.6 loads checkpoints weights-only
            "it": int(self.it + 1),
            "epoch": int(self.epoch + 1),
            "best_it": int(self.best_it),
            "best_eval_acc": float(self.best_eval_acc),
        }""",
                alternatives=(
                    (
                        """            'it': self.it + 1,
            'epoch': self.epoch + 1,
            'best_it': self.best_it,
            'best_eval_acc': self.best_eval_acc,
        }""",
                        """            # plain Python numbers: torch>=2.6 loads checkpoints weights-only
            'it': int(self.it + 1),
            'epoch': int(self.epoch + 1),
            'best_it': int(self.best_it),
            'best_eval_acc': float(self.best_eval_acc),
        }""",
                    ),
                ),
            ),
            Edit(
                "semilearn/nets/utils.py",
                """        checkpoint = torch.load(checkpoint_path, map_location='cpu')
    else:
        checkpoint = load_state_dict_from_url(checkpoint_path, map_location='cpu')""",
                """        # weights only, whatever the torch version's default: no code in a weights file is executed
        checkpoint = torch.load(checkpoint_path, map_location='cpu', weights_only=True)
    else:
        checkpoint = load_state_dict_from_url(checkpoint_path, map_location='cpu', weights_only=True)""",
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """        checkpoint = torch.load(load_path, map_location="cpu")
""",
                """        checkpoint = load_checkpoint_file(load_path)
""",
                alternatives=(
                    (
                        """        checkpoint = torch.load(load_path, map_location='cpu')
""",
                        """        checkpoint = load_checkpoint_file(load_path)
""",
                    ),
                ),
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """class AlgorithmBase:
    \"\"\"""",
                """def load_checkpoint_file(load_path):
    \"\"\"
    torch.load a training checkpoint weights-only (torch>=2.6's default): tensors and plain
    Python types only. Checkpoints of semilearn<=0.3.2 also hold numpy scalars (best_eval_acc),
    whose reconstruction is allowed explicitly.
    \"\"\"
    try:
        return torch.load(load_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not hasattr(torch.serialization, "safe_globals"):
            raise
        scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 / numpy 1
        allowed = [scalar, np.dtype] + [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64)]
        with torch.serialization.safe_globals(allowed):
            return torch.load(load_path, map_location="cpu", weights_only=True)


class AlgorithmBase:
    \"\"\"""",
            ),
        ],
    ),
    Patch(
        subject="train.py: fail when resuming from an existing checkpoint fails",
        summary="A checkpoint that exists but does not load is an error instead of a silent restart from "
        "scratch into the same run folder.",
        body="""\
main_worker() wraps model.load_model(args.load_path) in a bare
try/except that logs "Fail to resume load path" at INFO level, sets
args.resume = False and trains from scratch. A checkpoint of another net, a
damaged file or a torch version that refuses it thus silently restarts a
long run, which then overwrites the checkpoint it failed to read.

A checkpoint that exists but cannot be loaded now stops the run with the
reason and what to do. A missing load_path keeps its meaning (the configs use
resume: True with load_path = latest_model.pth to continue a run if one
exists), now logged only when resume was asked for.

Tested: tests/test_resume.py (added here; with the CPU patch or a GPU):
resuming from a damaged checkpoint file exits with the error and leaves the
file as it was; resuming from a run's latest_model.pth continues.""",
        edits=[
            Edit(
                "train.py",
                """    if args.resume and os.path.exists(args.load_path):
        try:
            model.load_model(args.load_path)
        except:
            logger.info("Fail to resume load path {}".format(args.load_path))
            args.resume = False
    else:
        logger.info("Resume load path {} does not exist".format(args.load_path))
""",
                """    if args.resume and os.path.exists(args.load_path):
        # never restart from scratch silently: the run would overwrite the checkpoint
        try:
            model.load_model(args.load_path)
        except Exception as error:
            raise RuntimeError(
                f"cannot resume from {args.load_path}: {error}. Fix the config (net, "
                "algorithm, num_classes must match the checkpoint's) or the file, or start a new "
                "run with --resume False or another --save_name"
            ) from error
        logger.info(f"Resumed from {args.load_path} at iteration {model.it}")
    elif args.resume:
        logger.info("Resume load path {} does not exist: training from scratch".format(args.load_path))
""",
            ),
        ],
    ),
    Patch(
        subject="get_dataset: raise on an unknown dataset name",
        summary="An unknown `dataset` raises a ValueError naming the known ones instead of returning None "
        "(which failed far away); `dataset: None` keeps building no datasets (own loaders).",
        body="""\
get_dataset() returns None for a name it does not know. AlgorithmBase then
builds no data loaders, and training fails later with
"'NoneType' object is not subscriptable" in train(), far from the typo
in the config that caused it.

An unknown name now raises ValueError with the known names and the closest
match. Passing dataset=None still returns None, for users who build their own
data loaders and hand them to semilearn.Trainer.

Tested: tests/test_get_dataset.py (added here): get_dataset(args,
"fixmatch", "cifar01", ...) raises "unknown dataset 'cifar01', did you mean
'cifar10'?"; dataset None returns None; dataset_names() lists exactly the
names get_dataset()'s branches compare with.""",
        edits=[
            _get_dataset_edit(),
            Edit(
                "semilearn/core/utils/build.py",
                """    else:
        return None
\x20\x20\x20\x20
    dataset_dict = {'train_lb': lb_dset, 'train_ulb': ulb_dset, 'eval': eval_dset, 'test': test_dset}""",
                """    else:
        raise ValueError(unknown_dataset_message(dataset, dataset_names()))
\x20\x20\x20\x20
    dataset_dict = {'train_lb': lb_dset, 'train_ulb': ulb_dset, 'eval': eval_dset, 'test': test_dset}""",
            ),
        ],
    ),
    Patch(
        subject="Registry: raise on a duplicate name instead of printing",
        summary="Registering another class under a taken name raises KeyError; re-registering the same class "
        "(a module imported twice) is still allowed.",
        body="""\
Register.__setitem__ prints "Key ... already in registry ..." and replaces
the registered class when a second class takes the same name. An algorithm
defined outside semilearn (or a copy of one under a new folder) thus silently
shadows a built-in one, or is shadowed by it, depending on import order.

Registering a different class under a taken name now raises KeyError naming
both classes. Registering the same class again (same module and qualified
name, as when a module is imported twice) replaces the entry as before.

Tested: tests/test_registry.py (added here): ALGORITHMS.register("fixmatch")
(AnotherClass) raises, registering fixmatch's class again does not; importing
every built-in algorithm registers each name once.""",
        edits=[
            Edit(
                "semilearn/core/utils/registry.py",
                """        if key in self._dict:
            print("Key %s already in registry %s." % (key, self._name))
        self._dict[key] = value""",
                """        if key in self._dict:
            old = self._dict[key]
            if _qualified_name(old) != _qualified_name(value):
                raise KeyError(f"{key!r} is already registered in {self._name} by {_qualified_name(old)}; "
                               f"register {_qualified_name(value)} under another name")
        self._dict[key] = value""",
            ),
            Edit(
                "semilearn/core/utils/registry.py",
                """class Register:
""",
                """def _qualified_name(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Register:
""",
            ),
        ],
    ),
]


ALGORITHM_DEVICE_FIX = Patch(
    subject="Algorithms: move tensors to the algorithm's device instead of calling .cuda()",
    summary="Every `.cuda(self.gpu)` / `.cuda(self.args.gpu)` / `.to(self.gpu)` of `semilearn/algorithms` and "
    "`semilearn/imb_algorithms` becomes `.to(self.device)`, CoSSL's helpers take the device, DARP's and TRAS's "
    "`.cuda()` follow the batch; Dash's own loop and CoSSL use the device-agnostic timers and guarded "
    "`cuda.synchronize`.",
    body="""\
With the previous patch AlgorithmBase runs on CPU, but the algorithms still
place their own tensors with .cuda(): CoMatch's and SimMatch's memory banks
(at construction), the state every algorithm with a DistAlignHook or
MaskingHook restores in load_model(), CRMatch's and VAT's loss terms, and
Dash's own training loop (CUDA events, torch.cuda.synchronize, .cuda() of
the batches), as does CoSSL among the imbalanced algorithms. On a machine
without CUDA these fail with "Torch not compiled with CUDA enabled".

Every .cuda(self.gpu), .cuda(self.args.gpu) and .to(self.gpu) now moves to
self.device (the GPU of the process on GPUs, as before). The helpers do the
same: CoSSL's functions in cossl/utils.py take the device instead of a GPU
index, DARP's pseudo-labeling hook puts the refined pseudo-labels on the
device of the batch's indices and TRAS its logit adjustment on self.device
(both were .cuda(), the current GPU), and hooks built from args before the
algorithm exists (MultiMatch's, where the tree has it) use
get_device(args.gpu). CUDA events become
semilearn.core.hooks.timer.timing_event(), torch.cuda.synchronize() runs only
when CUDA is available, and Dash counts at least one process per node. The
change is mechanical (the same substitutions in every file).

Tested: tests/test_algorithms_device.py (added here): no algorithm of
semilearn/algorithms or semilearn/imb_algorithms calls .cuda(), moves to a
GPU index or creates CUDA events any more, every algorithm module imports
and registers, and DARP's hook refines pseudo-labels on CPU; fixmatch
trains on CPU through train.py (tests/test_cpu.py). Not run: the other
algorithms' training loops on CPU.""",
    rewrites=[
        Rewrite(_ALGORITHM_GLOBS, r"\.cuda\((self|algorithm)\.(?:args\.)?gpu\)", r".to(\1.device)"),
        # .to(<GPU index>) as well (TRAS, DebiasPL)
        Rewrite(_ALGORITHM_GLOBS, r"\.to\((self|algorithm)\.gpu\)", r".to(\1.device)"),
        # hooks built from args before the algorithm exists (MultiMatch on USB's main): the same device
        Rewrite(
            _ALGORITHM_GLOBS,
            r"\.cuda\(args\.gpu\)",
            ".to(get_device(args.gpu))",
            add_import="from semilearn.core.utils.misc import get_device",
        ),
        # CoSSL's helper functions take the device instead of a GPU index
        Rewrite(("semilearn/imb_algorithms/cossl/utils.py",), r"(?<![.\w])gpu\b", "device"),
        Rewrite(("semilearn/imb_algorithms/cossl/utils.py",), r"\.cuda\(device\)", ".to(device)"),
        Rewrite(("semilearn/imb_algorithms/cossl/cossl.py",), r"^(\s*)algorithm\.gpu\)$", r"\1algorithm.device)"),
        # DARP's hook: refined pseudo-labels go where the batch's indices are (the algorithm's device)
        Rewrite(("semilearn/imb_algorithms/darp/utils.py",), r"\.cuda\(\)$", ".to(idx_u.device)"),
        # TRAS: the logit adjustment of the pseudo-labels
        Rewrite(("semilearn/imb_algorithms/tras/tras.py",), r"\.cuda\(\)", ".to(self.device)"),
        Rewrite(
            _ALGORITHM_GLOBS,
            r"torch\.cuda\.Event\(enable_timing=True\)",
            "timing_event()",
            add_import="from semilearn.core.hooks.timer import timing_event",
        ),
        Rewrite(
            _ALGORITHM_GLOBS,
            r"^(\s*)torch\.cuda\.synchronize\(\)$",
            r"\1if torch.cuda.is_available():\n\1    torch.cuda.synchronize()",
        ),
        Rewrite(
            _ALGORITHM_GLOBS,
            r"ngpus_per_node = torch\.cuda\.device_count\(\)$",
            "ngpus_per_node = max(torch.cuda.device_count(), 1)",
        ),
    ],
)

SETUP_FIX = Patch(
    subject="setup.py: read requirements.txt without pkg_resources",
    summary="`setup.py` parses `requirements.txt` itself instead of importing `pkg_resources`, which "
    "setuptools deprecated and removed.",
    body="""\
setup.py parses requirements.txt with pkg_resources.parse_requirements().
pkg_resources is deprecated (setuptools warns on import) and no longer
shipped by recent setuptools, where `pip install -e .` then fails before
reading anything.

requirements.txt holds one requirement per line: setup.py now takes every
non-empty line without its comment, which is what parse_requirements()
returned for this file.

Tested: tests/test_setup.py (added here): setup.py does not import
pkg_resources and passes exactly the requirements of requirements.txt to
setup(); every data file under semilearn/ is package data.""",
    edits=[
        Edit(
            "setup.py",
            """import pathlib

import pkg_resources
""",
            """import pathlib
""",
        ),
        Edit(
            "setup.py",
            """# requirements
with pathlib.Path('requirements.txt').open() as requirements_txt:
    install_requires = [
        str(requirement)
        for requirement
        in pkg_resources.parse_requirements(requirements_txt)
    ]""",
            """# requirements: one per line, comments and blank lines skipped (no pkg_resources, removed from setuptools)
with pathlib.Path(path.join(here, 'requirements.txt')).open(encoding='utf-8') as requirements_txt:
    install_requires = [
        line.split('#', 1)[0].strip()
        for line in requirements_txt
        if line.split('#', 1)[0].strip()
    ]""",
        ),
    ],
)


TIMM_FIX = Patch(
    subject="nets: import timm's layers from timm.layers",
    summary="The ViTs import `DropPath`, `trunc_normal_`, `to_2tuple` from `timm.layers` (timm >= 0.9), falling "
    "back to `timm.models.layers` on older timm: no deprecation warning, and no ImportError where "
    "`timm.models.layers.helpers` is gone.",
    body="""\
semilearn/nets/vit/vit.py imports its layers from timm.models.layers, which
timm 0.9 turned into a deprecated alias of timm.layers (every
`import semilearn` warns "Importing from timm.models.layers is deprecated,
please import via timm.layers"); where it imports from
timm.models.layers.helpers, `import semilearn` fails with current timm
(1.0), whose alias package has no such submodule, although requirements.txt
allows any timm>=0.5.4.

The layers are now imported from timm.layers, and from timm.models.layers
only where timm.layers does not exist (timm < 0.9), so the requirement
stays timm>=0.5.4.

Tested: tests/test_timm_layers.py (added here; timm 1.0.31): importing
semilearn.nets raises no ImportError and no warning about
timm.models.layers, and the ViT's layers are timm.layers'.""",
    rewrites=[
        Rewrite(
            ("semilearn/nets/**/*.py",),
            r"^from timm\.models\.layers(?:\.helpers)? import (.+)$",
            "try:\n"
            r"    from timm.layers import \1"
            "\nexcept ImportError:  # timm < 0.9 has no timm.layers\n"
            r"    from timm.models.layers import \1",
        )
    ],
)


DIST_URL_FIX = Patch(
    subject="train.py: keep a given dist_url; env:// under torchrun",
    summary="train.py no longer replaces `--dist_url` with 127.0.0.1 on a free port when several nodes meet at it; "
    "under torchrun it uses env:// with torchrun's ranks; EvaluationHook saves from one process per node "
    "as CheckpointHook does.",
    body="""\
train.py's __main__ replaces args.dist_url with tcp://127.0.0.1:<free
port> whatever the command line or the config says. A free port of the own
machine avoids collisions between runs on one machine, but every multi-node
run fails: each node waits at its own 127.0.0.1 for the others, until the
rendezvous times out. The env:// branches of main() and main_worker() are
never reached either, so torchrun (which sets RANK, WORLD_SIZE and
LOCAL_RANK) cannot start USB's train.py.

set_dist_url() decides instead:

* under torchrun (or any launcher that sets RANK, WORLD_SIZE and
  LOCAL_RANK): dist_url env://, world_size and rank from the environment,
  the GPU of LOCAL_RANK, and no further spawning (torchrun started every
  process);
* several nodes (world_size > 1) or dist_url env://: the given dist_url,
  which all nodes share;
* one node: a free port of this machine, as before.

Under torchrun multiprocessing_distributed is false, and EvaluationHook's
after_run then saved latest_model.pth from every process, all into the same
run folder. It now saves from the first process of each node, as
CheckpointHook does (`rank % ngpus_per_node == 0`).

Tested: tests/test_distributed.py (added here; CPU, gloo, with the CPU
patch): two "nodes" on one machine, each with its own save_dir, train
fixmatch together through `torchrun --nnodes 2 --node_rank i
--rdzv_endpoint 127.0.0.1:<port> train.py` and through USB's own
`--world_size 2 --rank i --multiprocessing_distributed True --dist_url
tcp://127.0.0.1:<port>`: both end with the same weights and log world_size
2. Without this patch the torchrun nodes train alone (world_size 1) and the
second launch never meets.""",
    edits=[
        Edit(
            "train.py",
            """if __name__ == "__main__":
    args = get_config()
    port = get_port()
    args.dist_url = "tcp://127.0.0.1:" + str(port)
    main(args)
""",
            """def set_dist_url(args, environ=os.environ):
    \"\"\"
    Where the processes of a run meet (args.dist_url), and this process's place among them.

    * started by torchrun (or another launcher that sets RANK, WORLD_SIZE, LOCAL_RANK): env://, the
      launcher's world size and rank, the GPU of LOCAL_RANK, and no spawning (every process is started);
    * several nodes (world_size > 1) or env://: the given dist_url, which every node must share;
    * one node: a free port of this machine, so that runs on one machine do not collide.
    \"\"\"
    if all(key in environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        args.dist_url = "env://"
        args.world_size = int(environ["WORLD_SIZE"])
        args.rank = int(environ["RANK"])
        args.gpu = int(environ["LOCAL_RANK"]) if torch.cuda.is_available() else None
        args.multiprocessing_distributed = False
    elif args.world_size == 1 and args.dist_url != "env://":
        args.dist_url = "tcp://127.0.0.1:" + str(get_port())


if __name__ == "__main__":
    args = get_config()
    set_dist_url(args)
    main(args)
""",
        ),
        Edit(
            "semilearn/core/hooks/evaluation.py",
            """        if not algorithm.args.multiprocessing_distributed or (algorithm.args.multiprocessing_distributed and algorithm.args.rank % algorithm.ngpus_per_node == 0):""",
            """        # one process per node saves, as in CheckpointHook (under torchrun multiprocessing_distributed is False)
        if not algorithm.distributed or algorithm.rank % algorithm.ngpus_per_node == 0:""",
        ),
    ],
)


def _moved_files(modules: Iterable[str]) -> Dict[str, bytes]:
    """Repository path -> content of the semilearn versions of ``modules`` (and their package data)."""
    files: Dict[str, bytes] = {}
    for name in modules:
        files[target_path(name)] = transform(name).encode("utf-8")
        if is_package(name) and name in MOVED_INITS:
            folder = target_path(name).rsplit("/", 1)[0]
            for rel, data in _package_data(name).items():
                files[f"{folder}/{rel}"] = data
        elif "__file__" in module_file(name).read_text(encoding="utf-8"):
            # a module of a package that does not move as a whole, reading files next to it
            # (usb_cfsg/algorithm_keys.py -> algorithm_keys.json): those files move with it
            folder = target_path(name).rsplit("/", 1)[0]
            for path in sorted(module_file(name).parent.iterdir()):
                if path.is_file() and path.suffix not in (".py", ".pyc"):
                    files[f"{folder}/{path.name}"] = path.read_bytes()
    return files


def _generated_inits(files: Dict[str, bytes], docs: Dict[str, str]) -> Dict[str, bytes]:
    """Docstring-only ``__init__.py`` for new packages that receive modules without their own ``__init__``."""
    out = {}
    for folder, doc in docs.items():
        init = f"{folder}/__init__.py"
        if init not in files and any(p.startswith(folder + "/") for p in files):
            out[init] = f'"""{doc}"""\n'.encode("utf-8")
    return out


def _group(files: Dict[str, bytes], prefix: str) -> Dict[str, bytes]:
    return {p: c for p, c in files.items() if p.startswith(prefix)}


def _class_summary(module: str, cls_name: str) -> str:
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            doc = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
            head, sep, rest = doc.partition(": ")
            return rest if sep and len(head) <= 30 else doc  # "OpenMatch: OVA ..." -> "OVA ..."
    return ""


def _config_files(algorithms: Sequence[str]) -> Dict[str, bytes]:
    files = {}
    for alg in algorithms:
        folder = REPO_ROOT / "config" / "openset_fg" / alg
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            files[f"config/openset_fg/{alg}/{path.name}"] = sanitize_config(path.read_text(encoding="utf-8")).encode(
                "utf-8"
            )
    return files


def _assign_modules() -> Dict[str, List[str]]:
    """Moved modules per feature series: each series takes the closure of its roots that no earlier series took."""
    assignment: Dict[str, List[str]] = {}
    claimed: set = set()
    roots: List[Tuple[str, List[str]]] = [(name, list(r)) for name, r in SERIES_ROOTS]
    roots += [(f"alg:{m}", [f"usb_cfsg.algorithms.{m}"]) for m in algorithm_modules()]
    for name, rs in roots:
        mods = [m for m in closure(rs) if m not in claimed]
        assignment[name] = mods
        claimed.update(mods)
    left = sorted(set(moved_modules()) - claimed)
    if left:
        raise UpstreamError(f"moved modules without a series: {left}")
    return assignment


def _usb_tests(*names: str) -> Dict[str, bytes]:
    """Files of semilearn's test suite (scripts/usb_tests/<name> -> tests/<name>)."""
    return {f"tests/{n}": (USB_TESTS / n).read_bytes() for n in names}


def _with_tests(patch: Patch, *names: str) -> Patch:
    return dataclasses.replace(patch, files={**patch.files, **_usb_tests(*names)})


def fixes_series() -> Series:
    """Series a: fixes of USB 0.3.2, each with its tests; applies alone onto the base."""
    cpu, yaml_fix, load, resume, dataset, registry = FIXES
    return Series(
        name="1-usb-fixes",
        part="a",
        title="Fixes of USB: CPU, resume, torch.load, registry, get_dataset, ruamel.yaml, setup.py, timm, torchrun",
        patches=[
            _with_tests(cpu, "conftest.py", "test_cpu.py"),
            _with_tests(ALGORITHM_DEVICE_FIX, "test_algorithms_device.py"),
            _with_tests(yaml_fix, "test_yaml_config.py"),
            _with_tests(load, "test_checkpoint_load.py"),
            _with_tests(resume, "test_resume.py"),
            _with_tests(dataset, "test_get_dataset.py"),
            _with_tests(registry, "test_registry.py"),
            _with_tests(SETUP_FIX, "test_setup.py"),
            _with_tests(TIMM_FIX, "test_timm_layers.py"),
            _with_tests(DIST_URL_FIX, "test_distributed.py"),
        ],
    )


def _data_package_data(files: Dict[str, bytes], known_packages: Iterable[str]) -> Dict[str, List[str]]:
    """``setup.py`` package_data entries (package -> glob patterns) of the non-Python files among ``files``."""
    packages = set(known_packages) | {p.rsplit("/", 1)[0] for p in files if p.endswith("/__init__.py")}
    out: Dict[str, List[str]] = {}
    for path in sorted(files):
        if path.endswith(".py") or not path.startswith("semilearn/"):
            continue
        folder = path.rsplit("/", 1)[0]
        owner = folder
        while owner not in packages and "/" in owner:
            owner = owner.rsplit("/", 1)[0]
        inside = path[len(owner) + 1 :]
        pattern = (inside.rsplit("/", 1)[0] + "/" if "/" in inside else "") + "*" + Path(path).suffix
        pats = out.setdefault(owner.replace("/", "."), [])
        if pattern not in pats:
            pats.append(pattern)
    return out


def feature_series() -> List[Series]:
    """Series b-e: the open-set code (moved), its glue in USB's files, configs, docs and tests.

    Quilt order: CLIP nets (c), datasets (d), open-set evaluation of every algorithm (b), algorithms (e);
    each needs the ones before it (the moved modules import each other), none needs the fixes (a).
    """
    algs = algorithm_modules()
    assignment = _assign_modules()
    inits_done: set = set()
    packages_so_far: set = set()

    def files_of(key: str) -> Dict[str, bytes]:
        files = _moved_files(assignment[key])
        folder = "semilearn/core/openset"
        if f"{folder}/__init__.py" not in inits_done and any(p.startswith(folder + "/") for p in files):
            files[f"{folder}/__init__.py"] = (
                '"""Open-set SSL support shared by the open-set algorithms: the algorithm mixin (data, device, '
                'checkpoints, hooks),\nconfiguration keys, errors and registries.\n"""\n'
            ).encode("utf-8")
            inits_done.add(f"{folder}/__init__.py")
        return files

    def data(files: Dict[str, bytes]) -> Dict[str, List[str]]:
        packages_so_far.update(p.rsplit("/", 1)[0] for p in files if p.endswith("/__init__.py"))
        return _data_package_data(files, packages_so_far)

    def moved(key: str) -> str:
        return textwrap.fill(f"Moved from: {', '.join(sorted(assignment[key]))}.", 72, break_on_hyphens=False)

    nets_files = files_of("2-clip-nets")
    datasets_files = {**files_of("3-openset-datasets"), **_usb_tests("openset/openset_helpers.py")}
    eval_files = files_of("4-openset-evaluation")
    builders = sorted(importlib.import_module("usb_cfsg.nets").BUILDERS)
    dataset_names = importlib.import_module("usb_cfsg.datasets").DATASETS.names()
    clip_flag = sanitize("usb_cfsg_clip")
    unchanged = "The code is the usb_cfsg plug-in's, moved: imports point to the semilearn\nlayout, plug-in names are replaced, nothing else differs."

    net_size_method = f"""
    def net_size_kwargs(self):
        \"\"\"
        input size of nets built at any size (the CLIP nets flag their builders with `{clip_flag}`)
        \"\"\"
        if getattr(self.net_builder, '{clip_flag}', False) and getattr(self.args, 'img_size', None):
            return {{'img_size': self.args.img_size}}
        return {{}}
"""
    # USB's main: set_model() builds the net in one line
    main_set_model = (
        "        model = self.net_builder(num_classes=self.num_classes, pretrained=self.args.use_pretrain, "
        "pretrained_path=self.args.pretrain_path)\n"
    )
    nets = Series(
        name="2-clip-nets",
        part="c",
        title="CLIP nets (open_clip) at any input size",
        patches=[
            Patch(
                subject="Add CLIP nets (semilearn.nets.clip), built at the configured input size",
                summary=f"open_clip ViTs split into a frozen trunk and tuned blocks, CLIP and CFSG heads, text "
                f"embeddings, their building blocks; exported from semilearn.nets: {', '.join(builders)}; "
                "AlgorithmBase builds them at `img_size`.",
                body=f"""\
The open-set algorithms of the following series use CLIP: a visual encoder
whose first blocks stay frozen (run once, without autograd), text embeddings
of the class names, and heads built on both. This adds them as semilearn
nets, so that `net: clip_vit_b16` works like `net: vit_base_patch16_224`:

* semilearn/nets/clip: the open_clip backbone split, the CLIP net (cosine
  classifier initialised from class-name embeddings) and the CFSG net;
* semilearn/nets/clip/modules: the building blocks, each usable alone;
* semilearn/nets/__init__.py exports the builders {", ".join(builders)}.

USB's set_model() and set_ema_model() build a net from num_classes,
pretrained and pretrained_path only, which leaves a CLIP net at 224 px
whatever img_size says (and the EMA copy could not even load the model's
weights at another size). Builders flagged `{clip_flag}` now also get
img_size, so every algorithm trains them at the configured input size
(positional embeddings resized when pretrained weights are loaded).

Builders take USB's (num_classes, pretrained, pretrained_path) and keyword
switches; `pretrained` is an open_clip tag (True means openai),
`pretrained_path` a local weights file. New dependency: open_clip_torch
(requirements.txt; weights are downloaded only for a pretrained tag), whose
BPE vocabulary makes tokenisation work offline.

{moved("2-clip-nets")}

{unchanged}

Tested: tests/openset/test_clip_nets.py (added here; CPU, a tiny
random-init open_clip config): clip_tiny builds and runs at 32 px, and
AlgorithmBase.set_model()/set_ema_model() build it at args.img_size;
tests/test_setup.py covers the package data of the moved files.""",
                files={**nets_files, **_usb_tests("openset/test_clip_nets.py")},
                requirements=["open_clip_torch"],
                package_data=data(nets_files),
                edits=[
                    Edit(
                        "semilearn/nets/__init__.py",
                        """from .hubert import hubert_base
""",
                        "from .hubert import hubert_base\n"
                        "# CLIP ViTs (open_clip) of the open-set algorithms\n"
                        "from .clip import BUILDERS as _clip_builders\n"
                        + "".join(f"{b} = _clip_builders[{b!r}]\n" for b in builders),
                    ),
                    Edit(
                        "semilearn/core/algorithmbase.py",
                        """        model = self.net_builder(
            num_classes=self.num_classes,
            pretrained=self.args.use_pretrain,
            pretrained_path=self.args.pretrain_path,
        )
        return model
""",
                        """        model = self.net_builder(
            num_classes=self.num_classes,
            pretrained=self.args.use_pretrain,
            pretrained_path=self.args.pretrain_path,
            **self.net_size_kwargs(),
        )
        return model
"""
                        + net_size_method,
                        alternatives=(
                            (
                                main_set_model + "        return model\n",
                                main_set_model.replace(")\n", ", **self.net_size_kwargs())\n")
                                + "        return model\n"
                                + net_size_method,
                            ),
                        ),
                    ),
                    Edit(
                        "semilearn/core/algorithmbase.py",
                        """        ema_model = self.net_builder(num_classes=self.num_classes)
""",
                        """        ema_model = self.net_builder(num_classes=self.num_classes, **self.net_size_kwargs())
""",
                    ),
                ],
            )
        ],
    )

    datasets = Series(
        name="3-openset-datasets",
        part="d",
        title="Fine-grained open-set datasets and the SSB splits",
        patches=[
            Patch(
                subject="Add fine-grained open-set datasets and their get_dataset branch",
                summary=f"Readers, open-set class split (first / random / Semantic Shift Benchmark), USB datasets; "
                f"`get_dataset` knows {', '.join(dataset_names)}.",
                body=f"""\
Open-set SSL benchmarks split a dataset's classes into K seen classes
(labeled and unlabeled data) and unseen ones (unlabeled data and the open-set
test set only). This adds readers of the fine-grained datasets in their
publishers' layouts and of any image folder, the class split (first K,
seeded random, or the Semantic Shift Benchmark's lists with Easy/Medium/Hard
unseen classes, shipped as package data), the labeled/unlabeled split, and
the USB datasets, as semilearn.datasets.openset_datasets.

get_dataset() gets a branch for these names ({", ".join(dataset_names)}),
so every algorithm trains on the seen classes of these datasets (eval =
seen-class test images); the next series adds the open-set test set and its
evaluation.

{moved("3-openset-datasets")}

{unchanged}

Tested: tests/openset/test_openset_datasets.py (added here): get_dataset()
builds the labeled, unlabeled and eval sets of an image folder the test
writes (3 of 6 classes seen); tests/test_setup.py covers the SSB lists as
package data.""",
                files={**datasets_files, **_usb_tests("openset/test_openset_datasets.py")},
                package_data=data(datasets_files),
                edits=[
                    Edit(
                        "semilearn/core/utils/build.py",
                        """        lb_dset, ulb_dset, eval_dset = get_imagenet(args, algorithm, dataset, num_labels, num_classes, data_dir=data_dir, include_lb_to_ulb=include_lb_to_ulb)
        test_dset = None
""",
                        """        lb_dset, ulb_dset, eval_dset = get_imagenet(args, algorithm, dataset, num_labels, num_classes, data_dir=data_dir, include_lb_to_ulb=include_lb_to_ulb)
        test_dset = None
    # fine-grained open-set datasets: the seen classes (num_classes = K) for closed-set training
    elif dataset in openset_dataset_names():
        from semilearn import nets
        from semilearn.datasets.openset_datasets import build_openset_datasets
        # normalised as the net expects where it says so (the CLIP nets), else with ImageNet's statistics
        builder = getattr(nets, str(getattr(args, 'net', '')), None)
        mean = getattr(builder, 'mean', (0.485, 0.456, 0.406))
        std = getattr(builder, 'std', (0.229, 0.224, 0.225))
        dsets, _ = build_openset_datasets(args, algorithm, mean, std, None)
        lb_dset, ulb_dset, eval_dset, test_dset = dsets['train_lb'], dsets['train_ulb'], dsets['eval'], None
""",
                    ),
                    Edit(
                        "semilearn/core/utils/build.py",
                        """def get_logger(name, save_path=None, level='INFO'):""",
                        """def openset_dataset_names():
    \"\"\"
    names of the open-set datasets (semilearn.datasets.openset_datasets)
    \"\"\"
    from semilearn.datasets.openset_datasets import DATASETS
    return DATASETS.names()


def get_logger(name, save_path=None, level='INFO'):""",
                    ),
                ],
            )
        ],
    )

    evaluation = Series(
        name="4-openset-evaluation",
        part="b",
        title="Open-set evaluation for every algorithm (USB's own algorithms report msp and energy)",
        patches=[
            Patch(
                subject="Open-set evaluation for every algorithm on an open-set dataset",
                summary="semilearn.core.openset (PluginMixin: open-set data, device, exact-resume loaders, checkpoints, "
                "hooks) and semilearn.core.hooks.openset (OpenSetEvalHook); `get_algorithm` puts the mixin in "
                "front of any algorithm on an open-set dataset, so USB's own algorithms report msp and energy; "
                "train.py defaults for the open-set keys.",
                body=f"""\
USB evaluates closed-set accuracy only. Open-set SSL is judged on how well
unknown-class test images are told apart from the seen classes. This adds:

* semilearn.core.openset: PluginMixin, which an algorithm class gets in
  front of AlgorithmBase: open-set datasets with the open-set test set (all
  test images, unseen classes labelled K), data loaders whose order survives
  a resume, CLIP nets with text-initialised classifiers, device-agnostic
  steps, atomic checkpoints with RNG state that load weights-only; typed
  declarations of the keys it reads (config.py);
* semilearn.core.hooks.openset: OpenSetEvalHook (after EvaluationHook).
  At each evaluation it logs test_open/auroc, fpr95 and unknown_recall; at
  the end it scores the open-set test set with every unknown score of the
  algorithm (thresholds and score ranges fitted on training data only) and
  writes closed-set accuracy, AUROC, FPR@95%TPR, open-set balanced
  accuracy, unknown recall, H-score and macro-F1 (per SSB difficulty where
  the split has them) to <save_dir>/<save_name>/openset_metrics.json, with
  ROC curves, score histograms and the confusion matrix (matplotlib, Agg);
* get_algorithm(): on an open-set dataset every algorithm gets the mixin.
  USB's own algorithms (fixmatch, flexmatch, ...) are scored with msp
  (1 - maximum softmax probability, Hendrycks & Gimpel 2017) and energy
  (-T logsumexp(logits / T), Liu et al. 2020); open-set algorithms add
  their own scores. Other datasets are unchanged;
* train.py: keys the mixin reads that neither the parser nor the config
  file set take their declared defaults.

New dependencies (requirements.txt): matplotlib (already there), PyYAML.

{moved("4-openset-evaluation")}

{unchanged}

Tested: tests/openset/test_openset_evaluation.py (added here; CPU, with the
fixes series or a GPU): fixmatch trains through train.py on an image folder
the test writes, with a tiny random-init CLIP, and writes
openset_metrics.json with msp and energy scores.""",
                files={**eval_files, **_usb_tests("openset/test_openset_evaluation.py")},
                requirements=["matplotlib", "PyYAML"],
                package_data=data(eval_files),
                edits=[
                    Edit(
                        "semilearn/algorithms/__init__.py",
                        """    if args.algorithm in ALGORITHMS:
        alg = ALGORITHMS[args.algorithm]( # name2alg[args.algorithm](""",
                        """    if args.algorithm in ALGORITHMS:
        alg_class = ALGORITHMS[args.algorithm]
        # open-set datasets: every algorithm gets the open-set mixin (open-set test set and evaluation)
        import semilearn.core.hooks.openset  # noqa: F401 - registers the mixin's run hooks (open-set evaluation)
        from semilearn.core.utils.build import openset_dataset_names
        if getattr(args, 'dataset', None) in openset_dataset_names():
            from semilearn.core.openset.plugin import plugin_class
            alg_class = plugin_class(args.algorithm)
        alg = alg_class( # name2alg[args.algorithm](""",
                    ),
                    Edit(
                        "train.py",
                        """    args = parser.parse_args()
    over_write_args_from_file(args, args.c)
    return args
""",
                        """    args = parser.parse_args()
    over_write_args_from_file(args, args.c)

    # open-set algorithms, and every algorithm on an open-set dataset, read common keys the parser does not
    # declare: unset ones take their defaults
    from semilearn.core.openset.config import base_specs
    from semilearn.core.openset.plugin import PluginMixin
    from semilearn.core.utils.build import openset_dataset_names

    if issubclass(name2alg[args.algorithm], PluginMixin) or getattr(args, "dataset", None) in openset_dataset_names():
        for key, spec in base_specs().items():
            if not hasattr(args, key):
                setattr(args, key, spec.default)
    return args
""",
                    ),
                ],
            )
        ],
    )

    alg_patches: List[Patch] = []
    for m in algs:
        module = f"usb_cfsg.algorithms.{m}"
        cls = registered_class(module)
        alg_files = files_of(f"alg:{m}")
        alg_files[f"semilearn/algorithms/{m}/__init__.py"] = f"from .{m} import {cls}\n".encode("utf-8")
        configs = _config_files([m])
        test = ALGORITHM_TEST.format(alg=m, name=DISPLAY_NAMES.get(m, m)).encode("utf-8")
        name = DISPLAY_NAMES.get(m, m)
        cfg_line = (
            f"\n\nConfigs in USB's layout and naming, unchanged but for comments naming\nthe plug-in's tools: "
            f"{len(configs)} files\nconfig/openset_fg/{m}/{m}_<dataset>_<num_labels>_<seed>.yaml."
            if configs
            else ""
        )
        alg_patches.append(
            Patch(
                subject=f"Add the {m} algorithm ({name})",
                summary=f"`algorithm: {m}`: {_class_summary(module, cls)} Registered through ALL_MODULES"
                + (f"; {len(configs)} configs in config/openset_fg/{m}/." if configs else "."),
                body=f"""\
{textwrap.fill(f"{name} as a semilearn algorithm (`algorithm: {m}`). {_class_summary(module, cls)}", 72)}

It is registered like the built-in algorithms (ALL_MODULES in
semilearn/core/utils/registry.py) and runs with PluginMixin in front of
AlgorithmBase: open-set datasets, CLIP nets and the open-set evaluation hook.
Its keys are in get_argument(), as for the built-in algorithms.{cfg_line}

{unchanged}

Tested: tests/openset/test_algorithm_{m}.py (added here; CPU, with the fixes
series or a GPU): `python train.py --c <config>` trains {m} on an image
folder the test writes with a tiny random-init CLIP and writes
openset_metrics.json.""",
                files={**alg_files, **configs, f"tests/openset/test_algorithm_{m}.py": test},
                package_data=data(alg_files),
                rewrites=[
                    Rewrite(
                        ("semilearn/core/utils/registry.py",),
                        r"(\('semilearn\.algorithms', \[[^\]]*?)'\]\)",
                        rf"\1', '{m}'])",
                    )
                ],
            )
        )
    docs_lines = [
        "",
        "",
        "# Open-set SSL algorithms",
        "",
        "Unlabeled data may contain images of classes that are not among the labeled ones. These algorithms",
        "learn the seen classes and score how likely a test image is of an unseen class; the open-set",
        "evaluation hook reports AUROC, FPR@95, open-set balanced accuracy and H-score next to accuracy",
        "(configs: `config/openset_fg/`). On an open-set dataset, every other algorithm is evaluated the same",
        "way with the msp and energy scores.",
        "",
    ]
    for i, m in enumerate(algs, 1):
        module = f"usb_cfsg.algorithms.{m}"
        name = DISPLAY_NAMES.get(m, m)
        label = f"[{name}]({PAPERS[m]})" if m in PAPERS else (f"{name} ({REFERENCES[m]})" if m in REFERENCES else name)
        docs_lines.append(f"{i}. {label} (`algorithm: {m}`): {_class_summary(module, registered_class(module))}")
    docs_text = "\n".join(docs_lines) + "\n"
    alg_patches.append(
        Patch(
            subject="docs: list the open-set algorithms",
            summary='docs/algorithm_zoo.md gets an "Open-set SSL algorithms" section.',
            body="""\
List the open-set algorithms this series adds in docs/algorithm_zoo.md, with
what they do and how they are evaluated.

Tested: documentation only; each entry is the first paragraph of the
algorithm class's docstring.""",
            edits=[
                Edit(
                    "docs/algorithm_zoo.md",
                    "17. [DeFixMatch] (https://arxiv.org/abs/2203.07512)",
                    "17. [DeFixMatch] (https://arxiv.org/abs/2203.07512)" + docs_text,
                )
            ],
        )
    )
    algorithms = Series(
        name="5-openset-algorithms",
        part="e",
        title="Open-set algorithms, one patch each with its configs",
        patches=alg_patches,
    )
    return [nets, datasets, evaluation, algorithms]


ALGORITHM_TEST = '''"""{name} (`algorithm: {alg}`) trains through train.py on CPU and reports open-set metrics."""

from openset_helpers import needs_training, trained_metrics


@needs_training
def test_{alg}_trains_and_reports_openset_metrics(tmp_path):
    metrics = trained_metrics(tmp_path, "{alg}")
    assert metrics["algorithm"] == "{alg}" and metrics["num_seen"] == 3
    for key in ("closed_acc", "auroc", "fpr95", "h_score"):
        assert key in metrics
    assert 0.0 <= metrics["closed_acc"] <= 1.0
'''


@dataclasses.dataclass
class Series:
    """One series of patches (one pull request): a folder of patches/."""

    name: str  # folder under patches/, in quilt order
    part: str  # its letter in issue 20's plan (a fixes, b evaluation, c nets, d datasets, e algorithms)
    title: str
    patches: List[Patch]


#: Roots of the moved code per feature series (in quilt order); the algorithms follow, one patch each.
SERIES_ROOTS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("2-clip-nets", ("usb_cfsg.nets", "usb_cfsg.modules")),
    ("3-openset-datasets", ("usb_cfsg.datasets",)),
    ("4-openset-evaluation", ("usb_cfsg.evaluation", "usb_cfsg.engine.plugin", "usb_cfsg.algorithms")),
)
USB_TESTS = REPO_ROOT / "scripts" / "usb_tests"


def all_series() -> List[Series]:
    """Every series, in quilt order: the fixes (alone onto the base), then the open-set series (a chain)."""
    return [fixes_series()] + feature_series()


def series() -> List[Patch]:
    """Every patch, in quilt order."""
    return [p for s in all_series() for p in s.patches]


# ---------------------------------------------------------------------------------------------- git
def _git_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_AUTHOR_DATE=DATE,
        GIT_COMMITTER_DATE=DATE,
        LC_ALL="C",
        TZ="UTC",
    )
    return env


def git(repo: Path, *args: str, input_text: Optional[str] = None) -> str:
    """Run git in ``repo`` with a clean, fixed identity and configuration; returns stdout."""
    proc = subprocess.run(
        ["git", "-c", "core.fileMode=false", "-c", "core.autocrlf=false", *args],
        cwd=repo,
        env=_git_env(),
        input=input_text,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise UpstreamError(f"git {' '.join(args)} failed in {repo}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def installed_semilearn() -> Dict[str, Path]:
    """The installed semilearn wheel's ``semilearn/`` files (from its RECORD): repository path -> file.

    Files written into the package folder after installation are not part of it.
    """
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("semilearn")
    except importlib.metadata.PackageNotFoundError:
        raise UpstreamError("semilearn is not installed; pip install semilearn==0.3.2") from None
    if dist.version != "0.3.2":
        raise UpstreamError(
            f"semilearn {dist.version} is installed; the series is against 0.3.2: pip install semilearn==0.3.2"
        )
    files = {
        str(f).replace(os.sep, "/"): Path(str(dist.locate_file(f)))
        for f in dist.files or []
        if str(f).startswith("semilearn/") and "__pycache__" not in str(f) and not str(f).endswith(".pyc")
    }
    if not files:
        raise UpstreamError("the semilearn installation lists no files (no RECORD); reinstall semilearn==0.3.2")
    return files


def make_base_tree(dest: Path, base_dir: Path) -> str:
    """A git repository at ``dest`` holding the base tree, committed; returns the commit id.

    Raises:
        UpstreamError: the installed semilearn or a file of ``base_dir`` is not USB's at :data:`USB_COMMIT`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    installed = installed_semilearn()
    for rel, src in sorted(installed.items()):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    for rel in BASE_FILES:
        src = base_dir / rel
        if not src.is_file():
            raise UpstreamError(
                f"{src} is missing: it is USB's {rel} at {USB_COMMIT[:7]}; restore it with "
                f"`git show {USB_COMMIT[:7]}:{rel} > {src}` in a clone of "
                f"microsoft/Semi-supervised-learning"
            )
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"USB at {USB_COMMIT[:7]} (semilearn 0.3.2): semilearn/, {', '.join(BASE_FILES)}")
    tree = git(dest, "rev-parse", "HEAD:semilearn").strip()
    if tree != SEMILEARN_TREE:
        raise UpstreamError(
            f"the installed semilearn ({next(iter(installed.values())).parent}) is not semilearn "
            f"0.3.2 as released "
            f"(git tree {tree}, expected {SEMILEARN_TREE}); pip install --force-reinstall "
            f"semilearn==0.3.2 and remove local edits"
        )
    for rel, blob in BASE_FILES.items():
        got = git(dest, "rev-parse", f"HEAD:{rel}").strip()
        if got != blob:
            raise UpstreamError(
                f"{base_dir / rel} is not USB's {rel} at {USB_COMMIT[:7]} (blob {got}, expected "
                f"{blob}); restore it with `git show {USB_COMMIT[:7]}:{rel}`"
            )
    return git(dest, "rev-parse", "HEAD").strip()


_PACKAGE_DATA_MARK = "    # data files of the open-set code (net configs, class lists, key declarations)\n"


def _merge_package_data(repo: Path, entries: Dict[str, List[str]]) -> None:
    """Add ``entries`` to the ``package_data`` block this series keeps in setup.py."""
    if not entries:
        return
    path = repo / "setup.py"
    text = path.read_text(encoding="utf-8")
    current: Dict[str, List[str]] = {}
    block = re.search(re.escape(_PACKAGE_DATA_MARK) + r"    package_data=(\{.*?\n    \}),\n", text, re.S)
    if block:
        current = ast.literal_eval(block.group(1))
    for pkg, pats in entries.items():
        current.setdefault(pkg, [])
        current[pkg] += [p for p in pats if p not in current[pkg]]
    rendered = (
        _PACKAGE_DATA_MARK
        + "    package_data={\n"
        + "".join(f"        {pkg!r}: {pats!r},\n" for pkg, pats in sorted(current.items()))
        + "    },\n"
    )
    if block:
        text = text[: block.start()] + rendered + text[block.end() :]
    elif "    include_package_data=True,\n" in text:
        text = text.replace("    include_package_data=True,\n", "    include_package_data=True,\n" + rendered, 1)
    else:
        raise UpstreamError("setup.py has no `include_package_data=True,` line to add package_data after")
    path.write_text(text, encoding="utf-8")


def _add_requirements(repo: Path, names: Sequence[str]) -> None:
    """Append ``names`` to requirements.txt unless it already names them."""
    path = repo / "requirements.txt"
    text = path.read_text(encoding="utf-8")
    have = {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower() for line in text.splitlines() if line.strip()}
    add = [n for n in names if n.lower() not in have]
    if add:
        path.write_text(text.rstrip("\n") + "\n" + "".join(f"{n}\n" for n in add), encoding="utf-8")


def commit_series(repo: Path, patches: Sequence[Patch]) -> None:
    """Apply and commit every patch of ``patches`` in ``repo``."""
    for patch in patches:
        for edit in patch.edits:
            _apply_edit(repo, edit)
        for rewrite in patch.rewrites:
            if _apply_rewrite(repo, rewrite) == 0 and rewrite.globs == ("semilearn/core/utils/registry.py",):
                raise UpstreamError(f"{patch.subject}: no ALL_MODULES list of semilearn.algorithms to extend")
        for rel, data in patch.files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _add_requirements(repo, patch.requirements)
        _merge_package_data(repo, patch.package_data)
        git(repo, "add", "-A")
        if not git(repo, "status", "--porcelain").strip():
            raise UpstreamError(f"{patch.subject}: the patch changes nothing on this base")
        git(repo, "commit", "-q", "-F", "-", input_text=f"{patch.subject}\n\n{patch.body}\n")


def format_series(repo: Path, base: str, out: Path) -> List[Path]:
    """``git format-patch`` of ``base..HEAD`` into ``out`` (deterministic options)."""
    git(
        repo,
        "-c",
        "diff.algorithm=myers",
        "-c",
        "diff.renames=false",
        "format-patch",
        "-q",
        "--zero-commit",
        "--full-index",
        "--no-signature",
        "--no-numbered",
        "--no-renames",
        "--binary",
        "--always",
        "-o",
        str(out),
        f"{base}..HEAD",
    )
    return sorted(out.glob("*.patch"))


def make_tree(dest: Path, base: str, base_dir: Path) -> str:
    """A git repository at ``dest`` holding the base of the series, committed; returns the commit id.

    ``base`` is ``wheel`` (the installed semilearn 0.3.2 and ``base_dir``'s files, see :func:`make_base_tree`)
    or the path of a clone of USB (its checked-out commit, e.g. GitHub main).
    """
    if base == "wheel":
        return make_base_tree(dest, base_dir)
    clone = Path(base)
    if not (clone / "semilearn").is_dir():
        raise UpstreamError(f"--base {base}: not a clone of microsoft/Semi-supervised-learning (no semilearn/)")
    commit = git(clone, "rev-parse", "HEAD").strip()
    git(dest.parent, "clone", "-q", "--no-checkout", str(clone.resolve()), dest.name)
    git(dest, "checkout", "-q", "-b", "openset", commit)
    return commit


def read_series_file(folder: Path) -> List[Path]:
    """The patches of ``folder/series`` (quilt's format: one path per line, ``#`` comments), in order."""
    lines = (folder / "series").read_text(encoding="utf-8").splitlines()
    return [folder / line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def apply_series(tree: Path, folder: Path, names: Optional[Sequence[str]] = None) -> None:
    """``git am`` the patches of ``folder``'s series file onto ``tree`` (only the series ``names`` if given)."""
    patches = [p for p in read_series_file(folder) if names is None or p.parent.name in names]
    if not patches:
        raise UpstreamError(f"no patches of {names} in {folder / 'series'}")
    git(tree, "am", "--quiet", *map(str, patches))


def readme(series_list: Sequence[Series], names: Dict[str, List[str]], base: str, base_commit: str) -> str:
    """Text of patches/README.md."""
    sections = []
    for i, ser in enumerate(series_list):
        needs = "applies alone onto the base" if i < 2 else f"needs {', '.join(s.name for s in series_list[1:i])}"
        if i == 1:
            needs = "applies alone onto the base (does not need the fixes)"
        rows = "\n".join(f"| `{n}` | {p.summary or p.subject} |" for n, p in zip(names[ser.name], ser.patches))
        sections.append(
            f"### `{ser.name}/` (part {ser.part}): {ser.title}\n\n{needs.capitalize()}.\n\n"
            f"| patch | what it does |\n|---|---|\n{rows}\n"
        )
    data_files = sorted(
        f"`{f}`"
        for ser in series_list
        for p in ser.patches
        for f in p.files
        if f.startswith("semilearn/") and not f.endswith(".py")
    )
    plugin_only = "\n".join(f"  - `{m}`: {why}." for m, why in PLUGIN_ONLY.items())
    base_text = (
        f"USB commit `{USB_COMMIT[:7]}` ({USB_COMMIT}), the commit released as `semilearn==0.3.2`"
        if base == "wheel"
        else f"USB commit `{base_commit[:7]}` ({base_commit}), a clone's checked-out commit"
    )
    main = MAIN_CHECK
    return f"""<!-- GENERATED by `{REGENERATE}`; do not edit. -->
# patches/: CFSG-CLIP and open-set SSL for USB, as patch series

This folder is the upstream contribution of this project to
[USB](https://github.com/microsoft/Semi-supervised-learning): `git format-patch` series, one folder
per pull request, against {base_text}. `series` lists every patch in
[quilt](https://savannah.nongnu.org/projects/quilt)'s format and order. The series are **generated**
from the plug-in, which stays the single source of truth: the open-set code in them is the plug-in's
code, moved into the semilearn layout with its imports rewritten (`from ..modules import X` becomes
`from semilearn.nets.clip.modules import X`) and the plug-in's names replaced (its package name by
`semilearn`, references of its own tools by words), nothing else changed. A test fails when the
committed series differ from a fresh generation.

## The series

{chr(10).join(sections)}
The fixes (`1-usb-fixes/`) are independent of the rest and of each other's topics: each patch is
reviewable and mergeable on its own. The open-set series form a chain (the moved modules import each
other): CLIP nets, then datasets, then open-set evaluation for every algorithm, then the algorithms.
They do not need the fixes to apply; training through `train.py` on a machine without a GPU does.
Each commit message says what, why and which test of the series covers it.

## Tests inside USB

USB has no tests. The series add a small pytest suite to its tree, each patch with the tests of what
it changes (`tests/` for the fixes, `tests/openset/` for the open-set code): CPU only, tiny configs
(a WideResNet-28-2 or a random-init tiny CLIP at 32 px, a few iterations), data the tests write
themselves (a semi_aves file list, an image folder), no network. Run them in the patched tree with
`python -m pytest tests`. Tests that train need a GPU or the fixes series; without either they skip.

## Base tree

The series touch `semilearn/`, `train.py`, `setup.py`, `requirements.txt`, `docs/algorithm_zoo.md`
and add `config/openset_fg/` and `tests/`. For `semilearn==0.3.2` (the default, `--base wheel`):

- `semilearn/` is taken from the installed `semilearn==0.3.2` wheel (the files its RECORD lists); its
  git tree equals the commit's (`{SEMILEARN_TREE}`), which the generator checks;
- the other files, which the wheel lacks, are kept unmodified in `patches/base/` (USB is
  MIT-licensed; see its `LICENSE.txt`) and checked against their blob hashes at that commit:
{chr(10).join(f"  `{rel}` = `{blob}`" for rel, blob in BASE_FILES.items())}.

So the series apply both to a clone of USB at `{USB_COMMIT[:7]}` and to the tree the tests build.

**USB's main.** `python -m scripts.upstream --base <clone of USB> --out <folder>` generates the same
series against a clone's checked-out commit (hand-written edits carry alternatives for main's text;
mechanical ones are computed on the base). `USB_MAIN_CLONE=<clone> pytest tests/test_upstream.py` does
that, applies them and runs the series' tests there; without the variable that test is skipped (CI has
no network). Last check: main at `{main["commit"][:7]}` ({main["commit"]}, {main["commit_date"]}),
checked {main["checked"]}: {main["result"]}

## Apply

```bash
git clone https://github.com/microsoft/Semi-supervised-learning.git usb && cd usb
git checkout -b openset {USB_COMMIT[:7]}
for p in $(grep -v '^#' /path/to/patches/series); do git am /path/to/patches/$p || break; done
pip install -e .        # requirements.txt now names open_clip_torch and PyYAML
python -m pytest tests  # the series' tests, CPU
python train.py --c config/openset_fg/cfsg_clip/cfsg_clip_cub200_400_0.yaml
```

(or `quilt push -a` with `QUILT_PATCHES=/path/to/patches`). New dependencies of the patched tree:
`open_clip_torch` (CLIP nets; `import semilearn` now imports it), `matplotlib` (evaluation pictures,
already required), `PyYAML` (config files of the mixin), all in `requirements.txt`. The moved package
data ({", ".join(data_files)}) is in `setup.py`'s `package_data`, so a wheel build ships it.

## Regenerate

```bash
{REGENERATE}          # after any change of the plug-in
python -m scripts.upstream --out patches/ --check   # exit 1 if patches/ is stale
```

Generation needs git and the installed `semilearn==0.3.2` (or a clone with `--base`), and no network.
It is deterministic: fixed author and date, full blob hashes, zeroed `From` commit ids, no signature.

## What stays plug-in only, and why

- The plug-in's own launcher (`train.py`, `eval.py`, `predict.py` at the repository root, typed
  command line, run-folder safety, torchrun support): the series fix USB's `train.py` instead, and
  USB's `eval.py` is not patched.
- Its demo CLIP (contrastive pretraining of a tiny CLIP on Fashion-MNIST), config generator,
  comparison runner and development setup: nothing of them is in the series, and a test greps the
  patched tree for their names ({", ".join(f"`{n}`" for n in FORBIDDEN_NAMES)}).
- Modules that stay in the plug-in:
{plugin_only}

Known differences in the patched tree: the moved code logs to the `semilearn` logger or its module's
logger, which USB's `train.py` does not configure (their warnings show, their INFO lines do not; the
algorithms' own messages go through USB's logger). USB's `set_model` builds nets with `num_classes`,
`pretrained` (= `use_pretrain`; `True` means OpenAI's weights), `pretrained_path` and, for the CLIP
nets, `img_size`, so a built-in algorithm on a CLIP net gets a classifier that is not initialised from
class names unless the open-set mixin builds the net (every algorithm on an open-set dataset).
"""


def generate(out: Path, base_dir: Optional[Path] = None, base: str = "wheel") -> List[Path]:
    """Write the series (one folder each), ``series`` and README.md into ``out``; returns the patches.

    Old series folders in ``out`` are replaced; ``out/base`` is kept.
    """
    base_dir = base_dir or out / "base"
    _MOVED_CACHE.clear()
    series_list = all_series()
    out.mkdir(parents=True, exist_ok=True)
    names: Dict[str, List[str]] = {}
    with tempfile.TemporaryDirectory(prefix="upstream_") as tmp:
        staging = Path(tmp) / "out"
        fixes, features = series_list[0], series_list[1:]
        commit = make_tree(Path(tmp) / "fixes", base, base_dir)
        commit_series(Path(tmp) / "fixes", fixes.patches)
        written = {fixes.name: format_series(Path(tmp) / "fixes", commit, staging / fixes.name)}
        tree = Path(tmp) / "features"
        make_tree(tree, base, base_dir)
        for ser in features:
            start = git(tree, "rev-parse", "HEAD").strip()
            commit_series(tree, ser.patches)
            written[ser.name] = format_series(tree, start, staging / ser.name)
        for ser in series_list:
            if len(written[ser.name]) != len(ser.patches):
                raise UpstreamError(
                    f"{ser.name}: git format-patch wrote {len(written[ser.name])} patches for "
                    f"{len(ser.patches)} commits"
                )
            names[ser.name] = [p.name for p in written[ser.name]]
        for old in list(out.glob("*.patch")) + [d for d in out.iterdir() if d.is_dir() and d.name != "base"]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        for ser in series_list:
            shutil.copytree(staging / ser.name, out / ser.name)
    lines = [f"# Generated by `{REGENERATE}`; do not edit. Quilt's series file: every patch, in order.\n"]
    for i, ser in enumerate(series_list):
        needs = "alone onto the base" if i < 2 else "after " + ", ".join(s.name for s in series_list[1:i])
        lines.append(f"# {ser.name} (part {ser.part}): {ser.title}; applies {needs}\n")
        lines += [f"{ser.name}/{n}\n" for n in names[ser.name]]
    (out / "series").write_text("".join(lines), encoding="utf-8")
    (out / "README.md").write_text(readme(series_list, names, base, commit), encoding="utf-8")
    return [out / s.name / n for s in series_list for n in names[s.name]]


def _generated_files(folder: Path) -> List[str]:
    """Paths (relative to ``folder``) of what :func:`generate` writes there."""
    out = [
        p.relative_to(folder).as_posix() for p in folder.rglob("*.patch") if "base" not in p.relative_to(folder).parts
    ]
    return sorted(out + [n for n in ("series", "README.md") if (folder / n).is_file()])


def check(out: Path, base: str = "wheel") -> List[str]:
    """Differences between ``out`` and a fresh generation (empty = up to date)."""
    with tempfile.TemporaryDirectory(prefix="upstream_check_") as tmp:
        fresh = Path(tmp) / "patches"
        generate(fresh, base_dir=out / "base", base=base)
        want, have = _generated_files(fresh), _generated_files(out)
        problems = [f"missing: {n}" for n in want if n not in have] + [f"stale: {n}" for n in have if n not in want]
        problems += [f"differs: {n}" for n in want if n in have and not filecmp.cmp(fresh / n, out / n, shallow=False)]
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="patches", help="output folder (default: patches)")
    parser.add_argument(
        "--base",
        default="wheel",
        help="the USB tree the series are made against: `wheel` (default: the installed semilearn 0.3.2 plus "
        "<out>/base, = USB a8ec1d7) or the path of a clone of USB (its checked-out commit, e.g. main)",
    )
    parser.add_argument(
        "--base-files", default=None, help="folder of the wheel base's other files (default: <out>/base)"
    )
    parser.add_argument("--check", action="store_true", help="only compare --out with a fresh generation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    try:
        if args.check:
            problems = check(out, base=args.base)
            for p in problems:
                logger.error("%s", p)
            if problems:
                logger.error("patches are stale: regenerate with `%s`", REGENERATE)
                return 1
            logger.info("%s is up to date", out)
            return 0
        base_dir = Path(args.base_files) if args.base_files else None
        written = generate(out, base_dir=base_dir, base=args.base)
    except UpstreamError as exc:
        logger.error("error: %s", exc)
        return 2
    for path in written:
        logger.info("%s", path)
    logger.info("%d patches, series and README.md in %s", len(written), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
