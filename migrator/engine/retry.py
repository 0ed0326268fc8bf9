"""Retry with exponential backoff and jitter: the only place in the engine that waits on errors.

Only errors marked transient are retried; everything else surfaces at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from migrator.errors import MigrateError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # retries after the first try
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2 ** attempt))
        return random.uniform(ceiling / 2, ceiling)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, MigrateError) and exc.transient


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, *,
                    on_retry: Callable[[int, BaseException, float], None] | None = None,
                    stop: threading.Event | None = None) -> T:
    """Call ``fn`` until it succeeds, fails terminally, or the attempts run out."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt >= policy.attempts:
                raise
            wait = policy.delay(attempt)
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            if stop is not None:
                if stop.wait(wait):
                    raise
            else:
                threading.Event().wait(wait)
