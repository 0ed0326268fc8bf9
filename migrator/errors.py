"""The project's errors, each carrying its exit code and whether a retry may help.

Stores translate driver exceptions into these at their boundary (``raise ... from exc``),
so the engine and the CLI never need to know a driver's exception hierarchy.
"""

from __future__ import annotations

# One table, used by --help, the docs and main(); keep them in step.
EXIT_CODES: dict[int, str] = {
    0: "success: everything copied / everything matches",
    1: "finished, but some units failed (see the report and the journal)",
    2: "usage error (bad command line)",
    3: "plan or configuration error (names the field), or target not empty",
    4: "connection or authentication failure (names the endpoint)",
    5: "verification found differences",
    6: "journal or plan conflict (journal in use or unreadable, or plan edited after `plan`)",
    7: "deploy failure",
    8: "approval refused: a production cutover needs --approve with the plan's cutover "
       "fingerprint (nothing was changed)",
    70: "internal error (a bug: the traceback is printed; please report it)",
    130: "interrupted (Ctrl-C); progress is saved, run again to continue",
    143: "terminated (SIGTERM, e.g. a Kubernetes Job stopped); progress is saved",
}


class MigrateError(Exception):
    """Base of every error the tool reports to a user without a traceback."""

    exit_code = 1
    transient = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(MigrateError):
    exit_code = 2


class PlanError(MigrateError):
    """A plan or configuration value is wrong; the message names the field."""

    exit_code = 3

    def __init__(self, field: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{field}: {problem}", hint=hint)
        self.field = field


class TargetNotEmpty(MigrateError):
    exit_code = 3


class EndpointError(MigrateError):
    """The endpoint cannot be reached or refused our credentials."""

    exit_code = 4

    def __init__(self, endpoint: str, problem: str, *, transient: bool = False,
                 hint: str | None = None) -> None:
        super().__init__(f"{endpoint}: {problem}", hint=hint)
        self.endpoint = endpoint
        self.transient = transient


class TransientError(MigrateError):
    """A failure a retry from the last checkpoint may fix (timeouts, dropped connections)."""

    transient = True


class StoreError(MigrateError):
    """A terminal failure inside a store: retrying the same thing will fail the same way."""


class CapabilityMissing(StoreError):
    """The server lacks a feature (e.g. FerretDB without change streams)."""


class VerificationFailed(MigrateError):
    exit_code = 5


class VerificationIncomplete(MigrateError):
    """Verify could not read everything (the exit code is set from the cause: 4 or 1)."""


class JournalConflict(MigrateError):
    exit_code = 6


class PlanChanged(JournalConflict):
    """The plan's guarded parts were edited after ``plan`` wrote them."""


class DeployError(MigrateError):
    exit_code = 7


class ApprovalRefused(MigrateError):
    """A production cutover was not approved with the plan's cutover fingerprint."""

    exit_code = 8


class UnitsFailed(MigrateError):
    exit_code = 1


class Interrupted(MigrateError):
    exit_code = 130
