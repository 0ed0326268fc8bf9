"""Progress reporting behind a small interface, so the engine never prints.

``TqdmProgress`` draws an overall bar plus one bar per active unit (records, bytes, ETA);
``NullProgress`` is for ``--json``, tests and non-interactive runs.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Progress(Protocol):
    def start(self, total_records: int, total_bytes: int) -> None: ...
    def unit_started(self, unit: str, records: int, bytes_: int, done: int = 0) -> None: ...
    def advance(self, unit: str, records: int, bytes_: int) -> None: ...
    def unit_finished(self, unit: str, state: str) -> None: ...
    def retried(self, unit: str, error: BaseException | str = "") -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, total_records: int, total_bytes: int) -> None:
        pass

    def unit_started(self, unit: str, records: int, bytes_: int, done: int = 0) -> None:
        pass

    def advance(self, unit: str, records: int, bytes_: int) -> None:
        pass

    def unit_finished(self, unit: str, state: str) -> None:
        pass

    def retried(self, unit: str, error: BaseException | str = "") -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """Overall bar in bytes, one bar per active unit in records; tqdm is imported only here."""

    def __init__(self, description: str = "copy", max_unit_bars: int = 8) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._description = description
        self._lock = threading.Lock()
        self._overall = None
        self._units: dict[str, object] = {}
        self._free_slots = list(range(1, max_unit_bars + 1))

    def start(self, total_records: int, total_bytes: int) -> None:
        self._overall = self._tqdm(total=total_bytes or None, unit="B", unit_scale=True,
                                   unit_divisor=1024, desc=self._description, position=0,
                                   dynamic_ncols=True, leave=True)

    def unit_started(self, unit: str, records: int, bytes_: int, done: int = 0) -> None:
        with self._lock:
            if not self._free_slots:
                return
            position = self._free_slots.pop(0)
            bar = self._tqdm(total=records or None, initial=done, unit="rec", unit_scale=True,
                             desc=unit[-40:], position=position, leave=False,
                             dynamic_ncols=True)
            bar.position_slot = position
            self._units[unit] = bar

    def advance(self, unit: str, records: int, bytes_: int) -> None:
        with self._lock:
            bar = self._units.get(unit)
            if bar is not None:
                bar.update(records)  # type: ignore[attr-defined]
            if self._overall is not None:
                self._overall.update(bytes_)

    def unit_finished(self, unit: str, state: str) -> None:
        with self._lock:
            bar = self._units.pop(unit, None)
            if bar is not None:
                self._free_slots.append(bar.position_slot)  # type: ignore[attr-defined]
                self._free_slots.sort()
                bar.close()  # type: ignore[attr-defined]

    def retried(self, unit: str, error: BaseException | str = "") -> None:
        """A line above the bars, so a stalled server is visible while we wait on it."""
        with self._lock:
            self._tqdm.write(f"retrying {unit}: {str(error).splitlines()[0][:160]}")

    def close(self) -> None:
        with self._lock:
            for bar in self._units.values():
                bar.close()  # type: ignore[attr-defined]
            self._units.clear()
            if self._overall is not None:
                self._overall.close()
