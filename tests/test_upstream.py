"""patches/: the series equals a fresh generation, applies with ``git am`` to USB as released in
semilearn 0.3.2, and the patched tree -- without usb_cfsg -- registers and trains the open-set
algorithms through USB's own train.py on CPU, with the USB fixes in effect."""

import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest

from scripts import upstream

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "patches"
STALE = f"patches/ is stale: regenerate with `{upstream.REGENERATE}` and commit patches/"

#: Runs Python in the patched tree with usb_cfsg impossible to import (the editable install's finder
#: included) and the repository off sys.path; argv[1] = patched tree, argv[2] = script, rest = its argv.
GUARD = textwrap.dedent("""\
    import importlib.abc, os, runpy, sys
    class NoUsbCfsg(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "usb_cfsg" or name.startswith("usb_cfsg."):
                raise ImportError("usb_cfsg must not be importable in the patched tree: " + name)
    sys.meta_path.insert(0, NoUsbCfsg())
    tree, script = sys.argv[1], sys.argv[2]
    repo = os.environ["USB_CFSG_REPO"]
    sys.path[:] = [tree] + [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != repo]
    sys.argv = [script] + sys.argv[3:]
    runpy.run_path(script, run_name="__main__")
""")


def run_patched(tree: Path, script: Path, *args: str, cwd: Optional[Path] = None, timeout: int = 600):
    """Run ``script`` with Python in the patched ``tree`` (usb_cfsg blocked); returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        USB_CFSG_REPO=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore"
    )
    return subprocess.run(
        [sys.executable, "-c", GUARD, str(tree), str(script), *args],
        cwd=cwd or tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A fresh generation of the series from the package as it is now."""
    out = tmp_path_factory.mktemp("fresh") / "patches"
    upstream.generate(out, base_dir=PATCHES / "base")
    return out


def _tree(tmp_path_factory, name: str, folder: Path, series=None) -> Path:
    tree = tmp_path_factory.mktemp(name) / "usb"
    upstream.make_base_tree(tree, PATCHES / "base")
    upstream.apply_series(tree, folder, series)
    return tree


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    """The base tree (installed semilearn 0.3.2 + patches/base) with every committed series applied by git am."""
    return _tree(tmp_path_factory, "usb", PATCHES)


@pytest.fixture(scope="module")
def fresh_tree(fresh, tmp_path_factory) -> Path:
    """The base tree with the freshly generated series applied (the generator's output, stale or not)."""
    return _tree(tmp_path_factory, "usb_fresh", fresh)


def _series_names(folder: Path):
    return sorted({p.parent.name for p in upstream.read_series_file(folder)}, key=lambda n: n)


def test_committed_series_equals_a_fresh_generation(fresh):
    committed, generated = upstream._generated_files(PATCHES), upstream._generated_files(fresh)
    assert committed == generated, f"{STALE}\nfiles differ: {sorted(set(committed) ^ set(generated))}"
    for name in generated:
        want, have = (fresh / name).read_text(), (PATCHES / name).read_text()
        if want != have:
            diff = "".join(
                list(
                    difflib.unified_diff(have.splitlines(True), want.splitlines(True), f"patches/{name}", "fresh", n=1)
                )[:40]
            )
            pytest.fail(f"{STALE}\n{diff}")


