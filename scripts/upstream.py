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
}
AUTHOR_NAME = "usb_cfsg contributors"
AUTHOR_EMAIL = "usb-cfsg@users.noreply.github.com"
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
    ("usb_cfsg.demo_clip", "semilearn.nets.clip.demo_clip"),
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
    "usb_cfsg.compare": "multi-algorithm comparison runner over the plug-in's train.py",
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


def _rewrite_refs(text: str) -> str:
    """Rewrite ``usb_cfsg.<module>[.<attr>...]`` references of moved modules to their semilearn names."""

    def repl(match: re.Match) -> str:
        parts = ("usb_cfsg" + match.group(1)).split(".")
        for n in range(len(parts), 1, -1):
            mod = ".".join(parts[:n])
            if module_exists(mod):
                try:
                    return ".".join([target_module(mod)] + parts[n:])
                except UpstreamError:
                    return match.group(0)
        return match.group(0)

    return _REF_RE.sub(repl, text)


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
    out = _rewrite_refs("".join(lines))
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
    """Replace the one occurrence of ``old`` in ``path`` with ``new`` (a hand-written change of USB code)."""

    path: str
    old: str
    new: str


@dataclasses.dataclass
class Patch:
    """One commit of the series."""

    subject: str
    body: str
    edits: List[Edit] = dataclasses.field(default_factory=list)
    files: Dict[str, bytes] = dataclasses.field(default_factory=dict)  # new or replaced files
    summary: str = ""  # one line for patches/README.md


def _apply_edit(root: Path, edit: Edit) -> None:
    path = root / edit.path
    text = path.read_text(encoding="utf-8")
    count = text.count(edit.old)
    if count != 1:
        raise UpstreamError(
            f"edit of {edit.path} expects its old text exactly once, found it {count} times:\n{edit.old}"
        )
    path.write_text(text.replace(edit.old, edit.new), encoding="utf-8")


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

Tested on a CPU-only machine (torch 2.14.1): `python train.py --c <config>`
trains fixmatch for a few iterations, evaluates, and writes
latest_model.pth; the GPU code paths are unchanged. Not run: distributed
training on CPU (gloo).""",
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
                "semilearn/core/algorithmbase.py",
                """    get_dataset,
    get_optimizer,
)""",
                """    get_dataset,
    get_device,
    get_optimizer,
)""",
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """        self.ngpus_per_node = torch.cuda.device_count()
        self.loss_scaler = GradScaler()
        self.amp_cm = autocast if self.use_amp else contextlib.nullcontext
        self.gpu = args.gpu
""",
                """        # at least one process per node: CPU-only machines have no GPU to count
        self.ngpus_per_node = max(torch.cuda.device_count(), 1)
        self.loss_scaler = GradScaler()
        self.amp_cm = autocast if self.use_amp else contextlib.nullcontext
        self.gpu = args.gpu
        self.device = get_device(args.gpu)
