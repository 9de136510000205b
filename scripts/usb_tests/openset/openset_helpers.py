"""Helpers of the open-set tests: a tiny image-folder dataset, a tiny CLIP config, train.py on CPU.

``tests/conftest.py`` has helpers of the same shape (a config writer, ``run_train``), but it comes with
the fixes series, and the open-set series must run their tests without it: so these stay separate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("apple", "banana", "cherry", "grape", "lemon", "mango")  # the first 3 are seen


def cpu_training_supported():
    import semilearn.core.utils as utils
    import torch

    return torch.cuda.is_available() or hasattr(utils, "get_device")


needs_training = pytest.mark.skipif(
    not cpu_training_supported(), reason="train.py on this machine needs a GPU or semilearn's CPU support"
)


def write_image_folder(root, per_class_train=4, per_class_test=2, size=16):
    """``root/{train,test}/<class>/*.png``: random images of the 6 classes of :data:`CLASSES`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def openset_config(path, data_dir, save_dir, algorithm, **keys):
    """A USB config of a tiny CPU run: a random-init tiny CLIP at 32 px, 3 of 6 classes seen."""
    base = dict(
        algorithm=algorithm,
        net="clip_tiny",
        net_from_name=False,
        use_pretrain=False,
        pretrained=None,
        pretrain_path="",
        text_encoder="clip",
        num_tuned_blocks=2,
        dataset="image_folder",
        data_dir=str(data_dir),
        num_classes=3,
        num_labels=6,
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
        optim="AdamW",
        lr=0.001,
        momentum=0.9,
        weight_decay=0.01,
        layer_decay=1.0,
        ema_m=0.99,
        amp=False,
        clip_grad=0,
        seed=0,
        save_dir=str(save_dir),
        save_name=algorithm,
        resume=False,
        overwrite=True,
        use_tensorboard=False,
        use_wandb=False,
        use_aim=False,
        gpu="None",
        world_size=1,
        rank=0,
        multiprocessing_distributed=False,
        dist_url="tcp://127.0.0.1:10602",
        dist_backend="nccl",
    )
    base.update(keys)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    return path


def run_train(config, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "train.py", "--c", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def trained_metrics(tmp_path, algorithm, **keys):
    """Train ``algorithm`` through train.py on the tiny dataset; returns openset_metrics.json."""
    data = write_image_folder(tmp_path / "data")
    proc = run_train(openset_config(tmp_path / "run.yaml", data, tmp_path / "runs", algorithm, **keys))
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / algorithm
    assert (run / "latest_model.pth").is_file()
    return json.loads((run / "openset_metrics.json").read_text())
