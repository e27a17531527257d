"""Interrupts of a stored run: pause at the next round boundary, or stop at once on a second.

A user's Ctrl-C (SIGINT), a service manager's SIGTERM or a closed terminal's SIGHUP should never
cost a run. While ``Interrupts`` is entered (in the main thread), the first of these signals
only records itself: the run's ``StoreHooks`` pause it before the next round (the round in
progress is finished and committed first), and the command says how to continue. A second
signal raises ``KeyboardInterrupt`` at once; the run is then recorded ``paused`` and resumes
from its last committed round (later signals are ignored, so that record and the cleanup of
child processes are not cut short). A second signal that lands inside a finaliser (a weakref
callback or ``__del__``, where Python prints and drops exceptions) is delivered again a
millisecond later (by a one-shot SIGALRM timer, so outside the finaliser), so it is neither lost
nor shown as a traceback. Inside ``deferred()`` (recording a round or how the run ended) a
second signal waits for the block to finish, so the store never keeps a half-written ending.
Either way ``fedcore runs resume`` (or ``fedcore server
--resume``) ends with the model of an uninterrupted run, bit for bit; only ``fedcore runs
abort`` makes a run final.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """Context manager: SIGINT/SIGTERM/SIGHUP ask the run to pause; a second one stops it now.

    ``signal`` names the first signal received (None before); ``signum`` is its number, or
    the second's once that stopped the command.
    ``run_id`` is set by ``simulations.lifecycle`` once the run is in the store, so the
    notice can name it. ``hint`` says how to continue a paused run (``{run}``: its id).
    While ``preparing`` (a command checks and prepares its scenario before any run is
    stored), the first signal asks the command to stop once that is done, storing nothing.
    """

    def __init__(self, hint: str = "`fedcore runs resume {run}` continues it") -> None:
        self.hint = hint
        self.signal: str | None = None
        self.signum: int | None = None
        self.run_id: int | None = None
        self.preparing = False
        self.count = 0  # signals received
        self._previous: dict[int, Any] = {}
        self._previous_hook: Any = None
        self._stop: KeyboardInterrupt | None = None  # the second signal's exception, once raised
        self._deferring = False  # inside deferred(): a second signal waits for the block's end
        self._deferred = False  # it came, and waits

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        if signal.SIGALRM in self._previous:  # a redelivery timer was armed: disarm it
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous.pop(signal.SIGALRM))
        for sig, handler in self._previous.items():
            # Interrupted: the run is paused and the command is on its way out (saying how to
            # continue); a further signal must not cut that short with a bare traceback.
            signal.signal(sig, self._late if self.count else handler)
        self._previous.clear()
        if self._previous_hook is not None:
            sys.unraisablehook, self._previous_hook = self._previous_hook, None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block a second signal must not cut in half (a store write): it stops the command
        once the block is done."""
        outer, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = outer
        if self._deferred and not outer:
            self._deferred = False
            name = signal.Signals(self.signum or signal.SIGINT).name
            self._stop = KeyboardInterrupt(f"{name} (second interrupt)")
            raise self._stop

    def _unraisable(self, unraisable: Any) -> None:
        """Python dropped an exception; if it is our stop, deliver the signal again."""
        if self._stop is not None and unraisable.exc_value is self._stop:
            self._stop = None
            self.count = 1  # the redelivered signal is the second again
            # Not interrupt_main(): its handler would run before this hook returns, and be
            # dropped again. A timer fires once Python is back outside the finaliser.
            if signal.SIGALRM not in self._previous:
                self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._redeliver)
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        self._previous_hook(unraisable)

    def _redeliver(self, signum: int, frame: FrameType | None) -> None:
        self._handle(self.signum or signal.SIGINT, frame)

    def _late(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    @property
    def exit_code(self) -> int:
        """The shell's code for a command stopped by a signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 2:
            self.signum = signum  # the one that stopped the command
            if self._deferring:
                self._deferred = True
                return
            self._stop = KeyboardInterrupt(f"{signal.Signals(signum).name} (second interrupt)")
            raise self._stop
        if self.count > 2:
            return
        self.signal, self.signum = signal.Signals(signum).name, signum
        if self.preparing and self.run_id is None:
            notice = (
                f"\n{self.signal}: stopping once the scenario is prepared; nothing is stored yet "
                "(interrupt again to stop at once)\n"
            )
            os.write(2, notice.encode())
            return
        run = "the run" if self.run_id is None else f"run {self.run_id}"
        hint = "" if self.run_id is None else "; then " + self.hint.format(run=self.run_id)
        notice = (
            f"\n{self.signal}: pausing {run} once the round in progress is committed{hint} "
            "(interrupt again to stop at once: it resumes from its last committed round)\n"
        )
        os.write(2, notice.encode())  # not print(): the main thread may be inside print()
