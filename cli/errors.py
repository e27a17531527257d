"""One-line errors with meaningful exit codes, instead of tracebacks for user mistakes."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from cli.render import plain

if TYPE_CHECKING:
    from simulations.interrupts import Interrupts

USAGE = 2  # bad input: a file, key, id or URL the user gave is wrong
FAILED = 1  # the job itself failed (e.g. a round could not produce a model)
STOPPED = 3  # an operator paused or aborted the run (its state is kept)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = USAGE) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(plain(message))}", markup=True)
    raise typer.Exit(code)


def stopped(message: str) -> NoReturn:
    """An operator stopped the run (paused or aborted): say so, exit ``STOPPED``."""
    err_console.print(plain(message), markup=False)
    raise typer.Exit(STOPPED)


def paused_or_aborted(stop: BaseException, status: str, interrupts: Interrupts) -> NoReturn:
    """A run stopped at a round boundary: say how to continue a paused one; exit ``STOPPED``."""
    run = interrupts.run_id
    if status == "paused" and run is not None:
        stopped(f"{stop}: {interrupts.hint.format(run=run)}")
    stopped(str(stop))


def stop_if_interrupted(interrupts: Interrupts) -> None:
    """After preparing a scenario: a first interrupt during it stops the command now, with
    nothing stored; exit ``STOPPED``."""
    if interrupts.signal is not None and interrupts.run_id is None:
        stopped(f"{interrupts.signal}: interrupted while preparing the scenario: nothing stored")
    interrupts.preparing = False


def interrupted(interrupts: Interrupts) -> NoReturn:
    """Stopped at once by a second interrupt: the run is paused at its last committed round;
    say how to continue and exit 128 + the signal's number (130 for Ctrl-C)."""
    run = interrupts.run_id
    if run is None:
        what = "while preparing the scenario" if interrupts.preparing else "before the run started"
        err_console.print(f"interrupted {what}: nothing was stored", markup=False)
    else:
        hint = interrupts.hint.format(run=run)
        message = f"interrupted: run {run} paused at its last committed round; {hint}"
        err_console.print(plain(message), markup=False)
    busy = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if busy:  # e.g. Flower's ServerApp thread, still inside a round: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(interrupts.exit_code)
    raise typer.Exit(interrupts.exit_code)


@contextmanager
def run_stops(interrupts: Interrupts) -> Iterator[None]:
    """How a command that drives a run ends when the run does not complete: a failed round
    exits 1; a pause or abort at a round boundary exits 3 saying how to continue; a second
    interrupt exits 128 + its number, the run paused at its last committed round."""
    from aggregator.round_types import RoundFailed, StopRun

    try:
        yield
    except RoundFailed as exc:
        fail(str(exc), code=FAILED)
    except StopRun as stop:
        paused_or_aborted(stop, stop.status, interrupts)
    except KeyboardInterrupt:
        interrupted(interrupts)
