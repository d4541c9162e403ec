"""Backend ``local``: this machine, measured exactly as a board is.

The board runner runs in a child process (a fresh interpreter, so its peak RSS is the
model's, not edgeprune's), with the profile's ``runtime.python`` or, for ``current``, the
Python running edgeprune. put/get copy files into a private temp work dir, removed on close.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeprune.errors import DeviceError
from edgeprune.devices.base import Device, RunResult, register


@register("local")
class LocalDevice(Device):
    def __init__(self, profile):
        super().__init__(profile)
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeprune-local-"))

    def python(self) -> str:
        py = self.profile.runtime.python
        return sys.executable if py in ("current", "", None) else os.path.expanduser(py)

    def _path(self, remote_name: str) -> Path:
        name = Path(remote_name).name  # files live flat in the work dir
        return self.workdir / name

    def put(self, local_path, remote_name: str) -> str:
        dest = self._path(remote_name)
        try:
            shutil.copyfile(local_path, dest)
        except OSError as exc:
            if exc.errno == 28:
                raise DeviceError(f"local: disk full copying {local_path} to {self.workdir}", "free disk space in the temp dir (TMPDIR)") from None
            raise
        return str(dest)

    def get(self, remote_name: str) -> bytes:
        return self._path(remote_name).read_bytes()

    def run(self, argv, timeout: float) -> RunResult:
        """Run the board runner in its own process group; on a timeout, Ctrl-C or SIGTERM the
        whole group (a runtime.python wrapper's children too) is ended and waited for before
        the exception goes on, so nothing of the measurement outlives it."""
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            proc = subprocess.Popen([str(a) for a in argv], cwd=self.workdir, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
                                    start_new_session=True)
        except FileNotFoundError:
            raise DeviceError(f"local: Python {argv[0]!r} not found", "set the profile's runtime.python to an existing interpreter") from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            raise DeviceError(f"local: the benchmark did not finish within {timeout:g} s",
                              "raise the timeout (--timeout / runtime.run_timeout_s) or lower --num-runs / --max-secs") from None
        except BaseException:
            from edgeprune.devices.interrupt import shielded

            with shielded("the local measurement"):
                _end_group(proc)
            raise
        return RunResult(proc.returncode, out, err)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _end_group(proc: subprocess.Popen, wait_s: float = 5.0) -> None:
    """TERM the child's process group, wait up to ``wait_s``, then KILL it; reap the child."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; wait for the rest of its group
        t_end = time.monotonic() + wait_s
        while time.monotonic() < t_end:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        pass
