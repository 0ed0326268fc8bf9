"""The command line: a click group, one thin module per command, one error handler."""

from __future__ import annotations

import sys
import traceback

import click

from migrator import __version__
from migrator.cli import render
from migrator.cli.plan_cmd import plan_command
from migrator.cli.run_cmd import run_command
from migrator.cli.verify_cmd import verify_command
from migrator.errors import EXIT_CODES, MigrateError

EPILOG = "Exit codes:\n\n\b\n" + "\n".join(f"  {code:>3}  {text}" for code, text in
                                           EXIT_CODES.items())


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(__version__, prog_name="openim-migrate")
def cli() -> None:
    """Move an OpenIM installation's data (Redis, MySQL, MongoDB, object storage) into
    Kubernetes services, and prove with checksums that nothing was lost.

    The usual flow: `plan` measures both sides and writes a plan file; `run PLAN` copies
    (resumable: run it again after any failure or Ctrl-C); `verify PLAN` compares checksums
    and exits non-zero on any difference.

    Secrets never go into a plan: write URLs as scheme://user:${VAR}@host:port and export
    VAR before running.
    """


cli.add_command(plan_command)
cli.add_command(run_command)
cli.add_command(verify_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the only place that turns errors into exit codes."""
    try:
        code = cli.main(args=argv, prog_name="openim-migrate", standalone_mode=False)
    except click.exceptions.Abort:
        render.error("interrupted")
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except MigrateError as exc:
        render.error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        render.error("interrupted; progress up to the last checkpoint is saved")
        code = 130
    except Exception:  # noqa: BLE001 - a bug: show everything
        traceback.print_exc()
        render.error("internal error (a bug); please report it with the traceback above")
        code = 70
    sys.exit(code if isinstance(code, int) else 0)