def test_series_are_split_ordered_and_self_describing(fresh):
    listed = upstream.read_series_file(fresh)
    assert sorted(listed) == sorted(fresh.glob("*/*.patch")), "series must list every patch"
    assert [p.parent.name for p in listed] == sorted(p.parent.name for p in listed), "series in folder order"
    assert _series_names(fresh) == [s.name for s in upstream.all_series()]
    assert [s.part for s in upstream.all_series()] == ["a", "c", "d", "b", "e"]
    for path in listed:
        text = path.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 "), path.name
        assert f"From: {upstream.AUTHOR_NAME} <{upstream.AUTHOR_EMAIL}>" in text
        assert "Date: Thu, 1 Jan 2026 00:00:00 +0000" in text
        message = text.split("\n---\n", 1)[0]
        assert "Tested" in message, f"{path.name}: the commit message must say how it was tested"
        for added in re.findall(r"^diff --git a/(tests/\S+\.py) ", text, re.M):
            if Path(added).name.startswith("test_"):
                assert added in message.replace("\n", " ").replace("tests/openset/ ", "tests/openset/"), (
                    f"{path.parent.name}/{path.name} adds {added} but its message does not cite it"
                )
    algorithm_patches = [p for p in listed if p.parent.name == "5-openset-algorithms" and "-algorithm-" in p.name]
    assert len(algorithm_patches) == len(upstream.algorithm_modules()), "one patch per algorithm"
    for path, alg in zip(algorithm_patches, upstream.algorithm_modules()):
        assert f"b/semilearn/algorithms/{alg}/{alg}.py" in path.read_text()
    readme = (fresh / "README.md").read_text()
    for path in listed:
        assert f"`{path.name}`" in readme, f"README.md does not describe {path.name}"
    assert "git am" in readme and upstream.REGENERATE in readme and "plug-in only" in readme
    assert upstream.MAIN_CHECK["commit"] in readme


def test_fixes_apply_alone_and_the_open_set_series_apply_without_them(tmp_path_factory):
    fixes = _tree(tmp_path_factory, "fixes", PATCHES, ["1-usb-fixes"])
    assert not (fixes / "semilearn/nets/clip").exists() and (fixes / "tests/test_cpu.py").is_file()
    names = _series_names(PATCHES)
    features = _tree(tmp_path_factory, "features", PATCHES, names[1:])
    assert "get_device" not in (features / "semilearn/core/utils/misc.py").read_text()
    nets_only = _tree(tmp_path_factory, "nets", PATCHES, names[1:2])
    assert (nets_only / "semilearn/nets/clip/__init__.py").is_file()


def test_series_applies_with_git_am_onto_semilearn_0_3_2(patched):
    listed = upstream.read_series_file(PATCHES)
    subjects = upstream.git(patched, "log", "--format=%s", f"-{len(listed)}").splitlines()[::-1]
    assert subjects == [p.subject for p in upstream.series()]
    assert upstream.git(patched, "status", "--porcelain") == ""
    registry = (patched / "semilearn/core/utils/registry.py").read_text()
    for alg in upstream.algorithm_modules():
        assert f"'{alg}'" in registry, f"{alg} is not in ALL_MODULES"
        assert (patched / f"semilearn/algorithms/{alg}/{alg}.py").is_file()
        ours = sorted(p.name for p in (ROOT / "config/openset_fg" / alg).glob("*.yaml"))
        assert sorted(p.name for p in (patched / "config/openset_fg" / alg).glob("*.yaml")) == ours
    assert "from .clip import BUILDERS as _clip_builders" in (patched / "semilearn/nets/__init__.py").read_text()
    requirements = (patched / "requirements.txt").read_text()
    for req in ("open_clip_torch", "matplotlib", "PyYAML"):
        assert req in requirements
    setup = (patched / "setup.py").read_text()
    assert "import pkg_resources" not in setup and "package_data=" in setup


def test_patched_tree_names_nothing_of_the_plug_in(patched):
    """No plug-in names (package, config generator, virtual environment, demo CLIP) in what the series add."""
    base = upstream.git(patched, "rev-list", "--max-parents=0", "HEAD").strip()
    changed = upstream.git(patched, "diff", "--name-only", base, "HEAD").split()
    assert changed
    found = []
    for rel in changed:
        path = patched / rel
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found += [f"{rel}: {name}" for name in upstream.forbidden_names(text)]
        found += [f"{rel}: file name" for name in upstream.FORBIDDEN_NAMES if name in rel]
    assert found == [], f"plug-in names in the patched tree: {found}"


