"""GPU fast paths, exercised on CPU: autocast dtypes, compile with fallback, channels_last,
the decoded-image cache and persistent loader workers."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from usb_cfsg.engine.device import (
    amp_dtype,
    apply_channels_last,
    apply_fast_paths,
    autocast_factory,
    compile_model,
    grad_scaler,
)
from usb_cfsg.engine.sampling import SeededDataset, train_loader
from usb_cfsg.errors import ConfigError

CPU = torch.device("cpu")


class _Records(logging.Handler):
    """Collects what a logger emits (our loggers may not propagate to pytest's caplog)."""

    def __init__(self, name):
        super().__init__(logging.DEBUG)
        self.logger, self.lines = logging.getLogger(name), []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.lines)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


@pytest.fixture(scope="module")
def tiny_cfsg():
    from usb_cfsg.nets.clip import build_clip_net

    torch.manual_seed(0)
    return build_clip_net(
        "clip-tiny",
        3,
        None,
        head="cfsg",
        img_size=64,
        num_tuned_blocks=2,
        class_names=["red bird", "green bird", "blue bird"],
    ).eval()


# ------------------------------------------------------------------ amp_dtype
def test_amp_dtype_resolution_and_scaler():
    assert amp_dtype(CPU, "auto") == torch.bfloat16
    assert amp_dtype(CPU, "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        amp_dtype(CPU, "fp16")
    with pytest.raises(ConfigError, match="auto, bf16, fp16"):
        amp_dtype(CPU, "fp32")
    # bf16 never needs loss scaling; on CPU the scaler is always a pass-through
    assert not grad_scaler(CPU, True, "bf16").is_enabled()
    assert not grad_scaler(CPU, True, "auto").is_enabled()


def test_bf16_autocast_runs_the_cfsg_net_in_bf16(tiny_cfsg):
    x = torch.randn(2, 3, 64, 64)
    with autocast_factory(CPU, True, "bf16")():
        out = tiny_cfsg(x)
    assert out["feat"].dtype == torch.bfloat16
    ref = tiny_cfsg(x)
    assert torch.isfinite(out["logits"].float()).all()
    # same prediction path, bf16 rounding only
    assert torch.allclose(out["logits"].float(), ref["logits"], atol=0.5)
    with autocast_factory(CPU, False, "bf16")():
        assert tiny_cfsg(x)["feat"].dtype == torch.float32


def test_config_keys_validate():
    from usb_cfsg.config import build_config

    args = build_config(
        [
            "--amp",
            "true",
            "--amp_dtype",
            "bf16",
            "--compile",
            "true",
            "--cache_images",
            "true",
            "--persistent_workers",
            "false",
            "--channels_last",
            "true",
        ]
    )
    assert (args.amp_dtype, args.compile, args.cache_images, args.persistent_workers, args.channels_last) == (
        "bf16",
        True,
        True,
        False,
        True,
    )
    with pytest.raises(ConfigError, match="amp_dtype"):
        build_config(["--amp_dtype", "float16"])


# -------------------------------------------------------------------- compile
def _eager_reference(net, x):
    net.zero_grad()
    out = net(x)
    (out["logits"].sum() + out["logits_ova"].sum()).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out, grads


def test_compile_matches_eager_and_keeps_state_dict_keys(tiny_cfsg):
    import copy

    net = copy.deepcopy(tiny_cfsg)
    x = torch.randn(2, 3, 64, 64)
    ref, ref_grads = _eager_reference(net, x)
    keys = list(net.state_dict())
    wrappers = compile_model(net, backend="aot_eager")
    # blocks + the two partial last-block methods + coarse/fine/ova/vsi heads
    assert len(wrappers) == len(net.backbone.visual.transformer.resblocks) + 2 + 4
    out, grads = _eager_reference(net, x)
    assert all(w.failed is None for w in wrappers)
    assert list(net.state_dict()) == keys  # checkpoints stay loadable
    torch.testing.assert_close(out["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
    assert set(grads) == set(ref_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-4)


def test_compile_failure_falls_back_to_eager_with_a_warning(tiny_cfsg):
    import copy

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler for you")

    net = copy.deepcopy(tiny_cfsg)
    x = torch.randn(2, 3, 64, 64)
    ref = net(x)["logits"]
    with _Records("usb_cfsg") as log:
        wrappers = compile_model(net, backend=broken_backend)
        out = net(x)["logits"]
    # every compiled function that ran fell back; the last block's own forward is never called by
    # the CFSG forward (last_block_state / last_block_queries run that block)
    last = f"backbone.visual.transformer.resblocks.{len(net.backbone.visual.transformer.resblocks) - 1}"
    assert [w.name for w in wrappers if w.failed is None] == [last]
    assert all("no compiler for you" in w.failed for w in wrappers if w.failed)
    assert "running it eagerly" in log.text and "compile: false" in log.text
    torch.testing.assert_close(out, ref)
    with _Records("usb_cfsg") as log:
        net(x)  # later calls go straight to eager, without new warnings
    assert "running it eagerly" not in log.text


def test_apply_fast_paths_reads_the_config(tiny_cfsg):
    import copy

    net = copy.deepcopy(tiny_cfsg)
    assert apply_fast_paths(net, SimpleNamespace(compile=False, channels_last=False), CPU) is None
    wrappers = apply_fast_paths(net, SimpleNamespace(compile=True, channels_last=True), CPU, backend="eager")
    assert wrappers and net.backbone.visual.conv1.weight.is_contiguous()  # channels_last is CUDA-only


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    assert apply_channels_last(net) == 1
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- image cache
def _datasets(cub_root, alg="fixmatch"):
    from usb_cfsg.datasets import build_openset_datasets

    args = SimpleNamespace(
        dataset="cub200",
        data_dir=cub_root,
        num_classes=3,
        num_labels=6,
        include_lb_to_ulb=True,
        img_size=32,
        crop_ratio=0.875,
        seed=0,
    )
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return build_openset_datasets(args, alg, mean, std, None)[0]


def test_cached_images_equal_uncached_images(cub_root):
    from usb_cfsg.datasets.cache import attach_image_cache

    plain, cached = _datasets(cub_root), _datasets(cub_root)
    summary = attach_image_cache(cached, threads=2)
    names = [k for k, v in cached.items() if v is not None]
    assert set(summary["datasets"]) == set(names) >= {"train_lb", "train_ulb", "eval", "test_open"}
    # labeled images reused as unlabeled and seen test images in eval + test_open are stored once
    n_items = sum(len(cached[k]) for k in names)
    n_train, n_test = len(cached["train_ulb"]), len(cached["test_open"])
    assert n_train + n_test <= summary["unique_images"] < n_items
    assert summary["datasets"]["train_ulb"]["shape"] == [36, 36, 3]  # floor(32 / 0.875): the Resize((r, r)) head
    assert summary["datasets"]["eval"]["shape"] == [32, 32, 3]  # Resize + CenterCrop head
    for name in names:
        a, b = SeededDataset(plain[name]), SeededDataset(cached[name])
        for idx in range(len(plain[name])):
            key = (idx, 1234 + idx) if name.startswith("train") else idx
            pa, pb = a[key], b[key]
            assert pa.keys() == pb.keys()
            for k, v in pa.items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, pb[k]), (name, idx, k)
                else:
                    assert v == pb[k], (name, idx, k)


def test_cache_lives_in_shared_memory_and_serves_workers(cub_root):
    from usb_cfsg.datasets.cache import CachedSample, attach_image_cache

    cached = _datasets(cub_root)
    attach_image_cache(cached, threads=1)
    sample = cached["train_ulb"].__sample__
    assert isinstance(sample, CachedSample) and sample.images.is_shared()
    batches = [
        b["x_ulb_w"] for b in train_loader(cached["train_ulb"], 4, 2, 0, 0, 1, num_workers=2, persistent_workers=True)
    ]
    ref = [b["x_ulb_w"] for b in train_loader(_datasets(cub_root)["train_ulb"], 4, 2, 0, 0, 1, num_workers=0)]
    assert len(batches) == len(ref) == 2
    for x, y in zip(batches, ref):
        assert torch.equal(x, y)


def test_cache_skips_datasets_without_a_resize_head(cub_root):
    from torchvision import transforms as T

    from usb_cfsg.datasets.cache import attach_image_cache

    ds = _datasets(cub_root)
    ds["eval"].transform = T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])
    with _Records("usb_cfsg.datasets.cache") as log:
        summary = attach_image_cache({"eval": ds["eval"]})
    assert summary["datasets"] == {} and "does not start with a resize" in log.text


