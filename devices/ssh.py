"""Backend ``ssh``: a Linux board reached with paramiko.

* Auth: the profile's key file, the SSH agent, default keys (~/.ssh/id_*), or an
  ``ssh_config`` alias (HostName, User, Port, IdentityFile, UserKnownHostsFile, ProxyCommand
  read with :class:`paramiko.SSHConfig`). No passwords: nothing secret is ever logged.
* Host key: checked against the profile's ``known_hosts`` (default ``~/.ssh/known_hosts``).
  An unknown host is refused unless ``trust_new_host`` (accepted and recorded, fingerprint
  logged); a CHANGED key is always refused.
* Work dir: ``mktemp -d`` under the remote tmp, one per device session; model and runner are
  pushed by SFTP under fixed names, so the local file name never reaches a shell; every
  remote command is built with :func:`shlex.quote`. The work dir is removed in ``close()``,
  always, also after failures (over a fresh connection if the old one dropped).
* Timeouts on connect and on each run. The remote command runs in its own process group
  (sshd makes the session's shell a session leader and ``exec`` keeps its PID), so a timeout
  kills the whole GROUP: a ``runtime.python`` wrapper's children die with it.
* Dropped connections (a channel that closes without an exit status: paramiko's exit -1),
  and transient socket errors raise :class:`TransientDeviceError`, which
  :func:`edgeprune.devices.base.measure` retries with backoff; auth and host-key errors don't.
  The runner left behind by a dropped connection is killed (its process group) and its work
  dir removed, over a fresh connection.
* Stale work dirs (``edgeprune.XXXXXXXXXX`` in the remote tmp, older than
  ``runtime.stale_workdir_s``, owned by the login user: left by a killed earlier run) are
  swept when a session starts.
"""
from __future__ import annotations

import logging
import os
import shlex
import socket
import time
from typing import Optional

from edgeprune.errors import BadInput, DeviceError
from edgeprune.devices.base import Device, RunResult, TransientDeviceError, register
from edgeprune.devices.ssh_client import SshSettings, connect_client, fingerprint, resolve_settings  # noqa: F401

log = logging.getLogger("edgeprune.devices.ssh")

WORKDIR_PREFIX = "edgeprune."
# Leftovers of sessions whose connection dropped and could not be cleaned up then (the board
# was away): {host id: [(runner pid or None, work dir or None)]}; the next session to the
# same board (a retry, usually) kills and removes them first.
_PENDING_CLEANUP: dict[str, list[tuple[Optional[str], Optional[str]]]] = {}


def kill_group_command(pid: str) -> str:
    """Shell line that ends the remote process GROUP led by ``pid`` (TERM, then KILL after 1 s),
    and the process itself should it not lead a group. Never fails."""
    if not str(pid).isdigit():
        raise ValueError(f"not a PID: {pid!r}")
    p = shlex.quote(str(pid))
    return (f"kill -TERM -- -{p} {p} 2>/dev/null; sleep 1; "
            f"kill -KILL -- -{p} {p} 2>/dev/null; true")


def stop_command(workdir: Optional[str], pids=(), wait_s: float = 5.0) -> str:
    """Shell line that ends everything a session started on the board, and WAITS until it is gone.

    What runs: the process groups (and processes) of ``pids`` (the runner PIDs read from the
    command's first output line), of the PID the run wrote to ``WORKDIR/runner.pid`` (for an
    interrupt that came before that line arrived), and every process whose working directory
    is inside the work dir (a wrapper's children that left the group). TERM, up to ``wait_s``
    for them to end, then KILL, up to ``wait_s`` again. Prints ``stopped PIDS left PIDS``
    (``left`` empty when everything ended). Never fails."""
    w = shlex.quote(workdir) if workdir else "''"
    ids = " ".join(str(p) for p in pids if str(p).isdigit())
    n = max(1, int(wait_s * 10))
    wait = (f'i=0; while [ -n "$(live)" ] && [ $i -lt {n} ]; do sleep 0.1 2>/dev/null || sleep 1; '
            'i=$((i+1)); done; ')
    return (
        f'w={w}; pids="{ids}"; '
        'if [ -n "$w" ]; then '
        '[ -r "$w/runner.pid" ] && pids="$pids $(cat "$w/runner.pid" 2>/dev/null)"; '
        'for d in /proc/[0-9]*; do c=$(readlink "$d/cwd" 2>/dev/null) || continue; '
        'case "$c" in "$w"|"$w"/*) pids="$pids ${d#/proc/}";; esac; done; '
        'fi; '
        'live() { l=""; for p in $pids; do case "$p" in *[!0-9]*|"") continue;; esac; '
        'if kill -0 -- "-$p" 2>/dev/null || kill -0 "$p" 2>/dev/null; then l="$l $p"; fi; done; echo $l; }; '
        'pids=$(for p in $pids; do echo "$p"; done | sort -u); '
        # where /proc tells, only processes working in OUR work dir: a stale runner.pid whose PID
        # was reused by another process (even this very shell) is never signalled
        'if [ -n "$w" ] && [ -d /proc/self ]; then sel=""; for p in $pids; do '
        'c=$(readlink "/proc/$p/cwd" 2>/dev/null) || continue; '
        'case "$c" in "$w"|"$w"/*) sel="$sel $p";; esac; done; pids=$sel; fi; '
        'for p in $pids; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done; '
        + wait +
        'for p in $(live); do kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done; '
        + wait +
        'echo "stopped $(echo $pids) left $(live)"; true'
    )