def test_moved_modules_differ_from_the_package_only_in_imports_and_names(fresh_tree):
    """The patched tree runs the plug-in's code: each moved file differs from its source only on lines
    that import or name modules or name the plug-in (and usb_cfsg.algorithms loses the loop that imports
    its algorithms)."""
    modules = upstream.moved_modules()
    assert "usb_cfsg.algorithms.cfsg_clip" in modules and "usb_cfsg.engine.plugin" in modules
    assert not [m for m in modules if m.startswith("usb_cfsg.cli")]
    for name in modules:
        src = upstream.module_file(name).read_text().splitlines()
        dst = (fresh_tree / upstream.target_path(name)).read_text().splitlines()
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, src, dst, autojunk=False).get_opcodes():
            if tag == "equal":
                continue
            removed, added = src[i1:i2], dst[j1:j2]
            if name == "usb_cfsg.algorithms" and not added:  # the import loop over _MODULES
                assert "for _module in _MODULES:" in "\n".join(removed), removed
                continue
            assert len(removed) == len(added), f"{name}: lines added or removed: {removed} -> {added}"
            for old, new in zip(removed, added):
                if upstream.forbidden_names(old):
                    assert not upstream.forbidden_names(new), new
                    continue
                assert _module_names_out(old, "usb_cfsg") == _module_names_out(new, "semilearn"), (
                    f"{name}: a moved line differs in more than module names:\n  {old}\n  {new}"
                )


def _module_names_out(line: str, package: str) -> str:
    """``line`` with the module of an import statement and dotted references into ``package`` replaced by M."""
    line = re.sub(r"from\s+[.\w]+\s+import", "from M import", line)
    line = re.sub(r"^(\s*)import\s+[.\w]+", r"\1import M", line)
    return re.sub(rf"\b{package}(\.\w+)+", "M", line)