def test_cache_over_its_budget_caches_nothing_and_says_why(cub_root):
    from usb_cfsg.datasets.cache import CachedSample, attach_image_cache

    ds = _datasets(cub_root)
    with _Records("usb_cfsg.datasets.cache") as log:
        summary = attach_image_cache(ds, budget_bytes=1000)
    assert summary["datasets"] == {} and "over the cache budget" in summary["skipped"]
    assert "cache_budget_gb" in log.text
    assert not any(isinstance(getattr(d, "__sample__", None), CachedSample) for d in ds.values() if d is not None)
    assert attach_image_cache(ds, budget_bytes=10**9)["bytes"] <= 10**9  # within the budget: cached


def test_cache_is_on_by_default_within_the_budget(cub_root, tmp_path):
    from semilearn.core.utils import get_net_builder

    from tests.conftest import tiny_run_argv
    from usb_cfsg.config import build_config
    from usb_cfsg.datasets.cache import CachedSample
    from usb_cfsg.engine.plugin import build_algorithm

    for budget, cached in (("8", True), ("0", False)):
        args = build_config(tiny_run_argv(cub_root, str(tmp_path), f"auto{budget}", cache_budget_gb=budget))
        assert args.cache_images is None
        alg = build_algorithm(args, get_net_builder(args.net, False), device=CPU, record_split=False)
        assert isinstance(alg.dataset_dict["train_ulb"].__sample__, CachedSample) == cached, budget


