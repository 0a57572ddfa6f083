"""The one error guard of every command (`recorder ...` and `recorder candles ...`): bad input is one
clear line on stderr and a non-zero exit, never a traceback.

| what the command body raised                         | stderr                  | exit |
|------------------------------------------------------|-------------------------|------|
| `RecorderError` (and the caller's `bad_input` types) | `error: <message>`      | 2    |
| `typer.Exit` / `typer.Abort` (e.g. from `fail`)      | as raised               | its  |
| Ctrl-C before the command's own signal handlers      | nothing                 | 130 (`interrupted`) |
| `BrokenPipeError` (the reader of stdout went away)   | nothing                 | 141, as if killed by SIGPIPE |
| anything else (a bug)                                | `error: <Type>: <msg>`  | 1    |

`RECORDER_DEBUG=1` in the environment re-raises instead, for the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

from recorder import output
from recorder.errors import RecorderError

DEBUG_ENV = "RECORDER_DEBUG"
DEBUG_HELP = f"Errors are one line on stderr; {DEBUG_ENV}=1 in the environment shows the full traceback."
T = TypeVar("T")

err = output.console(stderr=True)


def examples(*commands: str) -> str:
    """A command's --help epilog: its example command lines (typer keeps blank-line paragraphs)."""
    return "Examples:\n\n" + "\n\n".join(f"  {c}" for c in commands)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one `error:` line on stderr (a JSON line with `--log-format json`) and
    exit status `code`."""
    from recorder.app.console import error_line

    error_line(message, err)
    raise typer.Exit(code)


def run_guarded(
    fn: Callable[[], T],
    bad_input: tuple[type[Exception], ...] = (),
    interrupted: int = 130,
) -> T:
    """Run a command body and return its value; errors end the command as in the module's table.

    `bad_input`: more exception types that mean bad input (the candles library raises ValueError for
    an unknown interval or a bad count). `interrupted`: the exit status of a Ctrl-C that reaches here
    (0 for a command that Ctrl-C is the normal way to stop)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return fn()
    except (typer.Exit, typer.Abort):
        raise
    except (RecorderError, *bad_input) as exc:
        if debugging():
            raise
        fail(str(exc))
    except KeyboardInterrupt:
        if debugging():
            raise
        raise typer.Exit(interrupted) from None
    except BrokenPipeError:
        _stdout_to_devnull()  # else the interpreter's last flush of stdout fails once more
        raise typer.Exit(141) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence for the user's terminal
        if debugging():
            raise
        fail(f"{type(exc).__name__}: {exc}", code=1)


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's capture): nothing to silence
        pass
