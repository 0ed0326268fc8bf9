"""The command line: a click group, one thin module per command, one error handler."""

from __future__ import annotations

import signal
import sys
import traceback

import click

from migrator import __version__
from migrator.cli import render
from migrator.cli.backup_cmd import backup_group
from migrator.cli.cutover_cmd import cutover_command
from migrator.cli.deploy_cmd import deploy_command
from migrator.cli.discover_cmd import discover_command
from migrator.cli.drill_cmd import drill_command
from migrator.cli.job_cmd import job_group
from migrator.cli.plan_cmd import plan_command
from migrator.cli.restore_cmd import restore_command
from migrator.cli.run_cmd import run_command
from migrator.cli.schedule_cmd import schedule_group
from migrator.cli.schema_cmd import schema_command
from migrator.cli.sync_cmd import sync_command
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
cli.add_command(sync_command)
cli.add_command(cutover_command)
cli.add_command(schema_command)
cli.add_command(deploy_command)
cli.add_command(job_group)
cli.add_command(discover_command)
cli.add_command(backup_group)
cli.add_command(restore_command)
cli.add_command(drill_command)
cli.add_command(schedule_group)


_TERMINATED: list[int] = []  # the signal that asked us to stop, if it was SIGTERM


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a Kubernetes Job being stopped) stops like Ctrl-C: at a batch boundary."""
    if _TERMINATED:
        return  # already stopping; the grace period's SIGKILL ends us if it must
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: the only place that turns errors into exit codes."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    message: str | None = None
    try:
        code = cli.main(args=argv, prog_name="openim-migrate", standalone_mode=False)
    except click.exceptions.Abort:
        code, message = 130, "interrupted"
    except click.ClickException as exc:
        exc.show()
        code = 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except MigrateError as exc:
        code, message = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        code, message = 130, "interrupted; progress up to the last checkpoint is saved"
    except Exception:  # noqa: BLE001 - a bug: show everything
        traceback.print_exc()
        code = 70
        message = "internal error (a bug); please report it with the traceback above"
    if code == 130 and _TERMINATED:
        code = 143
        if not message or message.startswith("interrupted"):  # keep a command's own account
            message = ("stopped by SIGTERM at a safe point; progress is saved in the journal; "
                       "run the same command again to continue")
    if message:
        render.error(message)
    sys.exit(code if isinstance(code, int) else 0)
