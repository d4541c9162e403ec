"""Quiet TensorFlow: everything the converter, the runtime and their C++ loggers print goes to a
temporary file instead of the user's screen (kept for error messages)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator


class _Captured:
    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[_Captured]:
    """Send everything written to fds 1/2 (C++ included), sys.stdout/err, Python warnings and
    the tensorflow/absl loggers to a temporary file; its text is in ``box.text`` afterwards."""
    box = _Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    tmp = tempfile.TemporaryFile(mode="w+b")
    saved: list[tuple[int, int]] = []
    for fd in (1, 2):
        try:
            saved.append((fd, os.dup(fd)))
            os.dup2(tmp.fileno(), fd)
        except OSError:  # no such fd (embedded interpreters): skip it
            pass
    text_stream = io.TextIOWrapper(os.fdopen(os.dup(tmp.fileno()), "wb"), encoding="utf-8", errors="replace", line_buffering=True)
    loggers = [logging.getLogger(n) for n in ("tensorflow", "absl", "h5py", "keras")]
    old_levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(text_stream), contextlib.redirect_stderr(text_stream), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield box
    finally:
        for lg, level in zip(loggers, old_levels):
            lg.setLevel(level)
        _unbind(text_stream)
        with contextlib.suppress(Exception):
            text_stream.flush()
            text_stream.close()
        for fd, dup in saved:
            os.dup2(dup, fd)
            os.close(dup)
        tmp.seek(0)
        box.text = tmp.read().decode("utf-8", errors="replace")
        tmp.close()


def _unbind(stream) -> None:
    """A logging handler made while the output was captured (tensorflow's logger makes its
    ``StreamHandler(sys.stderr)`` on first use) would keep writing to the capture's stream once
    it is closed ("--- Logging error ---" and a traceback on the user's terminal): point every
    such handler back at the real stderr."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream:
                h.setStream(sys.stderr)
