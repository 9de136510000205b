"""Hooks replacing USB's CUDA-only TimerHook with one that also reports throughput and ETA."""
from __future__ import annotations

import time

from semilearn.core.hooks import Hook

from .device import synchronize


class ThroughputHook(Hook):
    """Per-step timing on any device: data wait, step time, images/s and ETA, plus the lr.

    Writes ``lr``, ``train/prefetch_time``, ``train/run_time``, ``train/images_per_sec`` and
    ``train/eta_min`` into the step's ``log_dict`` (USB's LoggingHook prints and TensorBoards it).
    Images/s counts labeled + unlabeled images of all processes, smoothed over recent steps.
    """

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing

    def before_run(self, algorithm) -> None:
        self._last_end = time.perf_counter()
        self._rate = None
        self._step_avg = None

    def before_train_step(self, algorithm) -> None:
        now = time.perf_counter()
        self._prefetch = now - self._last_end
        self._start = now

    def after_train_step(self, algorithm) -> None:
        synchronize(algorithm.device)
        now = time.perf_counter()
        run_time = now - self._start
        step_time = now - self._last_end
        self._last_end = now
        args = algorithm.args
        images = args.batch_size * (1 + args.uratio) * max(1, args.world_size)
        s = self.smoothing
        self._step_avg = step_time if self._step_avg is None else s * self._step_avg + (1 - s) * step_time
        remaining = max(0, algorithm.num_train_iter - algorithm.it - 1)
        log = algorithm.log_dict
        log["lr"] = float(algorithm.optimizer.param_groups[-1]["lr"])
        log["train/prefetch_time"] = float(self._prefetch)
        log["train/run_time"] = float(run_time)
        log["train/images_per_sec"] = float(images / max(self._step_avg, 1e-9))
        log["train/eta_min"] = float(remaining * self._step_avg / 60.0)
