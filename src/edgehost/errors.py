"""Exit codes and the one error type the CLI turns into a one-line message."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Every exit code edgehost uses; documented in README.md."""

    OK = 0
    CHECK_FAILED = 1  # verify, drill, lint, status or doctor found a problem
    BAD_INPUT = 2  # bad arguments, settings or config files
    ENVIRONMENT = 3  # something outside the kit: binary missing, bucket unreachable, port taken
    SERVICE_FAILED = 4  # the supervisor gave up on a crash-looping litestream
    FINAL_SYNC_FAILED = 5  # at stop, a database's newest writes did not reach the replica
    LEASE_HELD = 6  # another machine holds the writer lease (or took it): this one does not write


class EdgehostError(Exception):
    """An error with a one-line message and the exit code it deserves."""

    status: ExitStatus = ExitStatus.BAD_INPUT

    def __init__(self, message: str, status: ExitStatus | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BadInput(EdgehostError):
    status = ExitStatus.BAD_INPUT


class EnvironmentProblem(EdgehostError):
    status = ExitStatus.ENVIRONMENT
