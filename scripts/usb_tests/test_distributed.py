"""Two nodes train together through train.py: torchrun (env://) and USB's own --rank/--dist_url launch.

Both "nodes" run on this machine (CPU, gloo), each with its own save_dir as on nodes without a shared disk.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, cpu_training_supported, fixmatch_config

pytestmark = pytest.mark.skipif(not cpu_training_supported(), reason="needs a GPU or semilearn's CPU support")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(commands):
    """Run the nodes' commands at the same time; returns (exit code, output) of each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append((proc.returncode, out))
    return results


@pytest.mark.parametrize("launcher", ["torchrun", "dist_url"])
def test_two_nodes_train_as_one_run(semi_aves_root, tmp_path, launcher):
    port = free_port()
    commands = []
    for node in (0, 1):
        keys = dict(num_train_iter=4, num_eval_iter=2)
        if launcher == "dist_url":  # USB's launch: --world_size nodes, --rank node, one shared dist_url
            keys.update(world_size=2, rank=node, multiprocessing_distributed=True, dist_url=f"tcp://127.0.0.1:{port}")
        config = fixmatch_config(tmp_path / f"node{node}.yaml", semi_aves_root, tmp_path / f"node{node}", **keys)
        train = ["train.py", "--c", str(config)]
        if launcher == "torchrun":
            rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node)]
            commands.append(
                [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--rdzv_endpoint", f"127.0.0.1:{port}"]
                + train
            )
        else:
            commands.append([sys.executable] + train)
    for code, out in start_nodes(commands):
        assert code == 0, out[-3000:]
    checkpoints = []
    for node in (0, 1):
        run = tmp_path / f"node{node}" / "fixmatch"
        log = (run / "log.txt").read_text()
        assert "world_size=2" in log, log[-2000:]  # one run of two processes, not two runs of one
        if launcher == "torchrun":
            assert "dist_url='env://'" in log
        checkpoints.append(torch.load(run / "latest_model.pth", map_location="cpu", weights_only=True))
    assert checkpoints[0]["it"] == checkpoints[1]["it"]
    # the nodes kept one model: equal parameters (averaged gradients); BatchNorm's running statistics are
    # each node's own (DDP with broadcast_buffers=False, no SyncBatchNorm on CPU)
    parameters = [name for name in checkpoints[0]["model"] if "running_" not in name and "num_batches" not in name]
    assert parameters
    for name in parameters:
        assert torch.equal(checkpoints[0]["model"][name], checkpoints[1]["model"][name]), name
