"""Training hooks that replace three of USB's: timing, logging and the parameter update.

* :class:`ThroughputHook` (instead of USB's CUDA-only TimerHook) measures the data wait and the
  compute of each step on any device, and writes ``lr``, ``train/prefetch_time``,
  ``train/run_time``, ``train/images_per_sec`` and ``train/eta_min`` into the step's ``log_dict``.
  Its clock stops *before* evaluation and checkpointing (it runs right after the parameter
  update and the EMA) and restarts when every hook of the step has run (:class:`StepEndHook`),
  so images/s and the ETA count training steps only: evaluations and checkpoint writes are not
  in them (their duration is logged with each evaluation instead).
* :class:`CompactLoggingHook` (instead of USB's LoggingHook) logs one short line every
  ``num_log_iter`` steps: iteration, the main losses, lr, images/s and ETA as h:mm:ss, plus one
  line of evaluation results after each evaluation. Everything in ``log_dict`` goes to
  TensorBoard, at the same 1-based step number as the log (step n = n iterations done). One
  iteration convention everywhere: "it n", "best at it n", the result ``eval/best_it`` and the
  TensorBoard step all count iterations done (USB keeps ``best_it`` 0-based internally, for its
  CheckpointHook; :meth:`CompactLoggingHook.after_run` turns the result into the 1-based number).
* :class:`GuardedParamUpdateHook` (instead of USB's ParamUpdateHook): a step whose loss is not
  finite is skipped (no optimizer step; the lr schedule advances with the iteration counter) with
  a warning naming the non-finite loss terms; ``max_bad_steps`` consecutive ones stop the run with
  :class:`NonFiniteLossError`, before anything else is written, so the last checkpoint (written
  from finite steps only) is kept.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from semilearn.core.hooks import Hook, ParamUpdateHook

from ..errors import UsbCfsgError
from .device import synchronize

logger = logging.getLogger("usb_cfsg")

#: log_dict keys shown in the compact line, in this order (USB's algorithms all log these).
MAIN_LOSSES = ("train/total_loss", "train/sup_loss", "train/unsup_loss")


class NonFiniteLossError(UsbCfsgError, RuntimeError):
    """``max_bad_steps`` consecutive training steps had a non-finite loss."""


def format_hms(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"`` (hours not capped); non-finite -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = int(round(max(0.0, seconds)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


class ThroughputHook(Hook):
    """Per-step timing on any device: data wait, compute, images/s and ETA, plus the lr.

    Placed right after the parameter update and the EMA update (before USB's EvaluationHook and
    CheckpointHook); :class:`StepEndHook` restarts its clock after the last hook of a step. A
    step's time is its data wait plus its compute, so evaluation and checkpoint time never enter
    images/s or the ETA. Images/s counts labeled + unlabeled images of all processes, smoothed
    over recent steps (exponential average); the ETA is the remaining steps times the smoothed step
    time.

    Args:
        smoothing: Weight of the past in the exponential average of the step time.
        clock: Time source in seconds (tests pass a fake one).
    """

    def __init__(self, smoothing: float = 0.9, clock: Callable[[], float] = time.perf_counter) -> None:
        self.smoothing = smoothing
        self.clock = clock
        self._mark = clock()
        self._step_avg: Optional[float] = None
        self._prefetch = 0.0
        self._start = self._mark
        self.compute_end = self._mark

    def before_run(self, algorithm: Any) -> None:
        self._mark = self.clock()
        self._step_avg = None

    def before_train_step(self, algorithm: Any) -> None:
        now = self.clock()
        self._prefetch = now - self._mark
        self._start = now

    def mark_step_end(self) -> None:
        """Restart the data-wait clock (called by :class:`StepEndHook` after the step's last hook)."""
        self._mark = self.clock()

    def after_train_step(self, algorithm: Any) -> None:
        synchronize(algorithm.device)
        now = self.clock()
        self.compute_end = now
        run_time = now - self._start
        step_time = self._prefetch + run_time
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


class StepEndHook(Hook):
    """Registered last: tells :class:`ThroughputHook` that every hook of the step has run."""

    def __init__(self, throughput: ThroughputHook) -> None:
        self.throughput = throughput

    def after_train_step(self, algorithm: Any) -> None:
        self.throughput.mark_step_end()


def _is_main(algorithm: Any) -> bool:
    return int(getattr(algorithm.args, "rank", 0) or 0) == 0


def compact_line(step: int, total: int, log: Dict[str, float]) -> str:
    """One training log line: ``it 25/500 | loss 1.2345 (sup 0.9, unsup 0.33) | lr 1.00e-03 | 45.2 img/s | ETA 0:03:12``.

    The losses shown are ``train/total_loss`` with ``sup``/``unsup`` in brackets when the algorithm
    logs them (USB's algorithms do); otherwise up to three ``*_loss`` keys.
    """
    parts = [f"it {step}/{total}"]
    shown = [k for k in MAIN_LOSSES if k in log]
    if not shown:
        shown = [k for k in log if k.endswith("_loss")][:3]
    if shown:

        def name(key: str) -> str:
            return key.split("/")[-1].replace("_loss", "").replace("total", "loss")

        head, rest = shown[0], shown[1:]
        text = f"{name(head)} {log[head]:.4f}"
        if rest:
            text += " (" + ", ".join(f"{name(k)} {log[k]:.4f}" for k in rest) + ")"
        parts.append(text)
    if "lr" in log:
        parts.append(f"lr {log['lr']:.2e}")
    if "train/images_per_sec" in log:
        parts.append(f"{log['train/images_per_sec']:.1f} img/s")
    if "train/eta_min" in log:
        parts.append(f"ETA {format_hms(60.0 * log['train/eta_min'])}")
    return " | ".join(parts)


class CompactLoggingHook(Hook):
    """Replaces USB's LoggingHook: compact log lines, everything in TensorBoard, 1-based steps.

    Every ``num_log_iter`` (and every ``num_eval_iter``) steps the main process logs
    :func:`compact_line`; after an evaluation also ``it N/T | eval top-1 0.4567 (best 0.4567 at
    it N) | evaluation + checkpoint 3.2 s``. At those steps the whole ``log_dict`` goes to
    TensorBoard at step ``it + 1`` (the number the log shows). After the run, the result
    ``eval/best_it`` is the same 1-based number as "best at it N" (USB's EvaluationHook stores its
    0-based counter); a run that trained no step (clip_zeroshot) evaluated nothing during training
    and has no ``eval/best_*`` results.
    """

    def __init__(
        self, throughput: Optional[ThroughputHook] = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.throughput = throughput
        self.clock = clock

    def after_train_step(self, algorithm: Any) -> None:
        log = algorithm.log_dict
        is_eval = self.every_n_iters(algorithm, algorithm.num_eval_iter) or "eval/top-1-acc" in log
        if not (is_eval or self.every_n_iters(algorithm, algorithm.num_log_iter)):
            return
        step, total = algorithm.it + 1, algorithm.num_train_iter
        if _is_main(algorithm):
            algorithm.print_fn(compact_line(step, total, log))
            if "eval/top-1-acc" in log:
                loaders = getattr(algorithm, "loader_dict", None) or {}
                subset = loaders.get("eval_subset")
                where = f" on eval_subset {len(subset.dataset)}/{len(loaders['eval'].dataset)}" if subset else ""
                text = (
                    f"it {step}/{total} | eval top-1{where} {log['eval/top-1-acc']:.4f} (best "
                    f"{algorithm.best_eval_acc:.4f} at it {best_iteration(algorithm)})"
                )
                if self.throughput is not None:
                    text += f" | evaluation + checkpoint {self.clock() - self.throughput.compute_end:.1f} s"
                algorithm.print_fn(text)
        if algorithm.tb_log is not None:
            algorithm.tb_log.update({k: v for k, v in log.items() if isinstance(v, (int, float))}, step)

    def after_run(self, algorithm: Any) -> None:
        results = getattr(algorithm, "results_dict", None)
        if not isinstance(results, dict) or "eval/best_it" not in results:
            return
        if int(getattr(algorithm, "completed_iters", algorithm.it)) <= 0:  # nothing trained, nothing evaluated
            results.pop("eval/best_it", None)
            results.pop("eval/best_acc", None)
            return
        results["eval/best_it"] = best_iteration(algorithm)


def best_iteration(algorithm: Any) -> int:
    """The 1-based iteration of the best ``eval/top-1-acc`` (USB's ``best_it`` counts from 0)."""
    return int(algorithm.best_it) + 1


def non_finite_terms(log: Dict[str, Any]) -> List[str]:
    """The loss entries of a step's ``log_dict`` that are not finite (``["train/unsup_loss"]``)."""
    return [k for k, v in log.items() if "loss" in k and isinstance(v, (int, float)) and not math.isfinite(float(v))]


class GuardedParamUpdateHook(ParamUpdateHook):
    """USB's parameter update, skipping steps whose loss is not finite (see the module docstring).

    A skipped step does no optimizer step and leaves the gradients zeroed; the scheduler still
    steps so that the lr stays a function of the iteration counter (exact resume). Under
    DistributedDataParallel the decision is agreed by all processes (one all-reduce of a flag) and
    the backward still runs, so DDP's gradient all-reduce stays in step. ``max_bad_steps``
    consecutive skipped steps raise :class:`NonFiniteLossError` naming the terms, the iterations
    and the last checkpoint, which is kept as it was.

    Args:
        max_bad_steps: Consecutive non-finite steps that stop the run (>= 1).
    """

    def __init__(self, max_bad_steps: int = 5) -> None:
        self.max_bad_steps = max(1, int(max_bad_steps))
        self.bad_streak = 0

    def after_train_step(self, algorithm: Any) -> None:
        loss = algorithm.out_dict["loss"]
        bad = not bool(torch.isfinite(loss.detach()).all())
        distributed = bool(getattr(algorithm, "distributed", False)) and dist.is_available() and dist.is_initialized()
        if distributed:
            flag = torch.tensor([1.0 if bad else 0.0], device=loss.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        if not bad:
            self.bad_streak = 0
            super().after_train_step(algorithm)
            return
        if distributed and isinstance(algorithm.model, torch.nn.parallel.DistributedDataParallel):
            scaler = getattr(algorithm, "loss_scaler", None)
            (scaler.scale(loss) if algorithm.use_amp and scaler is not None else loss).backward()
        algorithm.model.zero_grad(set_to_none=True)
        algorithm.optimizer.zero_grad(set_to_none=True)
        if algorithm.scheduler is not None:
            with warnings.catch_warnings():  # torch warns when no optimizer.step() came first; skipping is intended
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                algorithm.scheduler.step()
        self.bad_streak += 1
        step = algorithm.it + 1
        terms = non_finite_terms(algorithm.log_dict) or ["the loss returned by train_step"]
        if _is_main(algorithm):
            logger.warning(
                "it %d: non-finite %s: step skipped (%d in a row; the run stops at max_bad_steps=%d)",
                step,
                ", ".join(terms),
                self.bad_streak,
                self.max_bad_steps,
            )
        if self.bad_streak >= self.max_bad_steps:
            last = getattr(algorithm, "last_checkpoint", None)
            kept = (
                f"the last checkpoint {last[0]!r} (iteration {last[1]}) is kept"
                if last
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"{self.bad_streak} consecutive steps (iterations {step - self.bad_streak + 1}-{step}) had a non-finite "
                f"loss ({', '.join(terms)}); the run stops and {kept}. Try a lower lr, clip_grad > 0 or amp false, "
                f"or raise max_bad_steps"
            )
