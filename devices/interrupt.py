"""Ctrl-C and SIGTERM while a board is in use.

* :func:`sigterm_as_interrupt` (the CLI's entry point): SIGTERM, which CI runners send when a
  job is cancelled, raises :class:`~edgeprune.errors.Terminated` (a ``KeyboardInterrupt``) in
  the main thread, so it unwinds through exactly the cleanup paths Ctrl-C does.
* :class:`shielded`: while a board is being cleaned up (its runner's process group ended and
  waited for, the work dir removed, the board lock and the labgrid place released), a second
  Ctrl-C or a SIGTERM is held back until the cleanup is done, instead of cutting it short and
  leaving a measurement running on a released board. Main thread only; elsewhere a no-op
  (signals are delivered to the main thread anyway).
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

from edgeprune.errors import Terminated

log = logging.getLogger("edgeprune.devices")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


_TERMINATED = {"seen": False}


def terminated() -> bool:
    """A SIGTERM arrived (typer turns the KeyboardInterrupt it raised into exit 130)."""
    return _TERMINATED["seen"]


def _raise_terminated(signum, frame) -> None:
    _TERMINATED["seen"] = True
    raise Terminated()


class sigterm_as_interrupt:
    """Context manager: SIGTERM raises Terminated in the main thread while inside."""

    def __enter__(self):
        self._old = None
        _TERMINATED["seen"] = False
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class shielded:
    """Context manager: defer SIGINT/SIGTERM during a board's cleanup (main thread only).

    A signal that arrived meanwhile is raised on exit (KeyboardInterrupt, or Terminated for
    SIGTERM) unless an exception is already unwinding, which then goes on unchanged."""

    def __init__(self, what: str = "the board"):
        self.what = what
        self.got: list[int] = []
        self._old: Optional[dict] = None

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            _TERMINATED["seen"] = True
        if not self.got:
            log.warning("interrupted again: finishing the cleanup of %s first (ending what runs there, "
                        "removing the work dir, releasing the lock)", self.what)
        self.got.append(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = {s: signal.signal(s, self._note) for s in _SIGNALS}
            except ValueError:  # not the main interpreter's main thread
                self._old = None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._old is not None:
            for s, handler in self._old.items():
                signal.signal(s, handler)
        if self.got and exc_type is None:
            raise Terminated() if self.got[-1] == signal.SIGTERM else KeyboardInterrupt()


# ---------------------------------------------------------------- the farm's abort flag
# Set when a parallel device phase is being interrupted: every board's backend that waits (for a
# board lock, a labgrid place) gives up instead of waiting on (pipeline/search/device_farm.py).
_ABORT = threading.Event()


def aborting() -> bool:
    return _ABORT.is_set()


def abort() -> None:
    _ABORT.set()


def reset() -> None:
    _ABORT.clear()

