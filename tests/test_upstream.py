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


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    """The base tree (installed semilearn 0.3.2 + patches/base), with the committed series applied by git am."""
    tree = tmp_path_factory.mktemp("usb") / "usb"
    upstream.make_base_tree(tree, PATCHES / "base")
    series = sorted(PATCHES.glob("*.patch"))
    upstream.git(tree, "am", "--quiet", *map(str, series))
    return tree


@pytest.fixture(scope="module")
def fresh_tree(fresh, tmp_path_factory) -> Path:
    """The base tree with the freshly generated series applied (the generator's output, stale or not)."""
    tree = tmp_path_factory.mktemp("usb_fresh") / "usb"
    upstream.make_base_tree(tree, PATCHES / "base")
    upstream.git(tree, "am", "--quiet", *map(str, sorted(fresh.glob("*.patch"))))
    return tree


def test_committed_series_equals_a_fresh_generation(fresh):
    committed = sorted(p.name for p in PATCHES.iterdir() if p.suffix == ".patch" or p.name == "README.md")
    generated = sorted(p.name for p in fresh.iterdir())
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


def test_series_is_deterministic_and_self_describing(fresh):
    for path in sorted(fresh.glob("*.patch")):
        text = path.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 "), path.name
        assert f"From: {upstream.AUTHOR_NAME} <{upstream.AUTHOR_EMAIL}>" in text
        assert "Date: Thu, 1 Jan 2026 00:00:00 +0000" in text
        message = text.split("\n---\n", 1)[0]
        assert "Tested" in message, f"{path.name}: the commit message must say how it was tested"
        assert "\\ No newline" not in text or "algorithm_zoo" in text
    readme = (fresh / "README.md").read_text()
    for path in sorted(fresh.glob("*.patch")):
        assert f"`{path.name}`" in readme, f"README.md does not describe {path.name}"
    assert "git am" in readme and upstream.REGENERATE in readme and "plug-in only" in readme


def test_series_applies_with_git_am_onto_semilearn_0_3_2(patched):
    series = sorted(PATCHES.glob("*.patch"))
    subjects = upstream.git(patched, "log", "--format=%s", f"-{len(series)}").splitlines()[::-1]
    expected = [p.subject for p in upstream.series()]
    assert subjects == expected
    assert upstream.git(patched, "status", "--porcelain") == ""
    registry = (patched / "semilearn/core/utils/registry.py").read_text()
    for alg in upstream.algorithm_modules():
        assert f"'{alg}'" in registry, f"{alg} is not in ALL_MODULES"
        assert (patched / f"semilearn/algorithms/{alg}/{alg}.py").is_file()
    assert "from .clip import BUILDERS as _clip_builders" in (patched / "semilearn/nets/__init__.py").read_text()
    importing = [
        str(p.relative_to(patched))
        for p in (patched / "semilearn").rglob("*.py")
        if re.search(r"^\s*(from|import) usb_cfsg\b", p.read_text(), re.M)
    ]
    assert importing == [], f"files of the patched tree import usb_cfsg: {importing}"


def test_base_tree_is_usb_at_the_released_commit(tmp_path):
    tree = tmp_path / "base"
    upstream.make_base_tree(tree, PATCHES / "base")
    assert upstream.git(tree, "rev-parse", "HEAD:semilearn").strip() == upstream.SEMILEARN_TREE
    damaged = tmp_path / "damaged_base"
    (damaged / "docs").mkdir(parents=True)
    for rel in upstream.BASE_FILES:
        (damaged / rel).write_bytes((PATCHES / "base" / rel).read_bytes())
    with open(damaged / "train.py", "a") as f:
        f.write("# local edit\n")
    with pytest.raises(upstream.UpstreamError, match="is not USB's train.py"):
        upstream.make_base_tree(tmp_path / "other", damaged)