FIX_CHECKS = textwrap.dedent("""\
    import argparse, json, sys, types
    import numpy as np, torch
    import semilearn
    assert semilearn.__file__.startswith(sys.argv[1]), semilearn.__file__
    from semilearn.core.utils import ALGORITHMS, get_dataset, get_device, over_write_args_from_file
    from semilearn.core.algorithmbase import load_checkpoint_file
    from semilearn.core.hooks.timer import TimerHook
    import semilearn.nets as nets
    out = {"algorithms": sorted(ALGORITHMS.keys()), "nets": sorted(n for n in dir(nets) if n.startswith("clip_")),
           "usb_cfsg_loaded": any(m.startswith("usb_cfsg") for m in sys.modules)}
    try:
        import usb_cfsg  # noqa: F401
        out["usb_cfsg_importable"] = True
    except ImportError:
        out["usb_cfsg_importable"] = False
    class Other:
        pass
    try:
        ALGORITHMS.register("fixmatch")(Other)
        out["duplicate"] = "accepted"
    except KeyError as exc:
        out["duplicate"] = str(exc)
    fixmatch = ALGORITHMS["fixmatch"]
    ALGORITHMS.register("fixmatch")(fixmatch)  # the same class again: allowed
    args = argparse.Namespace()
    try:
        get_dataset(args, "fixmatch", "cifar01", 40, 10)
        out["unknown_dataset"] = "returned"
    except ValueError as exc:
        out["unknown_dataset"] = str(exc)
    out["no_dataset"] = get_dataset(args, "fixmatch", None, 40, 10)
    cfg = sys.argv[2] + "/c.yaml"
    open(cfg, "w").write("lr: 3.0e-05\\nnet_from_name: False\\nlayers: [1, 2]\\n")
    over_write_args_from_file(args, cfg)
    out["yaml"] = [args.lr, args.net_from_name, args.layers]
    out["device"] = str(get_device(None))
    alg = types.SimpleNamespace(log_dict={}, optimizer=types.SimpleNamespace(param_groups=[{"lr": 0.1}]))
    hook = TimerHook()
    hook.before_run(alg); hook.before_train_step(alg); hook.after_train_step(alg)
    out["timer"] = sorted(alg.log_dict)
    path = sys.argv[2] + "/old.pth"
    torch.save({"model": {"w": torch.ones(1)}, "best_eval_acc": np.float64(0.5), "it": 3}, path)
    ckpt = load_checkpoint_file(path)
    out["old_checkpoint"] = [float(ckpt["best_eval_acc"]), ckpt["it"]]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_patched_tree_registers_everything_and_fixes_usb(patched, tmp_path):
    script = tmp_path / "checks.py"
    script.write_text(FIX_CHECKS)
    proc = run_patched(patched, script, str(patched), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert out["usb_cfsg_importable"] is False and out["usb_cfsg_loaded"] is False
    for alg in upstream.algorithm_modules():
        assert alg in out["algorithms"]
    assert "fixmatch" in out["algorithms"] and "clip_tiny" in out["nets"] and "clip_vit_b16" in out["nets"]
    assert "already registered" in out["duplicate"] and "Other" in out["duplicate"]
    assert "unknown dataset 'cifar01', did you mean 'cifar10'" in out["unknown_dataset"]
    assert out["no_dataset"] is None
    assert out["yaml"] == [3e-05, False, [1, 2]]
    assert out["device"] == ("cuda:0" if _cuda() else "cpu")
    assert "train/prefetch_time" in out["timer"]
    assert out["old_checkpoint"] == [0.5, 3]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


PYTEST = "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))\n"


def run_usb_tests(tree: Path, tmp_path: Path, *args: str):
    """The series' own test suite (tests/ of the patched tree), with usb_cfsg impossible to import."""
    script = tmp_path / "run_pytest.py"
    script.write_text(PYTEST)
    return run_patched(tree, script, "-q", "-p", "no:cacheprovider", "tests", *args, timeout=1800)


@pytest.mark.slow
def test_the_series_own_tests_pass_in_the_patched_tree(patched, tmp_path):
    """USB's tree with every series: the tests the series add (CPU, tiny configs, data they write) all pass,
    among them every algorithm trained through USB's train.py, fixmatch with msp/energy open-set metrics,
    resume, and the refusal of a bad checkpoint."""
    proc = run_usb_tests(patched, tmp_path, "-rs")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]


#: a clone of microsoft/Semi-supervised-learning (e.g. GitHub main) to check the series against
USB_CLONE = os.environ.get("USB_MAIN_CLONE", "")
needs_usb_clone = pytest.mark.skipif(
    not USB_CLONE,
    reason=(
        "set USB_MAIN_CLONE to a clone of microsoft/Semi-supervised-learning (e.g. main) to check the series "
        "against it; CI has no network"
    ),
)


@pytest.fixture(scope="module")
def clone_patches(tmp_path_factory) -> Path:
    """The series generated against the USB clone's checked-out commit."""
    out = tmp_path_factory.mktemp("clone_patches") / "patches"
    upstream.generate(out, base=USB_CLONE)
    return out


def _clone_tree(tmp_path_factory, name: str) -> Path:
    tree = tmp_path_factory.mktemp(name) / "usb"
    upstream.make_tree(tree, USB_CLONE, PATCHES / "base")
    return tree


