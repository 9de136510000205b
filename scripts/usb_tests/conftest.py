"""Fixtures of semilearn's tests: CPU only, tiny configs, data the tests write themselves.

Run from the repository root: ``python -m pytest tests``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: classes of the semi_aves replica: USB's main also scores top-5 accuracy (sklearn's top_k_accuracy_score),
#: which fails on an evaluation set with two classes
SEMI_AVES_CLASSES = 5


def cpu_training_supported():
    """USB trains on this machine: a GPU, or the CPU support of semilearn.core.utils.get_device."""
    import semilearn.core.utils as utils
    import torch

    return torch.cuda.is_available() or hasattr(utils, "get_device")


def write_config(path, **keys):
    """A YAML config of ``keys`` (values written as JSON, which YAML reads)."""
    import json

    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def run_train(config, timeout=900):
    """``python train.py --c config`` in the repository root; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "train.py", "--c", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_images(folder, count, seed, size=16):
    """``count`` random RGB PNG images under ``folder``; returns their names."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        name = f"img_{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


@pytest.fixture(scope="session")
def semi_aves_root(tmp_path_factory):
    """A miniature semi_aves (USB's file-list dataset): 5 classes, 4 labeled, 4 unlabeled, 2 test images each,
    readable by both layouts USB has used for its image paths."""
    root = tmp_path_factory.mktemp("data")
    task = root / "semi_fgvc" / "semi_aves"
    task.mkdir(parents=True)
    for split, per_class in (("l_train_val", 4), ("u_train_in", 4), ("test", 2)):
        lines = []
        for c in range(SEMI_AVES_CLASSES):
            rel = Path("images") / split / str(c)
            for name in write_images(root / "semi_fgvc" / rel, per_class, seed=hash((split, c)) % 1000):
                lines.append(f"{rel / name} {c}\n")
        (task / f"{split}.txt").write_text("".join(lines))
    # the listed paths are relative to semi_fgvc/ for USB 0.3.2 and to semi_fgvc/semi_aves/ for USB's main
    (task / "images").symlink_to(root / "semi_fgvc" / "images", target_is_directory=True)
    return root


def fixmatch_config(path, data_dir, save_dir, **keys):
    """A tiny fixmatch run on the semi_aves replica with a small WideResNet at 32 px on CPU."""
    base = dict(
        algorithm="fixmatch",
        net="wrn_28_2",
        net_from_name=False,
        use_pretrain=False,
        pretrain_path="",
        dataset="semi_aves",
        data_dir=str(data_dir),
        num_classes=SEMI_AVES_CLASSES,
        num_labels=4 * SEMI_AVES_CLASSES,
        img_size=32,
        crop_ratio=0.875,
        batch_size=2,
        uratio=1,
        eval_batch_size=4,
        epoch=1,
        num_train_iter=2,
        num_eval_iter=2,
        num_log_iter=1,
        num_warmup_iter=0,
        num_workers=0,
        optim="SGD",
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0005,
        layer_decay=1.0,
        ema_m=0.999,
        amp=False,
        clip_grad=0,
        hard_label=True,
        T=0.5,
        p_cutoff=0.95,
        ulb_loss_ratio=1.0,
        seed=0,
        save_dir=str(save_dir),
        save_name="fixmatch",
        resume=False,
        overwrite=True,
        use_tensorboard=False,
        use_wandb=False,
        use_aim=False,
        gpu="None",
        world_size=1,
        rank=0,
        multiprocessing_distributed=False,
        dist_url="tcp://127.0.0.1:10601",
        dist_backend="nccl",
    )
    base.update(keys)
    return write_config(path, **base)
