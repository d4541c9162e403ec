"""A lock file on an SSH board, so two runs never measure on one board at once.

The lock is ``edgeprune-board.lock`` in the board's temp dir (``runtime.remote_tmp``, else
``$TMPDIR`` or ``/tmp``), created atomically with the shell's noclobber (``O_EXCL``). It holds
one line naming its owner (``user@host pid N token T``); its age is the file's mtime on the
board's own clock. An :class:`~edgeprune.devices.ssh.SshDevice` takes it when a session starts
and removes it in ``close()`` (only if it still holds OUR token).

* A busy board: the session waits (a visible message naming the owner and the lock's age,
  once), polling, up to ``connection.lock_wait_s``; then :class:`DeviceError` (exit 4).
* A lock whose owner is a process of THIS machine that is gone (or this process's own lock
  of a session whose connection dropped) is removed at once.
* A stale lock (older than ``connection.lock_stale_s``, default ``2 x run_timeout_s + 300``:
  longer than any measurement can hold it) was left by a killed run: it is broken, with a
  warning naming the old owner. Breaking happens under a ``mkdir`` guard and re-checks the
  age there, so two waiting runs cannot both break it and both measure.
"""
from __future__ import annotations

import getpass
import logging
import os
import shlex
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from edgeprune.errors import DeviceError

log = logging.getLogger("edgeprune.devices.lock")

LOCK_NAME = "edgeprune-board.lock"
_HELD: set[str] = set()  # tokens of the locks this process holds now
GUARD_STALE_S = 60  # a break guard older than this was left by a killed breaker


def lock_path_expr(remote_tmp: Optional[str]) -> str:
    """Shell expression of the lock file's path (quoted)."""
    if remote_tmp:
        return shlex.quote(remote_tmp.rstrip("/") + "/" + LOCK_NAME)
    return '"${TMPDIR:-/tmp}/' + LOCK_NAME + '"'


def owner_line(token: str) -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} token {token}"


def try_lock_command(remote_tmp: Optional[str], owner: str, stale_s: float) -> str:
    """One round trip: take the lock, or break it if stale, or report who holds it.

    Prints ``acquired``, ``broke AGE OLD-OWNER`` or ``busy AGE OWNER``; never fails."""
    return "\n".join([
        f"L={lock_path_expr(remote_tmp)}; O={shlex.quote(owner)}; S={int(stale_s)}; G=\"$L.break\"",
        "now=$(date +%s)",
        "if (set -C; printf '%s\\n' \"$O\" > \"$L\") 2>/dev/null; then echo acquired; exit 0; fi",
        "m=$(stat -c %Y \"$L\" 2>/dev/null) || m=$now",
        "age=$((now - m))",
        "if [ \"$age\" -gt \"$S\" ]; then",
        f"  gm=$(stat -c %Y \"$G\" 2>/dev/null) && [ $((now - gm)) -gt {GUARD_STALE_S} ] && rmdir \"$G\" 2>/dev/null",
        "  if mkdir \"$G\" 2>/dev/null; then",
        "    m2=$(stat -c %Y \"$L\" 2>/dev/null) || m2=0",
        "    if [ $((now - m2)) -gt \"$S\" ]; then",
        "      old=$(head -c 300 \"$L\" 2>/dev/null | head -n 1); rm -f \"$L\"",
        "      if (set -C; printf '%s\\n' \"$O\" > \"$L\") 2>/dev/null; then rmdir \"$G\"; echo \"broke $age $old\"; exit 0; fi",
        "    fi",
        "    rmdir \"$G\"",
        "  fi",
        "fi",
        "echo \"busy $age $(head -c 300 \"$L\" 2>/dev/null | head -n 1)\"",
    ])


def unlock_command(remote_tmp: Optional[str], token: str) -> str:
    """Remove the lock only if it is still ours (holds our token). Never fails."""
    return (f"L={lock_path_expr(remote_tmp)}; grep -qF -- {shlex.quote('token ' + token)} \"$L\" 2>/dev/null "
            f"&& rm -f \"$L\"; true")


