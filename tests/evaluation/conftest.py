"""Shared fixtures for the evaluation tests."""

from __future__ import annotations

import logging
from typing import Iterator, List

import pytest


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> List[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]


@pytest.fixture
def eval_log() -> Iterator[_Collector]:
    """Collect the records of the ``usb_cfsg.evaluation`` loggers, whatever their propagation."""
    handler = _Collector()
    logger = logging.getLogger("usb_cfsg.evaluation")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