def sweep_command(remote_tmp: Optional[str], older_than_s: float) -> str:
    """Shell line that removes edgeprune's own stale work dirs (by name and age, owned by us)
    in the remote tmp, printing ``swept PATH`` for each. Never fails."""
    base = shlex.quote(remote_tmp.rstrip("/") or "/") if remote_tmp else '"${TMPDIR:-/tmp}"'
    minutes = max(1, int(older_than_s // 60))
    pattern = shlex.quote(WORKDIR_PREFIX + "?" * 10)
    return (f"find {base} -mindepth 1 -maxdepth 1 -type d -name {pattern} -user \"$(id -u)\" "
            f"-mmin +{minutes} -print 2>/dev/null | while IFS= read -r d; do "
            f'rm -rf -- "$d" && echo "swept $d"; done; true')


@register("ssh")
class SshDevice(Device):
    """One SSH session with one remote work dir; close() removes it."""

    def __init__(self, profile):
        super().__init__(profile)
        self.settings = resolve_settings(profile)
        self.client = None
        self.sftp = None
        self.workdir: Optional[str] = None
        self._closed = False
        self._free: Optional[int] = None
        self._orphans: list[str] = []  # PIDs (= process groups) of runners whose connection dropped
        self._lock = None  # the board lock (devices/board_lock.py), held for the session
        self._inflight = False  # a run() that did not return: its runner may still run on the board
        self.client = connect_client(self.settings, name=profile.name)
        try:
            self._clean_pending()
            from edgeprune.devices import board_lock, interrupt

            self._lock = board_lock.acquire(self, aborted=interrupt.aborting)  # waits while another run measures
            self.workdir = self._make_workdir()
        except BaseException:
            self.close()
            raise

    # -- helpers ------------------------------------------------------------
    def _transient(self, what: str, exc: BaseException) -> TransientDeviceError:
        return TransientDeviceError(f"{self.profile.name}: connection to {self.settings.where} dropped while {what}: "
                                    f"{type(exc).__name__}: {exc}", "check the board's network; measure() retries this")

    def _exec(self, command: str, timeout: float, *, kill_on_timeout: bool = False) -> RunResult:
        """Run one shell command line (already quoted); collect output; enforce the timeout."""
        import paramiko

        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            raise self._transient("starting a command", ConnectionError("SSH session not active"))
        try:
            chan = transport.open_session(timeout=self.settings.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._transient("starting a command", exc) from None
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                busy = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    busy = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    busy = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    if kill_on_timeout:
                        self._kill_remote(out)
                    raise DeviceError(
                        f"{self.profile.name}: the run on the board did not finish within {timeout:g} s",
                        "raise the timeout (--timeout or runtime.run_timeout_s), or lower --max-secs / --num-runs",
                    )
                if not transport.is_active():
                    self._note_orphan(out)
                    raise self._transient("running a command", ConnectionError("transport closed"))
                if not busy:
                    time.sleep(0.005)
            code = chan.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._note_orphan(out)
            raise self._transient("running a command", exc) from None
        finally:
            chan.close()
        if code == -1:  # the channel closed without an exit status: the connection dropped
            self._note_orphan(out)
            raise self._transient("running a command", ConnectionError("channel closed without an exit status"))
        return RunResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def _note_orphan(self, out: bytes) -> None:
        first = bytes(out).split(b"\n", 1)[0].strip()
        if first.isdigit() and b"\n" in bytes(out):
            self._orphans.append(first.decode())

    def _kill_remote(self, out: bytes) -> None:
        first = bytes(out).split(b"\n", 1)[0].strip()
        if first.isdigit():
            try:
                self._exec(kill_group_command(first.decode()), timeout=15)
            except DeviceError:
                self._orphans.append(first.decode())  # the connection went too: kill it over a new one

    def _pending_key(self) -> str:
        return f"{self.settings.user}@{self.settings.host_id}"

    def _clean_pending(self) -> None:
        pending = _PENDING_CLEANUP.pop(self._pending_key(), [])
        if not pending:
            return
        parts = [kill_group_command(pid) for pid, _ in pending if pid]
        parts += [f"rm -rf -- {shlex.quote(d)}" for _, d in pending if d]
        log.warning("%s: cleaning up after the earlier dropped connection: killing runner pid %s, removing %s",
                    self.profile.name, ", ".join(p for p, _ in pending if p) or "-",
                    ", ".join(d for _, d in pending if d) or "-")
        self._exec("; ".join(parts) + "; true", timeout=60)

    def _make_workdir(self) -> str:
        tmp = self.profile.runtime.remote_tmp
        template = (shlex.quote(tmp.rstrip("/") + "/" + WORKDIR_PREFIX + "XXXXXXXXXX") if tmp
                    else '"${TMPDIR:-/tmp}/' + WORKDIR_PREFIX + 'XXXXXXXXXX"')
        # One round trip: sweep stale work dirs of killed earlier runs, make the dir, print it,
        # and how much room is left there.
        sweep = sweep_command(tmp, self.profile.runtime.stale_workdir_s)
        res = self._exec(f'{sweep}; d=$(mktemp -d {template}) && echo "$d" && (df -Pk "$d" | tail -n 1)', timeout=60)
        lines = res.stdout.strip().splitlines()
        swept = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("swept ")]
        lines = [ln for ln in lines if not ln.startswith("swept ")]
        path = lines[0].strip() if lines else ""
        if res.exit != 0 or not path.startswith("/") or WORKDIR_PREFIX not in path:
            low = res.stderr.lower()
            if "no space left" in low:
                raise DeviceError(f"{self.profile.name}: the board's disk is full: cannot create a work dir ({res.stderr.strip()})",
                                  "free space in the board's temp dir (`df -h /tmp`), or set runtime.remote_tmp to a roomier folder")
            raise DeviceError(f"{self.profile.name}: cannot create a work dir on the board (mktemp -d {template}): "
                              f"{res.stderr.strip() or res.stdout.strip() or 'exit ' + str(res.exit)}",
                              "check runtime.remote_tmp exists and is writable (default $TMPDIR or /tmp)")
        self._free = None
        if swept:
            log.warning("%s: removed %d stale work dir(s) left by an earlier, killed run: %s",
                        self.profile.name, len(swept), ", ".join(swept))
        try:
            self._free = int(lines[1].split()[3]) * 1024
        except (IndexError, ValueError):
            pass
        log.debug("%s: work dir %s (%s bytes free)", self.profile.name, path, self._free)
        return path

    def _sftp(self):
        import paramiko

        if self.sftp is None:
            try:
                self.sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if "subsystem" in str(exc).lower():
                    raise DeviceError(f"{self.profile.name}: the board's sshd has no SFTP subsystem",
                                      "enable `Subsystem sftp` in the board's /etc/ssh/sshd_config") from None
                raise self._transient("opening SFTP", exc) from None
        return self.sftp

    def _remote(self, remote_name: str) -> str:
        name = os.path.basename(remote_name)
        if not name or name in (".", ".."):
            raise BadInput(f"bad remote file name {remote_name!r}", "use a plain file name")
        return f"{self.workdir}/{name}"

    def _free_bytes(self) -> Optional[int]:
        try:
            res = self._exec(f"df -Pk {shlex.quote(self.workdir)}", timeout=30)
            return int(res.stdout.strip().splitlines()[-1].split()[3]) * 1024
        except (DeviceError, ValueError, IndexError):
            return None

    # -- the protocol ---------------------------------------------------------
    def put(self, local_path, remote_name: str) -> str:
        import paramiko

        dest = self._remote(remote_name)
        size = os.path.getsize(local_path)
        free = self._free
        if free is not None and free < size + 64 * 1024:
            raise DeviceError(f"{self.profile.name}: the board's disk is full: {free} bytes free in {self.workdir}, "
                              f"{size} needed for {remote_name}",
                              "free space in the board's temp dir, or set runtime.remote_tmp to a roomier folder")
        try:
            self._sftp().put(os.fspath(local_path), dest)
        except OSError as exc:
            free = self._free_bytes()
            if getattr(exc, "errno", None) == 28 or "no space" in str(exc).lower() or (free is not None and free < size):
                raise DeviceError(f"{self.profile.name}: the board's disk is full (No space left on device) writing {remote_name}",
                                  "free space in the board's temp dir, or set runtime.remote_tmp to a roomier folder") from None
            if isinstance(exc, (ConnectionError, socket.timeout)) or not self.client.get_transport().is_active():
                raise self._transient(f"copying {remote_name}", exc) from None
            raise DeviceError(f"{self.profile.name}: cannot copy {remote_name} to {dest}: {exc}",
                              "check the remote work dir is writable") from None
        except (paramiko.SSHException, EOFError) as exc:
            raise self._transient(f"copying {remote_name}", exc) from None
        if self._free is not None:
            self._free -= size
        return dest

    def get(self, remote_name: str) -> bytes:
        import paramiko

        try:
            with self._sftp().open(self._remote(remote_name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise DeviceError(f"{self.profile.name}: {remote_name} not found in the work dir", "check the run wrote it") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._transient(f"reading {remote_name}", exc) from None

    def run(self, argv, timeout: float) -> RunResult:
        line = " ".join(shlex.quote(str(a)) for a in argv)
        # `echo $$` then exec: the first stdout line is the PID, so a timeout can kill exactly it;
        # runner.pid holds it too, for an interrupt that comes before that line arrives.
        cmd = (f"cd {shlex.quote(self.workdir)} && echo $$ > runner.pid && echo $$ && "
               f"TF_CPP_MIN_LOG_LEVEL=3 exec {line}")
        self._inflight = True  # until it returns: close() ends the runner (Ctrl-C, SIGTERM, drop, timeout)
        res = self._exec(cmd, timeout=timeout, kill_on_timeout=True)
        self._inflight = False
        first, _, rest = res.stdout.partition("\n")
        if first.strip().isdigit():
            res.stdout = rest
        return res

    def close(self) -> None:
        """End whatever this session still runs on the board and wait until it is gone, then
        remove the work dir, then release the board lock: in that order, on every exit path
        (a second Ctrl-C or SIGTERM meanwhile is held back until it is done)."""
        if self._closed:
            return
        self._closed = True
        from edgeprune.devices.interrupt import shielded

        with shielded(self.profile.name):
            try:
                if self.sftp is not None:
                    self.sftp.close()
            except Exception:
                pass
            try:
                if self.workdir or self._orphans:
                    self._remove_workdir()
            finally:
                if self._lock is not None:
                    self._lock.release()
                if self.client is not None:
                    self.client.close()

    def _log_stopped(self, out: str, stopping: bool) -> None:
        line = next((ln for ln in out.splitlines() if ln.startswith("stopped ")), "")
        if not stopping or not line:
            return
        pids, _, left = line[len("stopped "):].partition(" left")
        if left.strip():
            log.warning("%s: processes of the interrupted run still alive on the board after TERM and KILL: %s",
                        self.profile.name, left.strip())
        elif pids.strip():
            log.info("%s: ended the interrupted board run (pid %s) before releasing the board",
                     self.profile.name, pids.strip())

    def abort(self) -> None:
        """From another thread (Ctrl-C in a parallel run): drop the connection, so the running
        command ends as a dropped connection; close() then cleans up over a fresh one."""
        if self.client is not None:
            self.client.close()

    def _remove_workdir(self) -> None:
        parts = []
        stopping = self._inflight or bool(self._orphans)
        if stopping:  # end the runner (and its children) and wait until they are gone: then rm
            parts.append(stop_command(self.workdir, self._orphans))
        if self._orphans:
            log.warning("%s: killing the board runner left behind by the dropped connection (pid %s)",
                        self.profile.name, ", ".join(self._orphans))
        if self.workdir:
            parts.append(f"rm -rf -- {shlex.quote(self.workdir)}")
        rm = "; ".join(parts)
        try:
            if self._orphans:
                raise DeviceError("the old session is gone")  # leftovers: always over a fresh connection
            res = self._exec(rm, timeout=60)
            self._log_stopped(res.stdout, stopping)
            if res.exit == 0:
                self.workdir = None
                self._inflight = False
                return
            log.warning("%s: could not remove the work dir %s: %s", self.profile.name, self.workdir, res.stderr.strip())
            return
        except DeviceError:
            pass
        # The connection dropped: clean up over a fresh one (best effort, never raises).
        try:
            client = connect_client(self.settings, name=self.profile.name)
            try:
                stdin, stdout, stderr = client.exec_command(rm, timeout=60)
                stdout.channel.recv_exit_status()
                self._log_stopped(stdout.read().decode("utf-8", "replace"), stopping)
                self.workdir = None
                self._orphans = []
                self._inflight = False
            finally:
                client.close()
        except Exception as exc:
            log.warning("%s: could not clean up after a dropped connection (work dir %s, runner pid %s): %s; "
                        "the next connection to the board does it", self.profile.name, self.workdir,
                        ", ".join(self._orphans) or "-", getattr(exc, "message", exc))
            todo = _PENDING_CLEANUP.setdefault(self._pending_key(), [])
            todo += [(pid, None) for pid in self._orphans] + ([(None, self.workdir)] if self.workdir else [])
