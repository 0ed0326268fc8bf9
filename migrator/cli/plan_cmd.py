"""`openim-migrate plan`: measure both sides and write a plan file (reads only)."""

from __future__ import annotations

from pathlib import Path

import click

from migrator.cli import render
from migrator.cli.options import (
    apply_tunables,
    endpoint_options,
    json_option,
    pairs,
    parallel_option,
)
from migrator.config import Endpoint
from migrator.engine.planning import build_plan
from migrator.errors import PlanError, UsageError
from migrator.plan import ENVIRONMENTS, ON_EXISTING, Options, StorePair, parse_size
from migrator.stores.base import Selection


@click.command("plan")
@click.option("--source", "sources", multiple=True, required=True, metavar="KIND=URL",
              help="A source endpoint, e.g. redis='redis://:${SRC_REDIS_PASSWORD}@host:6379'. "
              "Repeat for each store (redis, mysql, mongo, objects).")
@click.option("--target", "targets", multiple=True, required=True, metavar="KIND=URL",
              help="The target endpoint for the same store kind.")
@click.option("--source-option", multiple=True, metavar="KIND.KEY=VALUE",
              help="Extra endpoint option, e.g. objects.access_key='${AK}' or "
              "mongo.db_map='{openIM_v3: openim_v3}'.")
@click.option("--target-option", multiple=True, metavar="KIND.KEY=VALUE",
              help="Extra option for a target endpoint.")
@click.option("--preset", multiple=True, metavar="KIND=NAME",
              help="A selection preset, e.g. redis=openim (keeps state, skips caches).")
@click.option("--include", multiple=True, metavar="KIND=PATTERN",
              help="Only what matches (glob; keys for redis, db.table for mysql, …).")
@click.option("--exclude", multiple=True, metavar="KIND=PATTERN", help="Leave out what matches.")
@click.option("--on-existing", type=click.Choice(ON_EXISTING), default="fail", show_default=True,
              help="What to do when the target already holds data for a unit.")
@parallel_option
@click.option("--batch-records", type=int, default=None, help="Records per batch.")
@click.option("--unit-records", type=int, default=None,
              help="Split units bigger than this many records (where the store can).")
@click.option("--chunk-records", type=int, default=None,
              help="Records per verification chunk (smaller localises differences better).")
@click.option("--rate-limit", default=None, metavar="SIZE/s", help="Cap throughput, e.g. 50MiB.")
@click.option("--name", default=None, help="Plan name (default: the output file's stem).")
@click.option("--environment", type=click.Choice(ENVIRONMENTS), default=None,
              help="Where the plan's cutover runs: staging (unattended) or production "
              "(cutover needs --approve). Guarded by the plan's integrity hash.")
@click.option("--strict", is_flag=True,
              help="Treat warnings (e.g. a selection that matches nothing) as errors (exit 3).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the plan, e.g. plans/prod.yaml.")
@json_option
def plan_command(sources: tuple[str, ...], targets: tuple[str, ...],
                 source_option: tuple[str, ...], target_option: tuple[str, ...],
                 preset: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...],
                 on_existing: str, parallel: int | None, batch_records: int | None,
                 unit_records: int | None, chunk_records: int | None, rate_limit: str | None,
                 name: str | None, environment: str | None, strict: bool, output: Path,
                 as_json: bool) -> int:
    """Measure source and target and write a plan file.

    Checks that both sides are reachable with the rights needed (read on the source,
    write on the target), lists the units with record and byte counts, and refuses a
    target that already holds data unless --on-existing says what to do. Nothing is
    written anywhere but the plan file.
    """
    source_urls, target_urls = pairs(sources, "--source"), pairs(targets, "--target")
    if set(source_urls) != set(target_urls):
        missing = sorted(set(source_urls) ^ set(target_urls))
        raise UsageError(f"store {missing[0]!r} needs both --source and --target")
    src_opts = endpoint_options(source_option, "--source-option")
    dst_opts = endpoint_options(target_option, "--target-option")
    presets, includes, excludes = (pairs(preset, "--preset"), pairs(include, "--include"),
                                   pairs(exclude, "--exclude"))
    stores: dict[str, StorePair] = {}
    for kind, urls in source_urls.items():
        if len(urls) > 1 or len(target_urls[kind]) > 1:
            raise UsageError(f"store {kind!r}: give one --source and one --target")
        stores[kind] = StorePair(
            kind=kind,
            source=Endpoint.from_dict(kind, {"url": urls[0], **src_opts.get(kind, {})},
                                      f"stores.{kind}.source"),
            target=Endpoint.from_dict(kind, {"url": target_urls[kind][0],
                                             **dst_opts.get(kind, {})}, f"stores.{kind}.target"),
            selection=Selection(include=tuple(includes.get(kind, ())),
                                exclude=tuple(excludes.get(kind, ())),
                                preset=presets[kind][-1] if presets.get(kind) else None))
    options = apply_tunables(Options(on_existing=on_existing), parallel=parallel,
                             rate_limit=rate_limit)
    for field_name, value in (("batch_records", batch_records), ("unit_records", unit_records),
                              ("chunk_records", chunk_records)):
        if value is not None:
            if value < 1:
                raise UsageError(f"--{field_name.replace('_', '-')} must be at least 1")
            setattr(options, field_name, value)
    options.batch_bytes = parse_size(options.batch_bytes, "batch_bytes") or options.batch_bytes
    plan = build_plan(name or output.stem, stores, options)
    plan.environment = environment
    for warning in plan.warnings:
        render.warning(warning)
    if strict and plan.warnings:
        raise PlanError("--strict", f"{len(plan.warnings)} warning(s); no plan was written")
    plan.save(output)
    if as_json:
        render.as_json(plan.to_dict())
    else:
        render.plan_summary(plan, str(output))
    return 0
