"""`openim-migrate discover [DIR]`: a proposed `plan` command from a standalone install."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from migrator.cli import render
from migrator.deploy import endpoints
from migrator.deploy.discover import discover
from migrator.deploy.spec import KINDS, DeploySpec, storage_for


@click.command("discover")
@click.argument("directory", metavar="[DIR]", default=".",
                type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--config-dir", default=None, type=click.Path(file_okay=False, exists=True,
                                                            path_type=Path),
              help="OpenIM v3.8 config directory (default: DIR/config).")
@click.option("-n", "--namespace", default="openim", show_default=True,
              help="Namespace `deploy` uses; fills in the targets.")
@click.option("--endpoints", "endpoint_mode", type=click.Choice(endpoints.MODES),
              default="cluster", show_default=True,
              help="Targets as Service DNS names or as 127.0.0.1 behind port-forwards.")
@click.option("-o", "--output", default="plans/openim.yaml", show_default=True,
              help="The plan path put into the proposed command.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def discover_command(directory: Path, config_dir: Path | None, namespace: str,
                     endpoint_mode: str, output: str, as_json: bool) -> int:
    """Read a standalone install (docker-compose.yml, .env, IMENV_* variables, v3.8 config
    files) and print a `plan` command line with its sources filled in.

    Secrets appear as ${VAR} references: the compose file's own variables where it takes
    them from .env (source .env before running), otherwise a suggested name and where the
    value is. Targets are the services `deploy` creates, with ${k8s:…} references.
    """
    found = discover(directory, config_dir)
    kinds = tuple(k for k in KINDS if k in found.sources)
    targets = endpoints.targets(DeploySpec(namespace=namespace, stores=kinds), endpoint_mode)
    args = ["openim-migrate", "plan"]
    for kind in kinds:
        source = found.sources[kind]
        args += ["--source", f"{kind}={source.url}", "--target", f"{kind}={targets[kind]['url']}"]
        for key, value in source.options.items():
            args += ["--source-option", f"{kind}.{key}={value}"]
        for key, value in targets[kind].items():
            if key != "url":
                args += ["--target-option", f"{kind}.{key}={value}"]
    if "redis" in kinds:
        args += ["--preset", "redis=openim"]
    args += ["-o", output]
    if as_json:
        render.as_json({"sources": {k: vars(s) for k, s in found.sources.items()},
                        "targets": targets, "notes": found.notes, "command": args})
        return 0
    for kind in kinds:
        for note in found.sources[kind].notes:
            render.info(f"# {note}")
    for note in found.notes:
        render.info(f"# {note}")
    deploy = ["openim-migrate", "deploy", "-n", namespace, "--stores", ",".join(kinds)]
    for kind in kinds:
        size = found.sources[kind].data_bytes
        if size is not None:
            deploy += ["--size", f"{kind}={storage_for(size, 2.0)}"]
    if endpoint_mode != "cluster":
        deploy += ["--endpoints", endpoint_mode]
    click.echo("# 1. the in-cluster services (sized from the data directories found):")
    click.echo(" \\\n    ".join(_pairs(deploy)))
    click.echo("# 2. the plan (measures both sides; then `openim-migrate run PLAN`):")
    click.echo(" \\\n    ".join(_pairs(args)))
    return 0


def _pairs(args: list[str]) -> list[str]:
    """Flag and value on one line each, shell-quoted."""
    out, i = [shlex.join(args[:2])], 2
    while i < len(args):
        out.append(f"{args[i]} {shlex.quote(args[i + 1])}")
        i += 2
    return out