""",
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """        process batch data, send data to cuda""",
                """        process batch data, send data to self.device""",
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """            # send var to cuda
            if isinstance(var, dict):
                var = {k: v.cuda(self.gpu) for k, v in var.items()}
            else:
                var = var.cuda(self.gpu)""",
                """            # send var to the training device
            if isinstance(var, dict):
                var = {k: v.to(self.device) for k, v in var.items()}
            else:
                var = var.to(self.device)""",
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """                if isinstance(x, dict):
                    x = {k: v.cuda(self.gpu) for k, v in x.items()}
                else:
                    x = x.cuda(self.gpu)
                y = y.cuda(self.gpu)""",
                """                if isinstance(x, dict):
                    x = {k: v.to(self.device) for k, v in x.items()}
                else:
                    x = x.to(self.device)
                y = y.to(self.device)""",
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

Tested: `python train.py --c <config>` reads every key of the config (and the
training run that follows uses them) with ruamel.yaml 0.17.40; by hand with
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

Tested with torch 2.14.1: a run's latest_model.pth resumes; a checkpoint
holding a numpy float64 best_eval_acc, as 0.3.2 wrote them, loads.""",
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
            ),
            Edit(
                "semilearn/core/algorithmbase.py",
                """        checkpoint = torch.load(load_path, map_location="cpu")
""",
                """        checkpoint = load_checkpoint_file(load_path)
""",
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

Tested: resuming from a damaged checkpoint file exits with the error and
leaves the file as it was; resuming from a run's latest_model.pth continues.""",
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

Tested: get_dataset(args, "fixmatch", "cifar01", ...) raises
"unknown dataset 'cifar01', did you mean 'cifar10'?".""",
        edits=[
            Edit(
                "semilearn/core/utils/build.py",
                """    from semilearn.datasets import get_eurosat, get_medmnist, get_semi_aves, get_cifar, get_svhn, get_stl10, get_imagenet, get_json_dset, get_pkl_dset

    if dataset == "eurosat":""",
                """    from semilearn.datasets import get_eurosat, get_medmnist, get_semi_aves, get_cifar, get_svhn, get_stl10, get_imagenet, get_json_dset, get_pkl_dset

    if dataset is None:
        # no dataset: the caller builds its own data loaders (e.g. for semilearn.Trainer)
        return None
    elif dataset == "eurosat":""",
            ),
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
            Edit(
                "semilearn/core/utils/build.py",
                """def get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir='./data', include_lb_to_ulb=True):""",
                """def dataset_names():
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


def get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir='./data', include_lb_to_ulb=True):""",
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

Tested: ALGORITHMS.register("fixmatch")(AnotherClass) raises; importing every
built-in algorithm registers each name once.""",
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
            files[f"config/openset_fg/{alg}/{path.name}"] = path.read_bytes()
    return files