def _dead_owner(holder: str) -> bool:
    """The lock's owner is a process on THIS machine that is gone (killed), or a lock this very
    process left behind (a session whose connection dropped and could not remove it)."""
    parts = holder.split()
    if len(parts) < 5 or parts[1] != "pid" or parts[3] != "token" or not parts[2].isdigit():
        return False
    host = parts[0].rpartition("@")[2]
    if host != socket.gethostname():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return parts[4] not in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def stale_after(profile) -> float:
    conn = profile.connection
    if conn is not None and conn.lock_stale_s:
        return float(conn.lock_stale_s)
    return 2 * float(profile.runtime.run_timeout_s) + 300.0


@dataclass
class BoardLock:
    """A held lock; ``release()`` is safe to call twice and never raises."""

    name: str
    remote_tmp: Optional[str]
    token: str
    exec_fn: Callable  # (command, timeout) -> RunResult over the session's connection
    fresh_exec: Callable  # (command) -> None over a NEW connection (the old one dropped)
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        _HELD.discard(self.token)
        cmd = unlock_command(self.remote_tmp, self.token)
        try:
            self.exec_fn(cmd, 30)
            return
        except DeviceError:
            pass
        try:
            self.fresh_exec(cmd)
        except Exception as exc:  # the board is gone: the lock goes stale and the next run breaks it
            log.warning("%s: could not remove the board lock (%s); it is broken as stale after a while",
                        self.name, getattr(exc, "message", exc))


def acquire(dev, *, aborted: Callable[[], bool] = lambda: False) -> Optional[BoardLock]:
    """Take the board lock for an open SshDevice ``dev`` (waiting while another run holds it)."""
    profile = dev.profile
    conn = profile.connection
    if conn is not None and not conn.lock:
        return None
    tmp = profile.runtime.remote_tmp
    token = uuid.uuid4().hex[:16]
    owner = owner_line(token)
    stale = stale_after(profile)
    wait = float(conn.lock_wait_s) if conn is not None else 600.0
    cmd = try_lock_command(tmp, owner, stale)
    t0 = time.monotonic()
    told = False
    delay = 0.25
    while True:
        res = dev._exec(cmd, timeout=60)
        line = (res.stdout.strip().splitlines() or [""])[-1]
        word, _, rest = line.partition(" ")
        if word == "acquired":
            break
        if word == "broke":
            age, _, old = rest.partition(" ")
            log.warning("%s: broke a stale board lock (%s s old, older than %g s) held by %s: a killed earlier run",
                        profile.name, age, stale, old or "(unknown)")
            break
        if word != "busy":
            raise DeviceError(f"{profile.name}: cannot take the board lock in the board's temp dir: "
                              f"{res.stderr.strip() or res.stdout.strip() or 'exit ' + str(res.exit)}",
                              "check runtime.remote_tmp exists and is writable, or set connection.lock: false")
        age, _, holder = rest.partition(" ")
        if _dead_owner(holder):
            log.warning("%s: removed a board lock whose owner is gone (%s, %s s old)", profile.name, holder, age)
            dev._exec(unlock_command(tmp, holder.split()[4]), timeout=30)
            continue
        waited = time.monotonic() - t0
        if not told:
            log.warning("%s: the board is busy: another run measures on it (lock held by %s for %s s); "
                        "waiting up to %g s", profile.name, holder or "(unknown)", age, wait)
            told = True
        if waited >= wait or aborted():
            raise DeviceError(
                f"{profile.name}: the board is still locked by {holder or '(unknown)'} ({age} s old) after waiting "
                f"{waited:.0f} s",
                f"wait for that run to finish, or raise connection.lock_wait_s; if no run is using the board, "
                f"remove the lock: ssh {dev.settings.user}@{dev.settings.hostname} -p {dev.settings.port} "
                f"rm {lock_path_expr(tmp)}",
            )
        time.sleep(min(delay, max(0.05, wait - waited)))
        delay = min(delay * 2, 2.0)
    _HELD.add(token)
    if told:
        log.warning("%s: board lock taken after waiting %.1f s", profile.name, time.monotonic() - t0)

    def fresh(command: str) -> None:
        from edgeprune.devices.ssh_client import connect_client

        client = connect_client(dev.settings, name=profile.name)
        try:
            _, stdout, _ = client.exec_command(command, timeout=30)
            stdout.channel.recv_exit_status()
        finally:
            client.close()

    return BoardLock(profile.name, tmp, token, dev._exec, fresh)
