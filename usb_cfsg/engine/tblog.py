"""TensorBoard writer of a run: one point per step and tag, also across a resume.

A resume continues from the last checkpoint, which may be older than the last logged step: a run
stopped at iteration 7 with its checkpoint at iteration 4 had already logged steps 5-7, and the
resumed run logs them again (in a new event file). TensorBoard then shows two points at those steps
(and tools reading the event files see both). So on resume, before the new writer opens:

* :func:`trim_events` rewrites each event file of the run folder that holds anything logged after
  the checkpoint's iteration, keeping only what was logged up to it (atomically, file by file);
* the new writer starts with ``purge_step`` = the first resumed step, TensorBoard's own marker
  that drops, in a TensorBoard already showing the old files, every point from that step on;
* the new writer's file must sort after the old ones, since TensorBoard reads a folder's event files
  in name order. The name is ``events.out.tfevents.<seconds>.<host>.<pid>.<counter>``: two writers of
  one process opened in the same second differ only in the counter, which sorts as text ("10" before
  "9"). So the resumed writer opens only once the clock has passed the newest file's second
  (:func:`wait_past_newest_event_file`, at most one second, and only when resuming that fast).

Steps are the 1-based iteration numbers of the logs (step n = n iterations done), so a checkpoint at
iteration n keeps steps 1..n.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from typing import Any, Optional

logger = logging.getLogger("usb_cfsg")

#: The TensorBoard folder inside the run folder (USB's name).
TB_FOLDER = "tensorboard"


def trim_events(tb_dir: str, last_step: int) -> int:
    """Drop the events logged after step ``last_step`` from every event file in ``tb_dir``.

    Events without a step meaning (the file-version header, graphs) have step 0 and are kept. A file
    left with nothing but its header is removed. Files are rewritten atomically (a temporary file,
    then ``os.replace``); an unreadable tail (a run killed mid-write) is dropped with the rest.

    Args:
        tb_dir: The run's TensorBoard folder (missing: nothing to do).
        last_step: The checkpoint's iteration (steps 1..last_step are kept).

    Returns:
        The number of events dropped.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(glob.glob(os.path.join(tb_dir, "*tfevents*"))):
        if not os.path.isfile(path):
            continue
        kept, cut, values = [], 0, 0
        for raw in RawEventFileLoader(path).Load():
            event = event_pb2.Event.FromString(raw)
            if event.step > last_step:
                cut += 1
            else:
                kept.append(raw)
                values += event.HasField("summary")
        if not cut:
            continue
        dropped += cut
        if not values:  # only the header (and session markers) left
            os.remove(path)
            continue
        tmp = os.path.join(tb_dir, f".trim-{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            writer = RecordWriter(fh)
            for raw in kept:
                writer.write(raw)
            writer.flush()
        os.replace(tmp, path)
    return dropped


_EVENT_SECONDS = re.compile(r"tfevents\.(\d+)\.")


def wait_past_newest_event_file(tb_dir: str) -> float:
    """Sleep until the wall clock is past the second in the newest event file's name in ``tb_dir``.

    A writer opened afterwards gets a larger 10-digit time field, so its file sorts after every
    existing one (see the module docstring).

    Args:
        tb_dir: The TensorBoard folder (missing or empty: no wait).

    Returns:
        The seconds slept (0.0 in a normal resume, minutes after the files were written).
    """
    seconds = [
        int(m.group(1)) for p in glob.glob(os.path.join(tb_dir, "*tfevents*")) if (m := _EVENT_SECONDS.search(p))
    ]
    if not seconds:
        return 0.0
    wait = max(seconds) + 1 - time.time()
    if wait <= 0:
        return 0.0
    time.sleep(wait)
    return wait


def open_tb_log(run_folder: str, enabled: bool, resume_step: Optional[int] = None) -> Any:
    """USB's ``TBLog`` for ``<run_folder>/tensorboard``, ready to continue a run at ``resume_step``.

    Args:
        run_folder: The run folder.
        enabled: ``use_tensorboard``; False gives USB's inactive TBLog.
        resume_step: The checkpoint's iteration on resume (the events after it are trimmed and the
            writer purges from ``resume_step + 1``), None for a fresh start.
    """
    from semilearn.core.utils import TBLog
    from torch.utils.tensorboard import SummaryWriter

    tb_log = TBLog(run_folder, TB_FOLDER, use_tensorboard=False)
    tb_log.use_tensorboard = bool(enabled)
    if not enabled:
        return tb_log
    tb_dir = os.path.join(run_folder, TB_FOLDER)
    purge_step = None
    if resume_step is not None:
        dropped = trim_events(tb_dir, int(resume_step))
        if dropped:
            logger.info(
                "tensorboard: %d events logged after iteration %d (the checkpoint's) were removed; the resumed "
                "run logs those steps again",
                dropped,
                int(resume_step),
            )
        purge_step = int(resume_step) + 1
        wait_past_newest_event_file(tb_dir)
    tb_log.writer = SummaryWriter(tb_dir, purge_step=purge_step)
    return tb_log


__all__ = ["TB_FOLDER", "open_tb_log", "trim_events", "wait_past_newest_event_file"]