def feature_patches() -> List[Patch]:
    """The open-set code (moved), its glue in USB's files, configs and docs."""
    algs = algorithm_modules()
    alg_modules = [f"usb_cfsg.algorithms.{m}" for m in algs]
    roots = alg_modules + [
        "usb_cfsg.algorithms",
        "usb_cfsg.nets",
        "usb_cfsg.modules",
        "usb_cfsg.datasets",
        "usb_cfsg.evaluation",
    ]
    modules = closure(roots)
    files = _moved_files(modules)
    files.update(
        _generated_inits(
            files,
            {
                "semilearn/core/openset": "Open-set SSL support shared by the open-set algorithms: the algorithm mixin "
                "(data, device, checkpoints, hooks),\nconfiguration keys, errors and registries.\n",
            },
        )
    )
    support = _group(files, "semilearn/core/openset/")
    nets = _group(files, "semilearn/nets/clip/")
    datasets = _group(files, "semilearn/datasets/openset_datasets/")
    hooks = _group(files, "semilearn/core/hooks/openset/")
    per_alg = {m: _group(files, f"semilearn/algorithms/{m}/") for m in algs}
    grouped = set(support) | set(nets) | set(datasets) | set(hooks) | {p for g in per_alg.values() for p in g}
    if set(files) - grouped:
        raise UpstreamError(f"moved files without a patch: {sorted(set(files) - grouped)}")

    def moved(prefix: str) -> str:
        names = sorted(m for m in modules if target_path(m).startswith(prefix))
        return textwrap.fill(f"Moved from: {', '.join(names)}.", 72, break_on_hyphens=False)

    builders = sorted(importlib.import_module("usb_cfsg.nets").BUILDERS)
    dataset_names = importlib.import_module("usb_cfsg.datasets").DATASETS.names()

    patches = [
        Patch(
            subject="Add semilearn.core.openset: shared support of open-set algorithms",
            summary="Algorithm mixin (open-set datasets, device, exact-resume loaders, checkpoints with RNG state, "
            "throughput hook, open-set evaluator), typed config keys, errors, registries.",
            body=f"""\
Open-set semi-supervised learning needs more from an algorithm than
AlgorithmBase gives: datasets with unseen classes in the unlabeled set and an
open-set test set, a net built from class names (CLIP), open-set scores and
metrics, and checkpoints that hold the split and the calibration. This adds
that support as a mixin, PluginMixin, that the open-set algorithms of the
following patches put in front of AlgorithmBase; the built-in algorithms are
unchanged.

PluginMixin builds the open-set datasets (semilearn.datasets.openset_datasets),
data loaders whose order survives a resume, CLIP nets with text-initialised
classifiers, the open-set evaluation hook (semilearn.core.hooks.openset),
atomic checkpoints with RNG state that load weights-only, and a device-agnostic
step. config.py declares every key these algorithms read, with its type,
default and help (train.py uses it in a later patch).

The code is the usb_cfsg plug-in's, moved: imports point to the semilearn
layout, nothing else differs.

{moved("semilearn/core/openset/")}

Tested: the plug-in's test suite (CPU) covers these modules; in this tree the
open-set algorithms of the following patches train through train.py with
them.""",
            files=support,
        ),
        Patch(
            subject="Add CLIP nets for open-set algorithms (semilearn.nets.clip)",
            summary=f"open_clip ViTs split into a frozen trunk and tuned blocks, CLIP and CFSG heads, text "
            f"embeddings, CFSG building blocks; exported from semilearn.nets: {', '.join(builders)}.",
            body=f"""\
The open-set algorithms of this series use CLIP: a visual encoder whose first
blocks stay frozen (run once, without autograd), text embeddings of the class
names, and heads built on both. This adds them as semilearn nets, so that
`net: clip_vit_b16` works like `net: vit_base_patch16_224`:

* semilearn/nets/clip: the open_clip backbone split, the CLIP net (cosine
  classifier initialised from class-name embeddings) and the CFSG net (semantic
  filtering, visual-semantic injection, one-vs-all heads, MCM/GL-MCM scores);
* semilearn/nets/clip/modules: the building blocks, each usable alone;
* semilearn/nets/__init__.py exports the builders {", ".join(builders)}.

{moved("semilearn/nets/clip/")}

Builders take USB's (num_classes, pretrained, pretrained_path) and the
open-set algorithms' class names and switches; `pretrained` is an open_clip
tag (True means openai), `pretrained_path` a local weights file. New
dependency: open_clip_torch (weights are downloaded only for a pretrained tag).

The code is the usb_cfsg plug-in's, moved: imports point to the semilearn
layout, nothing else differs.

Tested: the plug-in's net tests (CPU, a tiny random-init open_clip config);
`semilearn.nets.clip_tiny` builds and trains in this tree.""",
            files=nets,
            edits=[
                Edit(
                    "semilearn/nets/__init__.py",
                    """from .hubert import hubert_base
""",
                    "from .hubert import hubert_base\n"
                    "# CLIP ViTs (open_clip) of the open-set algorithms\n"
                    "from .clip import BUILDERS as _clip_builders\n"
                    + "".join(f"{b} = _clip_builders[{b!r}]\n" for b in builders),
                )
            ],
        ),
        Patch(
            subject="Add fine-grained open-set datasets and their get_dataset branch",
            summary=f"Readers, open-set class split (first / random / SSB), USB datasets; `get_dataset` knows "
            f"{', '.join(dataset_names)}.",
            body=f"""\
Open-set SSL benchmarks split a dataset's classes into K seen classes
(labeled and unlabeled data) and unseen ones (unlabeled data and the open-set
test set only). This adds readers of the fine-grained datasets in their
publishers' layouts, the class split (first K, seeded random, or the Semantic
Shift Benchmark's lists with Easy/Medium/Hard unseen classes), the
labeled/unlabeled split, and the USB datasets, as
semilearn.datasets.openset_datasets.

get_dataset() gets a branch for these names ({", ".join(dataset_names)}),
so USB's own algorithms train on the seen classes of these datasets too
(eval = seen-class test images). The open-set algorithms build the same
datasets plus the open-set test set through their mixin.

{moved("semilearn/datasets/openset_datasets/")}

The code is the usb_cfsg plug-in's, moved: imports point to the semilearn
layout, nothing else differs.

Tested: the plug-in's dataset tests (replicas of each publisher's layout);
fixmatch trains on a CUB-200-2011 replica through train.py in this tree.""",
            files=datasets,
            edits=[
                Edit(
                    "semilearn/core/utils/build.py",
                    """    elif dataset in ['aclImdb', 'ag_news', 'amazon_review', 'dbpedia', 'yahoo_answers', 'yelp_review']:
        lb_dset, ulb_dset, eval_dset, test_dset = get_json_dset(args, algorithm, dataset, num_labels, num_classes, data_dir=data_dir, include_lb_to_ulb=include_lb_to_ulb)
""",
                    """    elif dataset in ['aclImdb', 'ag_news', 'amazon_review', 'dbpedia', 'yahoo_answers', 'yelp_review']:
        lb_dset, ulb_dset, eval_dset, test_dset = get_json_dset(args, algorithm, dataset, num_labels, num_classes, data_dir=data_dir, include_lb_to_ulb=include_lb_to_ulb)
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
                    """def dataset_names():
    \"\"\"
    names get_dataset knows
    \"\"\"
    return ['eurosat',""",
                    """def openset_dataset_names():
    from semilearn.datasets.openset_datasets import DATASETS
    return DATASETS.names()


def dataset_names():
    \"\"\"
    names get_dataset knows
    \"\"\"
    return openset_dataset_names() + ['eurosat',""",
                ),
            ],
        ),
        Patch(
            subject="Add the open-set evaluation hook (semilearn.core.hooks.openset)",
            summary="OpenSetEvalHook: every unknown score's AUROC, FPR@95, open-set balanced accuracy, H-score, "
            "macro-F1, per-difficulty metrics, openset_metrics.json, ROC/histogram/confusion files.",
            body=f"""\
USB evaluates closed-set accuracy only. Open-set SSL is judged on how well
unknown-class test images are told apart: this adds the open-set evaluator as
a hook the open-set algorithms register (after EvaluationHook). At each
evaluation and at the end of training it scores the open-set test set with
every unknown score of the algorithm (higher = more unknown; thresholds and
score ranges fitted on training data only) and reports closed-set accuracy,
AUROC, FPR@95%TPR (unknown and in-distribution as positive), open-set balanced
accuracy, unknown recall, H-score and macro-F1, per SSB difficulty where the
split has them, into the log, TensorBoard and <save_dir>/<save_name>/
openset_metrics.json, with ROC curves, score histograms and the confusion
matrix. New dependency: matplotlib (Agg backend, files only).

{moved("semilearn/core/hooks/openset/")}

The code is the usb_cfsg plug-in's, moved: imports point to the semilearn
layout, nothing else differs.

Tested: the plug-in's metric tests (against scikit-learn and hand-computed
cases); in this tree a CPU run writes openset_metrics.json.""",
            files=hooks,
        ),
    ]
    previous = "defixmatch"
    for m in algs:
        module = f"usb_cfsg.algorithms.{m}"
        cls = registered_class(module)
        alg_files = dict(per_alg[m])
        alg_files[f"semilearn/algorithms/{m}/__init__.py"] = f"from .{m} import {cls}\n".encode("utf-8")
        name = DISPLAY_NAMES.get(m, m)
        patches.append(
            Patch(
                subject=f"Add the {m} algorithm ({name})",
                summary=f"`algorithm: {m}`: {_class_summary(module, cls)} Registered through ALL_MODULES.",
                body=f"""\
{textwrap.fill(f"{name} as a semilearn algorithm (`algorithm: {m}`). {_class_summary(module, cls)}", 72)}

It is registered like the built-in algorithms (ALL_MODULES in
semilearn/core/utils/registry.py) and runs with PluginMixin in front of
AlgorithmBase: open-set datasets, CLIP nets and the open-set evaluation hook.
Its keys are in get_argument(), as for the built-in algorithms.

The code is the usb_cfsg plug-in's, moved: imports point to the semilearn
layout, nothing else differs.

Tested: the plug-in's tests of this algorithm (CPU, tiny CLIP); in this
tree, {m} is registered and `python train.py --c <config>` trains it.""",
                files=alg_files,
                edits=[Edit("semilearn/core/utils/registry.py", f"'{previous}']),", f"'{previous}', '{m}']),")],
            )
        )
        previous = m
    patches.append(
        Patch(
            subject="train.py: defaults for the keys of open-set algorithms",
            summary="Keys the open-set algorithms read (device, pretrained, class_split, ...) that neither the parser "
            "nor the config file set take their documented defaults.",
            body="""\
get_config() declares USB's keys and the algorithm's get_argument() keys;
everything else exists only if the config file sets it. The open-set
algorithms read more common keys (pretrained, num_tuned_blocks, text_encoder,
class_split, ood_threshold, relevance_dir, ...), declared with types and
defaults in semilearn.core.openset.config. A config that leaves one out would
fail with AttributeError deep inside training.

For an algorithm with the open-set mixin, every such key that is still unset
after parsing gets its default; keys set by the parser or the file are not
touched, and the built-in algorithms are unaffected.

Tested: a config that gives only the keys it changes trains cfsg_clip.""",
            edits=[
                Edit(
                    "train.py",
                    """    args = parser.parse_args()
    over_write_args_from_file(args, args.c)
    return args
""",
                    """    args = parser.parse_args()
    over_write_args_from_file(args, args.c)

    # open-set algorithms read common keys the parser does not declare: unset ones take their defaults
    from semilearn.core.openset.config import base_specs
    from semilearn.core.openset.plugin import PluginMixin

    if issubclass(name2alg[args.algorithm], PluginMixin):
        for key, spec in base_specs().items():
            if not hasattr(args, key):
                setattr(args, key, spec.default)
    return args
""",
                )
            ],
        )
    )
    configs = _config_files(algs)
    if configs:
        patches.append(
            Patch(
                subject="Add configs of the open-set algorithms (config/openset_fg)",
                summary=f"{len(configs)} USB-style configs, config/openset_fg/<alg>/<alg>_<dataset>_<num_labels>_<seed>.yaml.",
                body=f"""\
Configs in USB's layout and naming for the open-set algorithms on the
fine-grained datasets: config/openset_fg/<alg>/<alg>_<dataset>_<num_labels>_<seed>.yaml,
save_name = file name, save_dir ./saved_models/openset_fg. Each file's header
says where its data goes and how to run it. Algorithms: {", ".join(sorted({p.split("/")[2] for p in configs}))}.

They are the usb_cfsg plug-in's configs (written by its config generator),
unchanged.

Tested: every config parses and names only keys the algorithm declares (the
plug-in's config tests).""",
                files=configs,
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
        "(configs: `config/openset_fg/`).",
        "",
    ]
    for i, m in enumerate(algs, 1):
        module = f"usb_cfsg.algorithms.{m}"
        name = DISPLAY_NAMES.get(m, m)
        label = f"[{name}]({PAPERS[m]})" if m in PAPERS else (f"{name} ({REFERENCES[m]})" if m in REFERENCES else name)
        docs_lines.append(f"{i}. {label} (`algorithm: {m}`): {_class_summary(module, registered_class(module))}")
    docs_text = "\n".join(docs_lines) + "\n"
    patches.append(
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
    return patches


def series() -> List[Patch]:
    """Every patch of the series, in order: USB fixes first, then the open-set code."""
    return FIXES + feature_patches()


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


def commit_series(repo: Path, patches: Sequence[Patch]) -> None:
    """Apply and commit every patch of ``patches`` in ``repo``."""
    for patch in patches:
        for edit in patch.edits:
            _apply_edit(repo, edit)
        for rel, data in patch.files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        git(repo, "add", "-A")
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


def readme(patches: Sequence[Patch], names: Sequence[str]) -> str:
    """Text of patches/README.md."""
    rows = "\n".join(f"| `{n}` | {p.summary or p.subject} |" for n, p in zip(names, patches))
    data_files = ", ".join(
        f"`{f}`" for p in patches for f in sorted(p.files) if f.startswith("semilearn/") and not f.endswith(".py")
    )
    plugin_only = "\n".join(f"  - `{m}`: {why}." for m, why in PLUGIN_ONLY.items())
    return f"""<!-- GENERATED by `{REGENERATE}`; do not edit. -->
# patches/: CFSG-CLIP and open-set SSL for USB, as a patch series

This folder is the upstream contribution of this project to
[USB](https://github.com/microsoft/Semi-supervised-learning): a `git format-patch` series, one topic
per patch, against USB commit `{USB_COMMIT[:7]}` ({USB_COMMIT}), the commit released as
`semilearn==0.3.2`. It is **generated** from the `usb_cfsg` package, which stays the single source of
truth: the open-set code in the series is the package's code, moved into the semilearn layout with its
imports rewritten (`from ..modules import X` becomes `from semilearn.nets.clip.modules import X`), and
nothing else changed. A test fails when the committed series differs from a fresh generation.

## The patches

| patch | what it does |
|---|---|
{rows}

The first patches fix USB problems the plug-in works around (each on its own, reviewable and mergeable
without the rest); the rest add the open-set code, register it the way USB registers its algorithms
(`ALL_MODULES` in `semilearn/core/utils/registry.py`, the net builders exported from
`semilearn/nets/__init__.py`, a branch of `get_dataset`), configs and the docs' algorithm list. Each
commit message says what, why and how it was tested.

Where the code goes: `usb_cfsg/algorithms/<alg>.py` to `semilearn/algorithms/<alg>/<alg>.py`;
`usb_cfsg/nets/` and `usb_cfsg/demo_clip.py` to `semilearn/nets/clip/`; `usb_cfsg/modules/` to `semilearn/nets/clip/modules/`;
`usb_cfsg/datasets/` to `semilearn/datasets/openset_datasets/`; `usb_cfsg/evaluation/` (evaluator,
metrics, plots, report, relevance) to `semilearn/core/hooks/openset/`; `usb_cfsg/engine/` (mixin,
device, sampling, checkpoints, hooks), `config.py`, `errors.py`, `registry.py`, `progress.py` and the
registration helpers of `usb_cfsg/algorithms/__init__.py` to `semilearn/core/openset/`. The algorithms
come from `usb_cfsg.algorithms._MODULES`, so a new algorithm joins the series by itself, with every
module it imports.

## Base tree

The series touches `semilearn/`, `train.py`, `docs/algorithm_zoo.md` and adds `config/openset_fg/`.
The base is USB at `{USB_COMMIT[:7]}`:

- `semilearn/` is taken from the installed `semilearn==0.3.2` wheel (the files its RECORD lists); its
  git tree equals the commit's
  (`{SEMILEARN_TREE}`), which the generator checks;
- `train.py` and `docs/algorithm_zoo.md`, which the wheel lacks, are kept unmodified in `patches/base/`
  (USB is MIT-licensed; see its `LICENSE.txt`) and checked against their blob hashes at that commit:
{chr(10).join(f"  `{rel}` = `{blob}`" for rel, blob in BASE_FILES.items())}.

So the series applies both to a clone of USB at `{USB_COMMIT[:7]}` and to the tree the tests build.

## Apply

```bash
git clone https://github.com/microsoft/Semi-supervised-learning.git usb && cd usb
git checkout -b openset {USB_COMMIT[:7]}
git am /path/to/usb_cfsg/patches/*.patch
pip install -e . open_clip_torch matplotlib
python train.py --c config/openset_fg/cfsg_clip/cfsg_clip_cub200_400_0.yaml
```

New dependencies of the patched tree: `open_clip_torch` (CLIP nets; `import semilearn` now imports
it), `matplotlib` (evaluation pictures), `PyYAML` (config files of the mixin). The moved package data
({data_files}) needs `package_data` in USB's `setup.py` for a wheel build; an editable install reads
it in place.

## Regenerate

```bash
{REGENERATE}          # after any change of usb_cfsg/
python -m scripts.upstream --out patches/ --check   # exit 1 if patches/ is stale
```

Generation needs git and the installed `semilearn==0.3.2`, and no network. It is deterministic:
fixed author and date, full blob hashes, zeroed `From` commit ids, no signature.

## What stays plug-in only, and why

- The plug-in's own launcher (`train.py`, `eval.py`, `predict.py` at the repository root, typed
  command line, run-folder safety, torchrun support): the series fixes USB's `train.py` instead, and
  USB's `eval.py` is not patched.
- FixMatch and the other built-in algorithms *with open-set metrics* and CLIP class-name classifiers:
  the plug-in wraps any registered algorithm with its mixin at run time; in the patched tree only the
  open-set algorithms carry the mixin, and the built-in ones train on the open-set datasets with
  USB's closed-set evaluation.
- Modules that stay in the plug-in:
{plugin_only}

Every commit of the series leaves `import semilearn` working (checked once by hand, commit by commit,
on a clone of USB at `{USB_COMMIT[:7]}`; the tests check the whole series). The moved code keeps the
texts that name the plug-in -- the checkpoint format tag `usb_cfsg.train/1`, a few error hints, the
`usb_cfsg` logger, the `usb_cfsg_clip` flag of the net builders -- since changing them would make it
differ from the package's code.

Known differences in the patched tree: the moved code logs to the `usb_cfsg` logger or its module's
logger, as in the plug-in, which USB's `train.py` does not configure (their warnings show, their INFO
lines do not; the algorithms' own messages go through USB's logger). USB's `set_model` builds nets
with `num_classes`, `pretrained` (= `use_pretrain`; `True` means OpenAI's weights), `pretrained_path`
only, so a built-in algorithm on a CLIP net gets the net's default input size (224 px) and a classifier
that is not initialised from class names.
"""


def generate(out: Path, base_dir: Optional[Path] = None) -> List[Path]:
    """Write the series and README.md into ``out`` (old ``*.patch`` files there are removed)."""
    base_dir = base_dir or out / "base"
    patches = series()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="usb_cfsg_upstream_") as tmp:
        repo = Path(tmp) / "usb"
        base = make_base_tree(repo, base_dir)
        commit_series(repo, patches)
        staging = Path(tmp) / "out"
        written = format_series(repo, base, staging)
        if len(written) != len(patches):
            raise UpstreamError(
                f"git format-patch wrote {len(written)} patches for {len(patches)} commits (an empty commit?)"
            )
        for old in out.glob("*.patch"):
            old.unlink()
        names = []
        for path in written:
            shutil.copyfile(path, out / path.name)
            names.append(path.name)
    (out / "README.md").write_text(readme(patches, names), encoding="utf-8")
    return [out / n for n in names]


def check(out: Path) -> List[str]:
    """Differences between ``out`` and a fresh generation (empty = up to date)."""
    with tempfile.TemporaryDirectory(prefix="usb_cfsg_check_") as tmp:
        fresh = Path(tmp) / "patches"
        generate(fresh, base_dir=out / "base")
        want = sorted(p.name for p in fresh.iterdir() if p.is_file())
        have = sorted(p.name for p in out.iterdir() if p.is_file() and (p.suffix == ".patch" or p.name == "README.md"))
        problems = [f"missing: {n}" for n in want if n not in have] + [f"stale: {n}" for n in have if n not in want]
        problems += [f"differs: {n}" for n in want if n in have and not filecmp.cmp(fresh / n, out / n, shallow=False)]
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="patches", help="output folder (default: patches)")
    parser.add_argument("--check", action="store_true", help="only compare --out with a fresh generation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    try:
        if args.check:
            problems = check(out)
            for p in problems:
                logger.error("%s", p)
            if problems:
                logger.error("patches are stale: regenerate with `%s`", REGENERATE)
                return 1
            logger.info("%s is up to date", out)
            return 0
        written = generate(out)
    except UpstreamError as exc:
        logger.error("error: %s", exc)
        return 2
    for path in written:
        logger.info("%s", path)
    logger.info("%d patches and README.md in %s", len(written), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
