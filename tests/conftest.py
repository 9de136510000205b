"""Shared test setup: CPU only, two threads, quiet third-party warnings."""

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory):
    """A miniature CUB_200_2011 in the publisher's layout: 6 classes, 4 train + 2 test images each."""
    from tests.datasets.replicas import write_cub_replica

    return str(
        write_cub_replica(tmp_path_factory.mktemp("cub"), num_classes=6, per_class_train=4, per_class_test=2).parent
    )


def tiny_run_argv(data_dir, save_dir, save_name, algorithm="fixmatch", iters=20, **extra):
    """Command-line tokens of a short CPU run with clip_tiny on the CUB replica (3 seen classes)."""
    opts = dict(
        algorithm=algorithm,
        net="clip_tiny",
        pretrained="none",
        dataset="cub200",
        data_dir=data_dir,
        num_classes=3,
        num_labels=6,
        img_size=64,
        batch_size=4,
        eval_batch_size=8,
        num_train_iter=iters,
        num_eval_iter=10,
        num_log_iter=5,
        num_workers=0,
        save_dir=save_dir,
        save_name=save_name,
        device="cpu",
        optim="AdamW",
        lr=0.001,
        use_tensorboard=True,
    )
    if algorithm == "cfsg_clip" and "pretrain_path" not in extra:
        opts["zs_weight"] = 0.0  # a random-init CLIP has no zero-shot classifier to keep (a config error)
    opts.update(extra)
    argv = []
    for k, v in opts.items():
        argv += [f"--{k}", str(v)]
    return argv
