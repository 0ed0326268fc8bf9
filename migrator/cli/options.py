"""Option parsing shared by commands: ``KIND=VALUE`` pairs and tunables."""

from __future__ import annotations

import click

from migrator.errors import UsageError
from migrator.plan import Options, parse_size
from migrator.stores.registry import STORES


def pairs(values: tuple[str, ...], option: str) -> dict[str, list[str]]:
    """``("redis=redis://…", …)`` -> ``{"redis": ["redis://…"]}``, kinds checked."""
    out: dict[str, list[str]] = {}
    for value in values:
        kind, sep, rest = value.partition("=")
        if not sep or not rest:
            raise UsageError(f"{option} {value!r}: expected KIND=VALUE, e.g. redis=redis://host:6379")
        if kind not in STORES:
            raise UsageError(f"{option} {value!r}: unknown store kind {kind!r}; "
                             f"one of {', '.join(STORES)}")
        out.setdefault(kind, []).append(rest)
    return out


def apply_tunables(options: Options, *, parallel: int | None = None,
                   rate_limit: str | None = None) -> Options:
    if parallel is not None:
        if parallel < 1:
            raise UsageError("--parallel must be at least 1")
        options.parallel = parallel
    if rate_limit is not None:
        options.rate_limit = parse_size(rate_limit, "--rate-limit")
    return options


parallel_option = click.option(
    "--parallel", "-p", type=int, default=None,
    help="Units copied/verified at once (default: the plan's options.parallel).")
rate_limit_option = click.option(
    "--rate-limit", default=None, metavar="SIZE/s",
    help="Cap the whole run's throughput, e.g. 50MiB (default: the plan's, else none).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON instead of tables.")