def test_moved_modules_differ_from_the_package_only_in_imports_and_module_names(fresh_tree):
    """The patched tree runs the plug-in's code: each moved file differs from its source only on lines
    that import or name modules (and usb_cfsg.algorithms loses the loop that imports its algorithms)."""
    modules = upstream.closure(
        [f"usb_cfsg.algorithms.{m}" for m in upstream.algorithm_modules()]
        + ["usb_cfsg.nets", "usb_cfsg.modules", "usb_cfsg.datasets", "usb_cfsg.evaluation"]
    )
    assert "usb_cfsg.algorithms.cfsg_clip" in modules and "usb_cfsg.engine.plugin" in modules
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
                assert _module_names_out(old, "usb_cfsg") == _module_names_out(new, "semilearn"), (
                    f"{name}: a moved line differs in more than module names:\n  {old}\n  {new}"
                )
                assert "semilearn" in new


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
    assert "cub200" in out["unknown_dataset"]  # the open-set datasets are known names
    assert out["no_dataset"] is None
    assert out["yaml"] == [3e-05, False, [1, 2]]
    assert out["device"] == ("cuda:0" if _cuda() else "cpu")
    assert "train/prefetch_time" in out["timer"]
    assert out["old_checkpoint"] == [0.5, 3]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _config(path: Path, data_dir: str, save_dir: Path, **keys) -> Path:
    """A USB-style config of a tiny CPU run on the CUB replica (3 of 6 classes seen)."""
    base = dict(
        net="clip_tiny",
        pretrained=None,
        text_encoder="clip",
        num_tuned_blocks=2,
        dataset="cub200",
        data_dir=data_dir,
        num_classes=3,
        num_labels=6,
        img_size=64,
        batch_size=4,
        uratio=1,
        eval_batch_size=8,
        epoch=1,
        num_train_iter=4,
        num_eval_iter=2,
        num_log_iter=1,
        num_warmup_iter=0,
        num_workers=0,
        optim="AdamW",
        lr=0.001,
        weight_decay=0.01,
        ema_m=0.99,
        seed=0,
        save_dir=str(save_dir),
        resume=False,
        overwrite=True,
        use_tensorboard=False,
    )
    base.update(keys)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", upstream.algorithm_modules())
def test_open_set_algorithm_trains_through_usb_train_py_without_usb_cfsg(algorithm, patched, cub_root, tmp_path):
    # the config leaves out most open-set keys (relevance_dir, class_split, ...): train.py gives them defaults
    cfg = _config(tmp_path / "run.yaml", cub_root, tmp_path / "runs", algorithm=algorithm, save_name=algorithm)
    proc = run_patched(patched, patched / "train.py", "--c", str(cfg))
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / algorithm
    for name in ("latest_model.pth", "log.txt", "openset_metrics.json", "split.json"):
        assert (run / name).is_file(), f"{name} missing; stderr: {proc.stderr[-2000:]}"
    metrics = json.loads((run / "openset_metrics.json").read_text())
    assert metrics["algorithm"] == algorithm and metrics["dataset"] == "cub200" and metrics["num_seen"] == 3
    for key in ("closed_acc", "auroc", "fpr95", "h_score"):
        assert key in metrics, f"{key} not in openset_metrics.json"
    assert 0.0 <= metrics["closed_acc"] <= 1.0
    assert "training is FINISHED" in proc.stderr


@pytest.mark.slow
def test_usb_fixmatch_trains_on_cpu_resumes_and_refuses_a_bad_checkpoint(patched, cub_root, tmp_path):
    # USB's own algorithm and code paths: get_dataset branch, process_batch/evaluate/TimerHook/send_model_cuda
    # on CPU; USB's set_model builds CLIP nets at their default 224 px.
    common = dict(algorithm="fixmatch", img_size=224, batch_size=2, eval_batch_size=4, save_name="fm")
    cfg = _config(tmp_path / "fm.yaml", cub_root, tmp_path / "runs", **common)
    proc = run_patched(patched, patched / "train.py", "--c", str(cfg))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = tmp_path / "runs" / "fm" / "latest_model.pth"
    assert ckpt.is_file() and "eval/top-1-acc" in proc.stderr and "train/prefetch_time" in proc.stderr

    resume = _config(
        tmp_path / "resume.yaml",
        cub_root,
        tmp_path / "runs",
        num_train_iter=6,
        resume=True,
        load_path=str(ckpt),
        **common,
    )
    proc = run_patched(patched, patched / "train.py", "--c", str(resume))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Resumed from {ckpt}" in proc.stderr

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    broken = _config(tmp_path / "bad.yaml", cub_root, tmp_path / "runs", resume=True, load_path=str(bad), **common)
    proc = run_patched(patched, patched / "train.py", "--c", str(broken))
    assert proc.returncode != 0
    assert f"cannot resume from {bad}" in proc.stderr
    assert bad.read_bytes() == b"not a checkpoint"


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
    shutil.copytree(PATCHES / "base", stale / "base")
    first = sorted(stale.glob("*.patch"))[0]
    first.write_text(first.read_text() + "\n")
    (stale / "9999-extra.patch").write_text("")
    collect = _Collect()
    logging.getLogger("usb_cfsg").addHandler(collect)
    try:
        assert upstream.main(["--out", str(stale), "--check"]) == 1
    finally:
        logging.getLogger("usb_cfsg").removeHandler(collect)
    errors = collect.messages
    assert f"differs: {first.name}" in errors and "stale: 9999-extra.patch" in errors
    assert any(upstream.REGENERATE in e for e in errors)
