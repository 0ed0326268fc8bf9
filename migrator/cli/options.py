"""Option parsing shared by commands: ``KIND=VALUE`` pairs and tunables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import yaml

from migrator.config import Endpoint
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


def endpoint_options(values: tuple[str, ...], flag: str) -> dict[str, dict[str, object]]:
    """``("objects.access_key=${AK}", …)`` -> ``{"objects": {"access_key": "${AK}"}}``."""
    out: dict[str, dict[str, object]] = {}
    for kind, items in pairs(tuple(v.replace(".", "=", 1) for v in values), flag).items():
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep:
                raise UsageError(f"{flag} {kind}.{item!r}: expected KIND.KEY=VALUE")
            out.setdefault(kind, {})[key] = yaml.safe_load(raw) if raw else ""
    return out


def endpoints(urls: tuple[str, ...], extra: tuple[str, ...], flag: str, role: str
              ) -> dict[str, Endpoint]:
    """``--target KIND=URL`` (one per kind) with ``--target-option``s, checked like a
    plan's endpoints (literal secrets refused, the field named)."""
    by_kind = pairs(urls, flag)
    options = endpoint_options(extra, f"{flag}-option")
    unknown = sorted(set(options) - set(by_kind))
    if unknown:
        raise UsageError(f"{flag}-option {unknown[0]}.…: no {flag} {unknown[0]}=URL given")
    out = {}
    for kind, given in by_kind.items():
        if len(given) > 1:
            raise UsageError(f"{flag} {kind}: given {len(given)} times; give one URL per store")
        out[kind] = Endpoint.from_dict(kind, {"url": given[0], **options.get(kind, {})},
                                       f"stores.{kind}.{role}")
    return out


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bars on stderr (default: when stderr is a terminal)."
                        )(func)
