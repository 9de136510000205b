"""Progress reporting for long loops: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

logger = logging.getLogger("usb_cfsg")


def progress(
    iterable: Iterable[T],
    desc: str,
    total: Optional[int] = None,
    every_s: float = 10.0,
) -> Iterator[T]:
    """Iterate over ``iterable`` while showing progress a person can follow.

    On an interactive terminal this is a tqdm bar; otherwise (log files, CI) one INFO line is
    logged at most every ``every_s`` seconds and one at the end, so logs stay short.

    Args:
        iterable: What to iterate over.
        desc: A short description ("indexing CUB-200-2011", "evaluating").
        total: Number of items, when ``len(iterable)`` is not available.
        every_s: Seconds between plain log lines.

    Yields:
        The items of ``iterable``.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=False)
        return
    start = last = time.perf_counter()
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total is not None else ""
            logger.info("%s: %d%s (%.0f/s)", desc, count, of, count / max(now - start, 1e-9))
    if count:
        logger.info("%s: done, %d items in %.1f s", desc, count, time.perf_counter() - start)