# --------------------------------------------------------- persistent workers
class _Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([i, int(torch.randint(0, 10**6, ()))])


def _epochs(loader, epochs, start=0):
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        loader.sampler.set_start_iteration(start if epoch == 0 else 0)
        out.append(torch.cat(list(loader)))
    return out


def test_persistent_workers_give_the_same_order_and_augmentation_across_epochs_and_resume():
    ds = _Numbers()
    ref = _epochs(train_loader(ds, 2, 4, 7, 0, 1, num_workers=0), 3)
    keep = train_loader(ds, 2, 4, 7, 0, 1, num_workers=2, persistent_workers=True)
    assert keep.persistent_workers
    got = _epochs(keep, 3)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert not torch.equal(ref[0], ref[1])  # epochs differ: the check is not vacuous
    resumed = _epochs(train_loader(ds, 2, 4, 7, 0, 1, num_workers=2, persistent_workers=True), 2, start=2)
    assert torch.equal(resumed[0], ref[0][4:]) and torch.equal(resumed[1], ref[1])
    assert not train_loader(ds, 2, 4, 7, 0, 1, num_workers=0, persistent_workers=True).persistent_workers
    assert np.array_equal(ref[2].numpy(), got[2].numpy())


# ------------------------------------------------------------------ start-up
STALE = "usb_cfsg/algorithm_keys.py must declare every key of the algorithm classes (see its docstring)"


def test_declared_keys_equal_the_classes_keys_and_nothing_is_generated():
    import usb_cfsg.algorithm_keys as keys
    from usb_cfsg.algorithms import algorithm_names, get_algorithm_class
    from usb_cfsg.config import algorithm_specs
    from usb_cfsg.modules.semantic_filter import RELEVANCE_RULES
    from usb_cfsg.nets.backbone import DENSE_KINDS
    from usb_cfsg.nets.cfsg import OOD_SCORES

    assert keys.usb_version_installed()
    names = set(algorithm_names())
    assert set(keys.ALGORITHMS) | set(keys.USB_ALGORITHMS) == names
    for name in names:
        stand_in = keys.algorithm_class(name)
        assert isinstance(stand_in, keys.DeclaredAlgorithm), name
        real = get_algorithm_class(name)
        assert algorithm_specs(stand_in) == algorithm_specs(real), STALE + ": " + name
        assert hasattr(stand_in, "validate_config") == hasattr(real, "validate_config"), name
    assert keys.CFSG_OOD_SCORES == OOD_SCORES and keys.DENSE_KINDS == DENSE_KINDS
    assert keys.RELEVANCE_RULES == RELEVANCE_RULES
    from usb_cfsg.nets.oracle import ORACLE_MODES

    assert keys.ORACLE_MODES == ORACLE_MODES
    assert not list(Path(keys.__file__).parent.glob("*.json")), "no generated key copy next to the package"
    # our classes read their rules from the declaration too: a range problem is found by both
    bad = argparse.Namespace(sfm_keep_ratio=1.5, vsi_topk=9, num_classes=4)
    assert keys.algorithm_class("cfsg_clip").validate_config(bad) == get_algorithm_class("cfsg_clip").validate_config(
        bad
    )
    assert len(keys.problems("cfsg_clip", bad)) == 2


