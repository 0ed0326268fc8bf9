"""`openim-migrate schema`: the plan file's JSON Schema, for editors and CI checks."""

from __future__ import annotations

import click

from migrator.cli import render
from migrator.plan_schema import plan_schema


@click.command("schema")
def schema_command() -> int:
    """Print the JSON Schema that plan files are checked against on load.

    Point an editor at it (e.g. a `# yaml-language-server: $schema=plan.schema.json`
    line) to get completion and errors while editing a plan. Unit specs and endpoint
    options are typed per store. docs/plan.schema.json is a copy of this output.
    """
    render.as_json(plan_schema())
    return 0
