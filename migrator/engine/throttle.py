"""A token bucket shared by all units, so ``rate_limit`` caps the whole run, not each unit."""

from __future__ import annotations

import threading
import time


class Throttle:
    def __init__(self, bytes_per_second: int | None, burst_seconds: float = 1.0) -> None:
        self.rate = bytes_per_second
        self._capacity = (bytes_per_second or 0) * burst_seconds
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int, stop: threading.Event | None = None) -> None:
        """Block until ``nbytes`` may pass. A batch larger than the bucket goes into debt."""
        if not self.rate or nbytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            (stop or threading.Event()).wait(wait)
