"""The device phase's scheduler: candidates in rate order over one board or several at once.

One board: candidates are measured one after the other, largest rate first, exactly the
search of :mod:`edgeprune.pipeline.search.device_phase`.

Several boards (``--device a --device b``, or a labgrid profile whose tags match several
places): the next candidates in rate order are handed out, one per free board, so the top-k
host-passing candidates (k boards) are measured at once; a board that finishes takes the next
candidate in rate order, but only among the k candidates from the first undecided one (no
measurement far ahead of the decision, which would usually be wasted; with ``--measure-all``
nothing is wasted, so any next candidate). Results are JUDGED strictly in rate order, exactly as one board would
judge them: a result is decided only once every larger rate is decided; the first candidate
that meets every budget is the answer and a clear miss stops the search, whatever finished
first. A measurement still running when the search stops is allowed to finish (a board is not
interrupted mid-run) and is kept (cached, in the report) without changing the answer. Cached
candidates never occupy a board. Each measurement is the same ``measure`` of one board as in
the serial search (one SSH session, board lock, labgrid place held for its duration).

Ctrl-C: every wait for a busy board gives up, the running sessions' connections are dropped
(their board runners are killed and work dirs removed over fresh connections, their locks and
places released), then KeyboardInterrupt goes on.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Optional

from edgeprune.errors import DeviceError

PARALLEL_STRATEGY = (
    " Boards measured in parallel ({n}: {names}): the next {n} host-passing candidates in rate order are "
    "measured at once, one per board, and a board that finishes takes the next (without --measure-all, only "
    "among the {n} candidates from the first undecided one); results are judged strictly "
    "in rate order as with one board (the first that meets every budget is the answer, a clear miss stops), "
    "so the answer is the one a single board would give; a measurement already running when the answer was "
    "found is kept but changes nothing."
)

_active: set = set()  # open devices of the parallel workers (for abort on Ctrl-C)
_active_lock = threading.Lock()


def measure_on(board, tflite_path, config):
    """``devices.base.measure`` for one board of a farm, abortable from the main thread."""
    from edgeprune.devices import interrupt
    from edgeprune.devices.base import _check_model, open_device, with_retries

    path = _check_model(tflite_path)

    def once():
        if interrupt.aborting():
            raise DeviceError(f"{board.name}: interrupted", "run again")
        t0 = time.perf_counter()
        with open_device(board) as dev:
            with _active_lock:
                _active.add(dev)
            try:
                if interrupt.aborting():
                    raise DeviceError(f"{board.name}: interrupted", "run again")
                m = dev.bench(path, config)
            finally:
                with _active_lock:
                    _active.discard(dev)
        m.wall_s = time.perf_counter() - t0
        return m

    return with_retries(board, once)


def _abort_all() -> None:
    from edgeprune.devices import interrupt

    interrupt.abort()
    with _active_lock:
        devs = list(_active)
    for dev in devs:
        try:
            dev.abort()
        except Exception:
            pass


def run_in_rate_order(order: list, boards: list, *, lookup: Callable, measure: Callable, store: Callable,
                      decide: Callable, keep: Callable, emit: Callable, look_ahead: Optional[int] = None) -> None:
    """Measure ``order`` (largest rate first) on ``boards``.

    lookup(r) -> cached entry or None; measure(board, r) -> Measurement (in a worker thread
    when there are several boards); store(board, r, m) -> entry (main thread: cache + files);
    decide(r, entry, cached, seconds) -> False to stop; keep(r, entry, seconds): a measurement
    that finished after the search stopped; look_ahead: how many candidates from the first
    undecided one may be measured (default: one per board; ``measure_all`` never stops early,
    so there it is every candidate)."""
    if len(boards) == 1:
        for r in order:
            t0 = time.perf_counter()
            entry = lookup(r)
            cached = entry is not None
            if entry is None:
                emit("device_start", record=r)
                entry = store(boards[0], r, measure(boards[0], r))
            if not decide(r, entry, cached, time.perf_counter() - t0):
                return
        return

    from edgeprune.devices import interrupt

    interrupt.reset()
    results: dict[int, tuple] = {}
    pending = deque(enumerate(order))  # (position in rate order, record)
    free = deque(boards)
    running: dict = {}
    pos = 0
    stopped = False
    pool = ThreadPoolExecutor(max_workers=len(boards), thread_name_prefix="edgeprune-board")
    error: Optional[BaseException] = None
    try:
        while True:
            while not stopped and pos < len(order) and id(order[pos]) in results:
                r = order[pos]
                entry, cached, spent = results.pop(id(r))
                pos += 1
                if not decide(r, entry, cached, spent):
                    stopped = True
            if stopped or pos == len(order):
                break
            while pending:
                i, r = pending[0]
                entry = lookup(r)
                if entry is not None:  # cached: needs no board
                    pending.popleft()
                    results[id(r)] = (entry, True, 0.0)
                    continue
                if not free or i >= pos + (look_ahead or len(boards)):  # look ahead at most k candidates past the decision
                    break
                pending.popleft()
                b = free.popleft()
                emit("device_start", record=r, board=b.name)
                running[pool.submit(measure, b, r)] = (b, r, time.perf_counter())
            if id(order[pos]) in results:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                b, r, t0 = running.pop(f)
                free.append(b)
                results[id(r)] = (store(b, r, f.result()), False, time.perf_counter() - t0)
    except BaseException as exc:
        error = exc
        _abort_all()
        raise
    finally:
        from edgeprune.devices.interrupt import shielded

        try:
            if error is not None:  # aborting: every board ends its runner and is released, uninterrupted
                with shielded("the boards"):
                    _finish(running, results, order, error, store, keep, pool)
            else:
                _finish(running, results, order, error, store, keep, pool)
        except KeyboardInterrupt:  # Ctrl-C while waiting for boards still measuring after the answer
            _abort_all()
            with shielded("the boards"):
                _finish(running, results, order, True, store, keep, pool)
            raise
        finally:
            interrupt.reset()


def _finish(running: dict, results: dict, order: list, error, store: Callable, keep: Callable, pool) -> None:
    """After the search: wait for the measurements still running (a board is not interrupted
    mid-run unless aborting; an aborted one ends its runner and releases its board first), keep
    the finished ones the decision did not need (not when aborting), and shut the pool down."""
    while running:
        f = next(iter(running))
        b, r, t0 = running[f]
        try:
            m = f.result()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and not f.done():
                raise  # Ctrl-C in the main thread while waiting: the caller aborts, then waits again
            running.pop(f)
            continue
        running.pop(f)
        if error is None:
            keep(r, store(b, r, m), time.perf_counter() - t0)
    for key, (entry, cached, spent) in list(results.items()):
        if error is None and not cached:
            r = next(x for x in order if id(x) == key)
            keep(r, entry, spent)
    results.clear()
    pool.shutdown(wait=True)
