"""What the `bench_sync_*` scripts share: the bulk copy through the command line, then what
``cutover`` does around its freeze, in this process and timed step by step.

A script loads its store's fixture, then calls ``copy_then_cutover_way`` with a function
that changes a share of the source. The source is followed where it can be (the store's
feed, started before the full pass), one full sync pass runs, the changes are made (all
right before the freeze: the worst case for it), then the final pass and the verify of
what it left to prove (``verify_plan`` with the pass's ``Proven``). Figures are wall and
CPU seconds per step and their ratios to the copy.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> tuple[float, float]:
    """Run one command; (wall seconds, its CPU seconds). A failure ends the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    took = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def timed(figures: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` in this process, with its wall and CPU seconds in ``figures``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    out = fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures[f"{name}_s"] = round(time.monotonic() - started, 3)
    figures[f"{name}_cpu_s"] = round(after.ru_utime + after.ru_stime
                                     - before.ru_utime - before.ru_stime, 2)
    return out


def copy_then_cutover_way(plan_args: list[str], change: Callable[[], Any],
                          figures: dict[str, Any], *, parallel: int | None = None) -> None:
    """``plan`` and ``run --no-verify`` with ``plan_args``, then a full pass, ``change()``,
    the final pass and its verify; every figure goes into ``figures``."""
    from migrator.engine import operations
    from migrator.plan import load_plan

    with tempfile.TemporaryDirectory(prefix="oim-bench-sync-") as work:
        plan_path = Path(work) / "plan.yaml"
        cli("plan", *plan_args, "-o", str(plan_path))
        copy_s, copy_cpu = cli("run", str(plan_path), "--no-verify")
        figures["copy_s"], figures["copy_cpu_s"] = round(copy_s, 3), round(copy_cpu, 2)
        plan = load_plan(plan_path)
        if parallel is not None:
            plan.options.parallel = parallel
        figures["units"] = len(plan.inventory)
        with operations.catching_up(plan, plan_path, follow=True) as catch:
            figures["method"] = dict(catch.methods)
            full = timed(figures, "full_pass", catch.run_pass)
            figures["full_pass_changed"] = full.changed
            figures["changes"] = change()
            last = timed(figures, "final_pass", catch.run_pass)
            figures["notes"] = list(catch.notes)
        figures["final_followed"] = sum(u.followed or 0 for u in last.units)
        figures["final_copied"] = sum(u.copied for u in last.units)
        figures["final_deleted"] = sum(u.deleted for u in last.units)
        proven = {u.unit: u.proven for u in last.units if u.proven is not None}
        report = timed(figures, "verify", lambda: operations.verify_plan(plan, plan_path,
                                                                         proven=proven))
        figures["verify_ok"] = report.ok
        figures["verify_rechecked_records"] = sum(u.rechecked_records for u in report.units)
        figures["verify_in_full"] = sum(1 for u in report.units
                                        if u.rechecked is None and "(" not in u.unit)
    for name in ("full_pass", "final_pass", "verify"):
        figures[f"{name}_ratio"] = round(figures[f"{name}_s"] / copy_s, 4)
    figures["freeze_ratio"] = round((figures["final_pass_s"] + figures["verify_s"]) / copy_s,
                                    4)
    figures["load"] = round(os.getloadavg()[0], 1)
