"""Shared by the per-store sync tests: a bulk `run` while the source is being written, and
the store contract driven in the engine's order. Each test keeps its own writer, since
what a writer changes is the store's business."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from migrator.stores.base import Store, Unit

ROOT = Path(__file__).resolve().parents[1]


def run_while_writing(plan: Path, writer: threading.Thread, *, timeout: float,
                      min_writes: int = 100) -> str:
    """`run PLAN --no-verify --json` with ``writer`` busy on the source the whole time; the
    writer is stopped afterwards and must have failed nowhere. Returns run's stdout.

    The overlap is judged by the writes done before the run ended, not by the run's length:
    a faster machine copies sooner, and that must not fail the test."""
    run = subprocess.Popen([sys.executable, "-m", "migrator", "run", str(plan), "--no-verify",
                            "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    writer.start()
    started = time.monotonic()
    stdout, stderr = run.communicate(timeout=timeout)
    elapsed = time.monotonic() - started
    during = sum(writer.done.values())  # type: ignore[attr-defined]
    writer.halt.set()  # type: ignore[attr-defined]
    writer.join()
    assert writer.error is None, repr(writer.error)  # type: ignore[attr-defined]
    assert run.returncode == 0, stderr + stdout
    assert during >= min_writes, (f"{during} writes in the {elapsed:.1f}s run: too few for "
                                  "the writer to matter")
    return stdout


def copy_units(source: Store, target: Store, units: list[Unit]) -> None:
    """What the engine's run does, in its order, without a journal."""
    target.prepare_target(units, source)
    for unit in units:
        importer = target.importer(unit)
        importer.prepare(resumed=False)
        for batch in source.export(unit):
            importer.write_batch(batch)
        importer.finalize()
    target.finalize_target(units, source)


def record_map(store: Store, unit: Unit) -> dict[str, Any]:
    """Every record of a unit as ``records()`` names it, with its fingerprint."""
    return {k: fp for chunk in store.chunks(unit) for k, fp in store.records(unit, chunk)}