@needs_usb_clone
def test_series_against_a_usb_clone_apply_alone_and_in_order(clone_patches, tmp_path_factory):
    """On the clone: each fix alone, the fixes series alone, and each open-set series after the ones it needs
    (without the fixes), as patches/README.md documents."""
    names = _series_names(clone_patches)
    listed = upstream.read_series_file(clone_patches)
    assert names == [s.name for s in upstream.all_series()]
    for patch in [p for p in listed if p.parent.name == names[0]]:
        tree = _clone_tree(tmp_path_factory, "fix")
        upstream.git(tree, "am", "--quiet", str(patch))
        assert upstream.git(tree, "status", "--porcelain") == "", patch.name
    fixes = _clone_tree(tmp_path_factory, "fixes")
    upstream.apply_series(fixes, clone_patches, names[:1])
    assert (fixes / "tests/test_cpu.py").is_file() and not (fixes / "semilearn/nets/clip").exists()
    for i in range(2, len(names) + 1):
        tree = _clone_tree(tmp_path_factory, "features")
        upstream.apply_series(tree, clone_patches, names[1:i])
        count = len([p for p in listed if p.parent.name in names[1:i]])
        subjects = upstream.git(tree, "log", "--format=%s", f"-{count}").splitlines()[::-1]
        assert subjects == [p.subject for s in upstream.all_series()[1:i] for p in s.patches]
        assert "get_device" not in (tree / "semilearn/core/utils/misc.py").read_text()


@needs_usb_clone
@pytest.mark.slow
def test_series_rebased_onto_a_usb_clone(clone_patches, tmp_path_factory, tmp_path):
    """USB_MAIN_CLONE=<clone>: the whole series applies there, the patched tree names nothing of the plug-in,
    and the series' own tests all pass, none skipped (the result goes into upstream.MAIN_CHECK by hand)."""
    tree = _clone_tree(tmp_path_factory, "clone_all")
    upstream.apply_series(tree, clone_patches)
    subjects = upstream.git(tree, "log", "--format=%s", f"-{len(upstream.series())}").splitlines()[::-1]
    assert subjects == [p.subject for p in upstream.series()]
    found = []
    for rel in upstream.git(tree, "diff", "--name-only", "HEAD~" + str(len(subjects)), "HEAD").split():
        if (tree / rel).is_file():
            found += [f"{rel}: {n}" for n in upstream.forbidden_names((tree / rel).read_text(errors="replace"))]
    assert found == [], f"plug-in names in the patched tree: {found}"
    proc = run_usb_tests(tree, tmp_path, "-rs")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]


def test_module_mapping_follows_the_semilearn_layout():
    assert upstream.target_module("usb_cfsg.algorithms.cfsg_clip") == "semilearn.algorithms.cfsg_clip.cfsg_clip"
    assert upstream.target_path("usb_cfsg.nets") == "semilearn/nets/clip/__init__.py"
    assert upstream.target_module("usb_cfsg.modules.ova_head") == "semilearn.nets.clip.modules.ova_head"
    assert upstream.target_module("usb_cfsg.engine.plugin") == "semilearn.core.openset.plugin"
    assert upstream.target_module("usb_cfsg.evaluation.evaluator") == "semilearn.core.hooks.openset.evaluator"
    with pytest.raises(upstream.UpstreamError, match="plug-in only"):
        upstream.target_module("usb_cfsg.engine.launch")
    with pytest.raises(upstream.UpstreamError, match="stays plug-in only"):
        upstream.closure(["usb_cfsg.evaluation.offline"])  # it imports the launcher


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_check_reports_a_stale_series(fresh, tmp_path):
    stale = tmp_path / "patches"
    shutil.copytree(fresh, stale)
    shutil.copytree(PATCHES / "base", stale / "base", dirs_exist_ok=True)
    first = upstream.read_series_file(stale)[0]
    first.write_text(first.read_text() + "\n")
    (stale / "1-usb-fixes" / "9999-extra.patch").write_text("")
    collect = _Collect()
    logging.getLogger("usb_cfsg").addHandler(collect)
    try:
        assert upstream.main(["--out", str(stale), "--check"]) == 1
    finally:
        logging.getLogger("usb_cfsg").removeHandler(collect)
    errors = collect.messages
    rel = first.relative_to(stale).as_posix()
    assert f"differs: {rel}" in errors and "stale: 1-usb-fixes/9999-extra.patch" in errors
    assert any(upstream.REGENERATE in e for e in errors)
