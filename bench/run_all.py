#!/usr/bin/env python3
"""Regenerate docs/benchmarks.md's results table (`make bench`).

    python bench/run_all.py                          # every scenario, median of 3 (30-40 min)
    python bench/run_all.py --only mysql,redis       # stores or scenario ids
    python bench/run_all.py --quick                  # small sizes, 1 run, to /tmp (minutes)

Each scenario is one `bench/compare.py` run in its own process (it starts its own servers,
loads the fixture once, runs the native tool and ours interleaved --repeat times and
prints JSON). The table between `<!-- bench:begin -->` and `<!-- bench:end -->` in the
output file is rewritten; the prose outside the markers is left as it is. Rows of
scenarios not run this time are kept as they were. Each row names the command that made
it, the date, the load average during its runs and our `run`'s peak RSS. Rows below their
goal are marked in the table and listed on stdout at the end. A --quick run writes to a
separate file unless --output says otherwise, so measured rows are never replaced by it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
QUICK_OUTPUT = Path(tempfile.gettempdir()) / "openim-migrate-bench-quick.md"
RESULTS = Path(tempfile.gettempdir()) / "openim-migrate-bench.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "openim-migrate-bench-quick.json"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
VERIFY_GOAL = 0.30  # verify may take at most this fraction of the copy's time
# ... except where issue 10 set another: Redis verify reads every value on both sides
VERIFY_GOALS = {"redis": 0.50}
MISS = "**misses goal**"
BIN = Path(os.environ.get("OPENIM_MIGRATE_BIN") or Path.home() / ".cache/openim-migrate/bin")


@dataclass(frozen=True)
class Row:
    """One table row: a native tool's figures from one scenario's result."""

    id: str
    native: str  # key in the result's "natives"
    tool: str  # the native tool, as the table names it
    goal: float  # ratio native seconds / our copy seconds must be at least this
    goal_note: str = ""


@dataclass(frozen=True)
class Scenario:
    id: str
    store: str  # compare.py's store argument; --only may name it
    args: tuple[str, ...]
    describe: Callable[[dict[str, Any]], str]  # the "data" cell, from the result
    rows: tuple[Row, ...] = field(default=())


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _units(count: int) -> str:
    return f"{count} unit" if count == 1 else f"{count} units"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def scenarios(o: argparse.Namespace) -> list[Scenario]:
    """Every row of the table, in table order, at the sizes the options give."""
    mysql_tool = "`mariadb-dump --single-transaction --quick \\| mariadb`"
    migrate = "SCAN + `MIGRATE … COPY REPLACE KEYS` loop"
    rclone = "`rclone copy` + `rclone check`"
    return [
        Scenario("mysql", "mysql", ("mysql", "--rows", str(o.mysql_rows)),
                 lambda r: f"{_n(r['rows'])} `chat_logs` rows, default options "
                           f"({_units(r['units'])})",
                 (Row("mysql/mariadb-dump", "mariadb-dump", mysql_tool, 1.5),
                  Row("mysql/mydumper", "mydumper",
                      "`mydumper --threads 4` + `myloader --threads 4`", 1.0,
                      "goal set at 2M rows"))),
        Scenario("mongo", "mongo", ("mongo", "--scale", f"{o.mongo_scale:g}"),
                 lambda r: f"OpenIM fixture, scale {r['scale']:g}: {_n(r['documents'])} "
                           f"documents ({r['server']}; indexes with `_id`'s: ours "
                           f"{r['indexes'].get('ours', '?')}, "
                           f"native {r['indexes'].get('native', '?')})",
                 (Row("mongo", "mongodump",
                      "`mongodump --archive \\| mongorestore --archive --noIndexRestore`",
                      1.0),)),
        Scenario("redis", "redis", ("redis", "--keys", str(o.redis_keys)),
                 lambda r: f"{_n(r['keys'])} mixed keys (70% strings, 30% hashes/sets/zsets),"
                           f" default options ({_units(r['units'])})",
                 (Row("redis", "migrate_loop", migrate, 1.0),)),
        Scenario("redis-split", "redis",
                 ("redis", "--keys", str(o.redis_keys),
                  f"--plan-arg=--unit-records={max(1, o.redis_keys // 4)}"),
                 lambda r: f"same keys, split by `--unit-records` ({_units(r['units'])}, "
                           f"{r.get('parallel', 4)} in flight): why a standalone DB is one "
                           "unit by default",
                 (Row("redis-split", "migrate_loop", migrate, 0.0, "reference"),)),
        Scenario("redis-small", "redis", ("redis", "--keys", str(o.redis_small_keys)),
                 lambda r: f"{_n(r['keys'])} mixed keys ({_units(r['units'])})",
                 (Row("redis-small", "migrate_loop", migrate, 0.8),)),
        Scenario("objects-small", "objects", ("objects", "--small", str(o.objects_small)),
                 lambda r: f"{_n(r['objects'])} small objects ({_mib(r['bytes'])})",
                 (Row("objects-small", "rclone", rclone, 1.2),)),
        Scenario("objects-large", "objects",
                 ("objects", "--small", str(o.objects_large_small),
                  "--large", str(o.objects_large)),
                 lambda r: f"{r['large']} × 50 MiB + {r['objects'] - r['large']} small "
                           f"({_mib(r['bytes'])})",
                 (Row("objects-large", "rclone", rclone, 0.9),)),
    ]


# ------------------------------------------------------------------------------ servers
def _version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(pattern, out)
    return found.group(1) if found else ""


def store_labels() -> dict[str, str]:
    """The store column: the servers compare.py starts here (scripts/services.py)."""
    def local(var: str, label: str) -> str:
        return label if var not in os.environ else label.split(" ")[0] + " (OIM_* servers)"

    maria = _version(["mariadbd", "--version"], r"Ver (\d+\.\d+\.\d+)-MariaDB")
    redis = _version(["redis-server", "--version"], r"v=(\d+\.\d+\.\d+)")
    ferret = _version([str(BIN / "ferretdb"), "--version"], r"version: v?(\S+)")
    return {
        "mysql": local("OIM_MYSQL_SRC_URL", f"MySQL (MariaDB {maria or '?'})"),
        "redis": local("OIM_REDIS_SRC_URL", f"Redis {redis or '?'} (standalone → standalone)"),
        "mongo": local("OIM_MONGO_SRC_URL", f"MongoDB (FerretDB {ferret or '?'} both sides)"),
        "objects": local("OIM_S3_SRC_URL", "objects (MinIO → MinIO)"),
    }


# -------------------------------------------------------------------------------- table
HEADER = ("| row | store | data | native tool | native | ours (copy) | ratio | goal "
          f"| verify / copy (goal ≤ {VERIFY_GOAL:.2f}, Redis ≤ {VERIFY_GOALS['redis']:.2f}) "
          "| peak RSS (run) | load (1 min) "
          "| made by |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
ROW_ID = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def row_line(scenario: Scenario, row: Row, result: dict[str, Any], label: str,
             command: str, day: str) -> tuple[str, list[str]]:
    """The table line for one row, and what misses its goal (empty: nothing)."""
    native = result["natives"][row.native]
    tool = row.tool
    if result.get("server", "ferretdb") != "ferretdb":
        label = f"MongoDB ({result['server']} both sides)"
        if "noIndexRestore" not in result.get("commands", {}).get(row.native, ""):
            tool = tool.replace(" --noIndexRestore", "")  # real MongoDB: indexes restored
    misses = []
    ratio = f"**{native['ratio']:.2f}×**"
    if native["ratio"] < row.goal:
        ratio = f"{native['ratio']:.2f}× {MISS}"
        misses.append(f"copy {native['ratio']:.2f}× of {row.native} (goal ≥ {row.goal:g}×)")
    fraction = result["verify_fraction"]
    verify = f"{fraction:.2f}"
    verify_goal = VERIFY_GOALS.get(scenario.store, VERIFY_GOAL)
    if fraction > verify_goal:
        verify += f" {MISS}"
        misses.append(f"verify {fraction:.2f} of copy (goal ≤ {verify_goal:.2f})")
    if "check_ratio" in result:
        verify += f" (vs `rclone check`: {result['check_ratio']:.2f}×)"
    goal = f"≥ {row.goal:g}×" + (f" ({row.goal_note})" if row.goal_note else "")
    runs = "1 run" if result["repeat"] == 1 else f"median of {result['repeat']}"
    low, high = result["load"]
    cells = [f"`{row.id}`", label, scenario.describe(result), tool,
             f"{native['s']:.2f} s", f"{result['copy_s']:.2f} s", ratio, goal, verify,
             f"{result['run_rss_mib']} MiB", f"{low:.1f}–{high:.1f}",
             f"{day}, {runs}: `{command}`"]
    return "| " + " | ".join(cells) + " |", misses


def misses_in(line: str) -> list[str]:
    """The goals a kept table line was marked as missing (its ratio and verify cells)."""
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    if len(cells) < 9:
        return []
    return [f"{what} {cells[i].split(' ')[0]} misses its goal"
            for what, i in (("ratio", 6), ("verify / copy", 8)) if MISS in cells[i]]


def render(old_block: str, fresh: dict[str, str], order: list[str], summary: str) -> str:
    """The text between the markers: fresh rows replace old rows of the same id; rows of
    scenarios not run now stay; unknown old rows stay at the end."""
    kept: dict[str, str] = {}
    for line in old_block.splitlines():
        found = ROW_ID.match(line)
        if found:
            kept[found.group(1)] = line
    kept.update(fresh)
    ids = [i for i in order if i in kept] + [i for i in kept if i not in order]
    body = "\n".join(kept[i] for i in ids)
    return ("\n<!-- written by bench/run_all.py: edit the prose outside these markers -->\n"
            f"{summary}\n\n{HEADER}\n{body}\n")


def check_markers(path: Path) -> str:
    """The file's text (a new file's skeleton), refused before any run if its markers are
    not exactly one begin/end pair: nothing outside them may be touched."""
    text = path.read_text() if path.exists() else (
        "# Benchmarks (bench/run_all.py)\n\n" f"{BEGIN}\n{END}\n")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path}: needs exactly one {BEGIN} … {END} pair; nothing written")
    return text


def write_table(path: Path, fresh: dict[str, str], order: list[str], summary: str) -> None:
    head, rest = check_markers(path).split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + render(old, fresh, order, summary) + END + tail)


# -------------------------------------------------------------------------------- main
def run_scenario(scenario: Scenario, repeat: int, parallel: int | None
                 ) -> tuple[dict[str, Any] | None, str, float]:
    """compare.py in its own process: (its JSON result or None, the command, seconds)."""
    args = [*scenario.args, "--repeat", str(repeat)]
    if parallel:
        args += ["--parallel", str(parallel)]
    command = " ".join(["python", "bench/compare.py", *map(shlex.quote, args)])
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), *args],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None, command, seconds
    return json.loads(lines[-1]), command, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="",
                        help="comma-separated stores (mysql, mongo, redis, objects) or "
                             "scenario ids (e.g. redis-small, objects-large)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and 1 run, written to "
                             f"{QUICK_OUTPUT} unless --output is given")
    parser.add_argument("--repeat", type=int, help="rounds per scenario (3; --quick: 1)")
    parser.add_argument("--output", type=Path,
                        help=f"the markdown file to update (default {DOC.relative_to(ROOT)})")
    parser.add_argument("--json", type=Path,
                        help="where every group's full JSON (each round) is written "
                             f"(default {RESULTS}, --quick: {QUICK_RESULTS})")
    parser.add_argument("--parallel", type=int, help="passed to compare.py (its default: 4)")
    parser.add_argument("--mysql-rows", type=int)
    parser.add_argument("--redis-keys", type=int)
    parser.add_argument("--redis-small-keys", type=int)
    parser.add_argument("--mongo-scale", type=float)
    parser.add_argument("--objects-small", type=int)
    parser.add_argument("--objects-large", type=int, help="50 MiB objects")
    parser.add_argument("--objects-large-small", type=int,
                        help="small objects beside the large ones")
    parser.add_argument("--list", action="store_true", help="print the scenarios and exit")
    opts = parser.parse_args()
    sizes = ({"mysql_rows": 20_000, "redis_keys": 20_000, "redis_small_keys": 5_000,
              "mongo_scale": 0.3, "objects_small": 200, "objects_large": 1,
              "objects_large_small": 20} if opts.quick else
             {"mysql_rows": 100_000, "redis_keys": 1_000_000, "redis_small_keys": 200_000,
              "mongo_scale": 3.0, "objects_small": 10_000, "objects_large": 4,
              "objects_large_small": 20})
    for name, default in sizes.items():
        if getattr(opts, name) is None:
            setattr(opts, name, default)
    repeat = opts.repeat or (1 if opts.quick else 3)
    output = opts.output or (QUICK_OUTPUT if opts.quick else DOC)
    opts.json = opts.json or (QUICK_RESULTS if opts.quick else RESULTS)
    every = scenarios(opts)
    wanted = {w.strip() for w in opts.only.split(",") if w.strip()}
    unknown = wanted - {s.id for s in every} - {s.store for s in every}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; "
                     f"stores and ids: {', '.join(s.id for s in every)}")
    chosen = [s for s in every if not wanted or s.id in wanted or s.store in wanted]
    if opts.list:
        for s in chosen:
            print(f"{s.id:15} python bench/compare.py {' '.join(s.args)} --repeat {repeat}")
        return 0

    check_markers(output)
    labels = store_labels()
    day = date.today().isoformat()
    argv = " ".join(["python", "bench/run_all.py", *map(shlex.quote, sys.argv[1:])])
    cores, mem = os.cpu_count(), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    order = [row.id for s in every for row in s.rows]
    fresh: dict[str, str] = {}
    misses: list[str] = []
    failed: list[str] = []
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for number, scenario in enumerate(chosen, 1):
        print(f"[{number}/{len(chosen)}] {scenario.id} ...", flush=True)
        result, command, seconds = run_scenario(scenario, repeat, opts.parallel)
        if result is None:
            failed.append(f"{scenario.id}: `{command}` failed (its rows are unchanged)")
            print(f"    FAILED after {seconds:.0f} s: {command}", flush=True)
            continue
        result.update(scenario=scenario.id, command=command, seconds=round(seconds, 1))
        results.append(result)
        for row in scenario.rows:
            line, missed = row_line(scenario, row, result, labels[scenario.store], command, day)
            fresh[row.id] = line
            misses += [f"{row.id}: {m}" for m in missed]
            native = result["natives"][row.native]
            print(f"    {row.id}: native {native['s']:.2f} s, ours {result['copy_s']:.2f} s, "
                  f"ratio {native['ratio']:.2f}× (goal ≥ {row.goal:g}×), verify/copy "
                  f"{result['verify_fraction']:.2f}, peak RSS {result['run_rss_mib']} MiB, "
                  f"load {result['load'][0]:.1f}–{result['load'][1]:.1f}", flush=True)
        print(f"    {seconds:.0f} s", flush=True)
        # written after every group, so an interrupted run keeps what it measured
        opts.json.write_text(json.dumps(results, indent=1) + "\n")
        total = time.monotonic() - started
        write_table(output, fresh, order, (
            f"Last run: {day}, `{argv}`: {len(results)} of {len(chosen)} row groups in "
            f"{total / 60:.1f} min on {cores} cores and {mem / 2**30:.0f} GiB; rows with "
            "an older date were kept from earlier runs. Ratios: native seconds / our copy "
            "seconds (> 1: we are faster), median of the rounds' ratios; "
            f"{MISS} marks a ratio below its goal or a verify slower than its goal "
            f"({VERIFY_GOAL:.2f} of the copy, Redis {VERIFY_GOALS['redis']:.2f})."))
    total = time.monotonic() - started
    print(f"\n{output}: {len(fresh)} row(s) written; every round in {opts.json}; "
          f"{total / 60:.1f} min", flush=True)
    if output.exists():  # rows kept from earlier runs that miss their goal are listed too
        block = output.read_text().split(BEGIN, 1)[-1].split(END, 1)[0]
        for line in block.splitlines():
            found = ROW_ID.match(line)
            if found and found.group(1) not in fresh:
                misses += [f"{found.group(1)} (kept from an earlier run): {m}"
                           for m in misses_in(line)]
    if misses:
        print("\nBelow goal:")
        for miss in misses:
            print(f"  {miss}")
    for failure in failed:
        print(f"FAILED {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