def test_another_semilearn_version_reads_usb_keys_from_the_classes(monkeypatch):
    import usb_cfsg.algorithm_keys as keys

    monkeypatch.setattr(keys, "usb_version_installed", lambda: False)
    cls = keys.algorithm_class("fixmatch")
    assert not isinstance(cls, keys.DeclaredAlgorithm) and cls.get_argument()  # the real class, its real keys
    assert isinstance(keys.algorithm_class("cfsg_clip"), keys.DeclaredAlgorithm)  # ours are declared here


def _run_python(code: str) -> str:
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=root),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_help_and_config_errors_come_before_torch_loads(tmp_path):
    out = _run_python(
        "import sys, io, contextlib, train\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert train.cli(['--algorithm', 'cfsg_clip', '--help']) == 0\n"
        "assert '--sfm_keep_ratio' in buf.getvalue() and '--amp_dtype' in buf.getvalue()\n"
        "assert train.cli(['--algorithm', 'fixmatch', '--lr', 'abc']) == 2\n"
        "assert train.cli(['--algorithm', 'cfsg_clip', '--amp_dtpe', 'bf16']) == 2\n"
        "assert train.cli(['--c', 'config/demo/cfsg_fmnist.yaml', '--batch_size', '-1']) == 2\n"
        "assert train.cli(['--c', 'config/cfsg_cub.yaml', '--algorithm', 'openmatch', '--T', '0']) == 2\n"
        "print(sorted(m for m in ('torch', 'semilearn', 'open_clip') if m in sys.modules))\n"
    )
    assert out.strip().splitlines()[-1] == "[]", STALE


def test_import_usb_cfsg_registers_when_semilearn_loads():
    out = _run_python(
        "import sys, usb_cfsg\n"
        "assert 'semilearn' not in sys.modules and 'torch' not in sys.modules\n"
        "from semilearn.core.utils import ALGORITHMS, get_net_builder\n"
        "print('cfsg_clip' in ALGORITHMS, get_net_builder('clip_tiny', False).__name__)\n"
    )
    assert out.strip().splitlines()[-1] == "True clip_tiny"


