"""The exception types the CLI turns into one `error:` line: bad input exits 2, a failing environment exits 1."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEBUG_ENV = "LOSSBENCH_DEBUG"  # set to 1 to get tracebacks instead of one-line errors


class LossbenchError(Exception):
    """A problem with the user's input (file, config value, path) that a traceback would not help with."""

    exit_code = 2


class EnvironmentFailure(LossbenchError):
    """The input is fine but the machine is not: disk full, permission denied, a directory in use by another
    lossbench process. Retrying once that is fixed succeeds, so it exits 1, not 2."""

    exit_code = 1


def require(condition: bool, message: str) -> None:
    """Raise LossbenchError(message) unless condition holds."""
    if not condition:
        raise LossbenchError(message)


def require_int(value: object, key: str, positive: bool = False, note: str = "") -> None:
    """An integer setting must be given as one: 2.7 epochs or seed 0.7 is refused, not truncated."""
    require(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer{note}, not {value!r}")
    require(not positive or value > 0, f"{key} must be > 0{note}, not {value}")


def debug_enabled() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


def os_failure(err: OSError, what: str = "") -> EnvironmentFailure:
    """One line for an OSError: the file it concerns and the system's reason (e.g. 'No space left on device')."""
    name = err.filename if err.filename is not None else what
    reason = err.strerror or str(err)
    return EnvironmentFailure(f"{name}: {reason}" if name else reason)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised where Ctrl-C would be so that it is handled alike:
    the run is marked interrupted and the resume command is printed."""


def raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler of the CLI and of a job's worker process (lossbench.lifeline)."""
    raise Terminated()


def one_line(err: BaseException) -> str:
    """An exception's message with its line breaks folded, for an `error:` line."""
    return " ".join(str(err).split()) or type(err).__name__


def script_exit(step: Callable[[], object], target: Path) -> int:
    """A script's exit code for `step`: 0, or one `error:` line on stderr and the error's code (2 for the input,
    1 for the machine), naming the file an OSError concerns (else `target`, what the script writes)."""
    try:
        step()
    except LossbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: {err.filename or target}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def printed_warnings() -> Iterator[list[str]]:
    """A list to gather "run left out" phrases in, printed as `warning:` lines when the block ends, also when it
    ends on an error: the runs skipped before the error are still news to the user who fixes it."""
    warnings: list[str] = []
    try:
        yield warnings
    finally:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
