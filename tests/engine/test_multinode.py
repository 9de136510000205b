"""Multi-node data-parallel training: ``torchrun --nnodes 2`` on this machine (gloo, two "nodes").

The two nodes train, are stopped after the checkpoint of iteration 3, resume, and end with the model
and the open-set metrics of one process trained on the same global batch. Each node has its own
``save_dir`` (as if the nodes had no shared disk), which shows that only rank 0 writes.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import tiny_run_argv
from usb_cfsg.engine.checkpoint import safe_load
from usb_cfsg.engine.launch import free_port
from usb_cfsg.engine.sampling import ResumableSampler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: A train.py whose processes stop (exit 3) before iteration STOP_AT + 1, as a preempted job would.
STOPPING_TRAIN = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, os.environ["USB_CFSG_ROOT"])
    import train
    from usb_cfsg.engine.hooks import ThroughputHook

    original = ThroughputHook.before_train_step
    stop_at = int(os.environ["STOP_AT"])

    def before_train_step(self, algorithm):
        if algorithm.it == stop_at:
            sys.stdout.flush()
            os._exit(3)
        original(self, algorithm)

    ThroughputHook.before_train_step = before_train_step
    sys.exit(train.cli())
    """
)

#: SGD: an update linear in the gradient, so float-level differences of the summed gradients stay float-level
#: (Adam divides by the running gradient scale, which turns rounding noise of near-zero gradients into lr-sized steps)
COMMON = dict(iters=6, num_eval_iter=3, num_log_iter=3, uratio=2, optim="SGD", lr=0.03, momentum=0.9)


def _two_nodes(script, argv_of_node, env):
    """Start ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank i`` for i = 0, 1; return both results."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--node_rank",
            str(node),
            "--rdzv_endpoint",
            endpoint,
            script,
            *argv_of_node(node),
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    return [(p.wait(timeout=900), p.stdout.read()) for p in procs]  # type: ignore[union-attr]


@pytest.mark.parametrize("world", [2, 3])
def test_processes_together_draw_the_single_process_global_batch(world):
    """At every step, the ranks' (index, augmentation seed) pairs are those of one process with the global batch,
    also after a restart in the middle of an epoch."""
    batch, iters, start = 4, 5, 2
    one = ResumableSampler(23, iters * batch * world, seed=7, batch_size=batch * world)
    ranks = [
        ResumableSampler(23, iters * batch, seed=7, rank=r, world_size=world, batch_size=batch) for r in range(world)
    ]
    for sampler in [one, *ranks]:
        sampler.set_epoch(1)
        sampler.set_start_iteration(start)
    single = list(one)
    per_rank = [list(s) for s in ranks]
    assert len(single) == (iters - start) * batch * world
    for step in range(iters - start):
        together = sorted(p for items in per_rank for p in items[step * batch : (step + 1) * batch])
        assert together == sorted(single[step * batch * world : (step + 1) * batch * world]), step


@pytest.mark.slow
def test_two_nodes_train_resume_and_match_one_process_on_the_same_global_batch(cub_root, tmp_path):
    one = tmp_path / "one"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "train.py", *tiny_run_argv(cub_root, str(one), "run", batch_size=8, **COMMON)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    node_dirs = [tmp_path / "node0", tmp_path / "node1"]
    ckpt_path = str(node_dirs[0] / "run" / "latest_model.pth")

    def argv(node, **extra):
        return tiny_run_argv(cub_root, str(node_dirs[node]), "run", batch_size=4, **COMMON, **extra)

    stopping = tmp_path / "stopping_train.py"
    stopping.write_text(STOPPING_TRAIN)
    results = _two_nodes(str(stopping), argv, dict(env, USB_CFSG_ROOT=ROOT, STOP_AT="3"))
    assert all(rc != 0 for rc, _ in results), results  # both stopped
    assert safe_load(ckpt_path)["it"] == 3
    assert not node_dirs[1].exists()  # rank 1 writes nothing, not even a run folder

    results = _two_nodes(
        os.path.join(ROOT, "train.py"), lambda node: argv(node, resume="true", load_path=ckpt_path), env
    )
    for rc, out in results:
        assert rc == 0, out[-3000:]
    assert not node_dirs[1].exists()
    log = (node_dirs[0] / "run" / "log.txt").read_text()
    assert "process 0/2 on cpu (gloo)" in log and "(from iteration 4, after the checkpoint's 3)" in log

    a = safe_load(str(one / "run" / "latest_model.pth"))
    b = safe_load(ckpt_path)
    assert a["it"] == b["it"] == 6 and b["config"]["world_size"] == 2
    for key in ("model", "ema_model"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    metrics_one = json.loads((one / "run" / "openset_metrics.json").read_text())
    metrics_two = json.loads((node_dirs[0] / "run" / "openset_metrics.json").read_text())
    numbers = {k: v for k, v in metrics_one.items() if isinstance(v, float)}
    assert numbers, metrics_one
    for key, value in numbers.items():
        assert metrics_two[key] == pytest.approx(value, abs=1e-4), key