# ------------------------------------------------------------- cheaper step
def _reference_forward(net, x):
    """CFSGNet's outputs computed the straightforward way: every block on every token."""
    from usb_cfsg.modules import gather_tokens, glmcm_score, mcm_score, ova_unknown_score

    bb = net.backbone
    h = bb.trunk(x)
    tokens, last_in = bb.tuned(h, return_last_input=True)
    z = bb.project(tokens)
    g, p = z[:, 0], z[:, 1:]
    t = net.text().to(z.dtype)
    dense = bb.dense_features(last_in, "value" if net.sfm_dense == "value" else "glmcm")
    c = net._coarse(g, p, dense, t)
    local = bb.dense_features(last_in, net.glmcm_local)
    logits_coarse = net.coarse_head(c["coarse"])
    fine_in = [h[:, :1], gather_tokens(h[:, 1:], c["keep_idx"]) if net.use_sfm else h[:, 1:]]
    if net.use_vsi:
        cues, _ = net.vsi(logits_coarse, net.prototypes.get(fallback=t.detach().float()), t)
        fine_in.append(cues)
    z_f = bb.project(bb.tuned(torch.cat(fine_in, dim=1)))[:, 0]
    logits_fine = net.fine_head(z_f)
    logits = logits_fine if net.closed_head == "fine" else (logits_coarse + logits_fine) / 2
    extra = {}
    if net.zero_shot is not None:  # the frozen reference, every block on every token
        with torch.no_grad():
            tail = net.zero_shot.tail
            g0 = tail.project(tail.tuned(h))[:, 0]
            extra["logits_zs"] = 30.0 * torch.nn.functional.normalize(g0, dim=-1) @ net.zero_shot.text.t()
        logits = (1 - net.zs_weight) * logits + net.zs_weight * extra["logits_zs"]
    logits_ova = net.ova(z_f)
    with torch.no_grad():
        pred = logits.argmax(dim=1)
        scores = {
            "score_ova": ova_unknown_score(logits_ova, pred),
            "score_mcm": mcm_score(g, t, net.mcm_temperature),
            "score_glmcm": glmcm_score(g, local, t, net.mcm_temperature),
        }
    return {
        "logits": logits,
        "feat": z_f,
        "logits_coarse": logits_coarse,
        "logits_fine": logits_fine,
        "logits_ova": logits_ova,
        "feat_local": c["local"],
        "feat_global": g,
        "relevance": c["relevance"],
        "keep_idx": c["keep_idx"],
        **scores,
        **extra,
    }


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"sfm_dense": "tokens"},
        {"sfm_dense": "value"},
        {"sfm_dense": "value", "glmcm_local": "value"},
        {"glmcm_local": "value"},
        {"use_sfm": False},
        {"use_vsi": False},
        {"closed_head": "fine", "sfm_keep_ratio": 0.5},
        {"zs_weight": 0.5},
    ],
)
def test_cfsg_forward_computing_only_used_tokens_equals_the_full_computation(switches):
    from usb_cfsg.nets.clip import build_clip_net

    torch.manual_seed(0)
    net = build_clip_net(
        "clip-tiny",
        3,
        None,
        head="cfsg",
        img_size=64,
        num_tuned_blocks=2,
        class_names=["red bird", "green bird", "blue bird"],
        **switches,
    ).train()
    net.prototypes.update(
        torch.randn(6, net.num_features), torch.tensor([0, 1, 2, 0, 1, 2]), torch.ones(6, dtype=torch.bool)
    )
    x = torch.randn(3, 3, 64, 64)
    results = []
    for forward in (net, lambda images: _reference_forward(net, images)):
        net.zero_grad()
        out = forward(x)
        (
            out["logits"].pow(2).sum()
            + out["logits_ova"].sum()
            + out["feat_local"].sum()
            + out["relevance"].pow(2).sum()
        ).backward()
        results.append((out, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (fast, fast_grads), (ref, ref_grads) = results
    assert fast.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], rtol=1e-4, atol=1e-5)
    assert fast_grads.keys() == ref_grads.keys() and len(ref_grads) > 10
    for name in ref_grads:
        scale = ref_grads[name].abs().max().item()  # float32 rounding differs: compare relative to the scale
        assert (fast_grads[name] - ref_grads[name]).abs().max().item() <= 1e-5 * scale + 1e-7, name


def test_cfsg_step_counts_fewer_flops_than_the_full_computation():
    from torch.utils.flop_counter import FlopCounterMode

    from usb_cfsg.nets.clip import build_clip_net

    torch.manual_seed(0)
    net = build_clip_net(
        "clip-tiny", 3, None, head="cfsg", img_size=64, num_tuned_blocks=2, class_names=["a", "b", "c"]
    ).train()
    x = torch.randn(4, 3, 64, 64)
    flops = []
    for forward in (net, lambda images: _reference_forward(net, images)):
        counter = FlopCounterMode(display=False)
        with counter:
            out = forward(x)
            (out["logits"].sum() + out["logits_ova"].sum()).backward()
        flops.append(counter.get_total_flops())
    assert flops[0] < 0.9 * flops[1]


def test_fast_path_keys_reach_the_algorithm(cub_root, tmp_path):
    from semilearn.core.utils import get_net_builder

    from tests.conftest import tiny_run_argv
    from usb_cfsg.config import build_config
    from usb_cfsg.datasets.cache import CachedSample
    from usb_cfsg.engine.plugin import build_algorithm

    args = build_config(
        tiny_run_argv(
            cub_root,
            str(tmp_path),
            "fast",
            algorithm="cfsg_clip",
            amp="true",
            amp_dtype="bf16",
            compile="true",
            cache_images="true",
            persistent_workers="true",
            num_workers=1,
        )
    )
    alg = build_algorithm(args, get_net_builder(args.net, False), device=CPU, record_split=False)
    with alg.amp_cm():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert not alg.loss_scaler.is_enabled()
    assert alg.compiled and all(w.failed is None for w in alg.compiled)  # compiled lazily, at the first call
    assert not isinstance(alg.ema_model.backbone.visual.transformer.resblocks[0].forward, type(alg.compiled[0]))
    for name in ("train_lb", "train_ulb", "eval"):
        assert isinstance(alg.dataset_dict[name].__sample__, CachedSample), name
    assert alg.loader_dict["train_ulb"].persistent_workers and alg.loader_dict["eval"].persistent_workers
