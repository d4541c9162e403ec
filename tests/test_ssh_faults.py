"""SSH faults against a REAL loopback OpenSSH sshd (issue 9): every fault ends in a retry that
succeeds or a clear error, and leaves no remote process and no work dir behind.

1. the connection drops mid-run with sshd up (the session's sshd processes are killed);
2. sshd is killed mid-run (listener and sessions) and comes back a moment later;
3. a ``runtime.python`` wrapper whose child hangs: the timeout kills the whole process group;
4. a work dir left by a killed earlier run is swept on the next connection (only edgeprune's
   own, by name and age).

The remote processes are recognised by a unique token in their command line (the test and
the "board" share this machine's /proc).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import sshd as sshd_helper
from edgeprune.cli import run_cli

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from sshd_helper.serve(tmp_path_factory, "sshd-faults")


@pytest.fixture(autouse=True)
def _empty_remote_tmp(server):
    import shutil

    for p in server.remote_tmp.iterdir():
        shutil.rmtree(p, ignore_errors=True)
    yield


# --------------------------------------------------------------------------- helpers
def _procs() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, comm, cmdline) of every process on this machine."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            comm = stat[stat.index("(") + 1: stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, ValueError, IndexError):
            continue
        found[int(d.name)] = (ppid, comm, cmd)
    return found


def _with_token(token: str) -> list[int]:
    return [pid for pid, (_, _, cmd) in _procs().items() if token in cmd and pid != os.getpid()]


def _wait_gone(token: str, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = _with_token(token)
        if not left:
            return []
        time.sleep(0.2)
    return _with_token(token)


def _session_sshds(listener_pid: int) -> list[int]:
    """The per-connection sshd processes below the listener (not the listener itself)."""
    procs = _procs()
    out = []
    for pid, (ppid, comm, _) in procs.items():
        p, chain = ppid, 0
        while p and p != listener_pid and chain < 10:
            p = procs.get(p, (0,))[0]
            chain += 1
        if p == listener_pid and comm.startswith("sshd"):
            out.append(pid)
    return out


def _wait_for(path: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _wrapper(tmp: Path, body: str) -> Path:
    w = tmp / "board-python.sh"
    w.write_text("#!/bin/sh\n" + body)
    w.chmod(0o755)
    return w


def _slow_first_attempt(tmp: Path, token: str) -> tuple[Path, Path]:
    """runtime.python wrapper: the FIRST run hangs in a child (the fault hits it there), later
    runs exec the real Python. Returns (wrapper, marker written when the first run started)."""
    mark = tmp / "first-run-started"
    py = sys.executable
    w = _wrapper(tmp, f'if [ ! -e "{mark}" ]; then touch "{mark}"; '
                      f'"{py}" -c "import time; time.sleep(120)" {token}; fi\nexec "{py}" "$@"\n')
    return w, mark


def _bench(model: Path, profile: Path, *extra: str) -> int:
    return run_cli(["bench", str(model), "--device", str(profile), "--runs", "5", "--warmup", "1", *extra])


# --------------------------------------------------------------------------- 1. dropped mid-run
def test_connection_dropped_mid_run_is_retried_and_the_leftover_runner_killed(server, tmp_path, device_models,
                                                                              caplog, capsys):
    token = f"edgeprune-fault-{uuid.uuid4().hex}"
    wrapper, mark = _slow_first_attempt(tmp_path, token)
    profile = server.profile_yaml(tmp_path / "b.yaml", python=str(wrapper), retries=3)

    def drop():
        _wait_for(mark)
        time.sleep(0.5)
        assert _with_token(token), "the first run's hanging child should be running"
        for pid in _session_sshds(server.proc.pid):  # the connection dies, sshd stays up
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=drop)
    t.start()
    with caplog.at_level(logging.WARNING, logger="edgeprune"):
        code = _bench(device_models["small"], profile, "--json")
    t.join()
    assert code == 0, capsys.readouterr().err
    log = caplog.text
    assert "dropped while running a command" in log and "retrying (attempt 2 of 3)" in log
    assert "killing the board runner left behind" in log
    assert _wait_gone(token) == []  # the runner (and its child) from the dropped session are gone
    assert sorted(p.name for p in server.remote_tmp.iterdir()) == []  # both work dirs removed


# --------------------------------------------------------------------------- 2. sshd killed mid-run
def test_sshd_killed_mid_run_and_back_is_retried(server, tmp_path, device_models, caplog, capsys):
    token = f"edgeprune-fault-{uuid.uuid4().hex}"
    wrapper, mark = _slow_first_attempt(tmp_path, token)
    profile = server.profile_yaml(tmp_path / "b.yaml", python=str(wrapper), retries=5)

    def kill_and_restart():
        _wait_for(mark)
        time.sleep(0.3)
        listener = server.proc.pid
        sessions = _session_sshds(listener)
        os.kill(listener, signal.SIGKILL)
        server.proc.wait(5)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1.5)  # the board is away; connection attempts fail in the meantime
        server._launch()

    t = threading.Thread(target=kill_and_restart)
    t.start()
    with caplog.at_level(logging.WARNING, logger="edgeprune"):
        code = _bench(device_models["small"], profile, "--json")
    t.join()
    assert code == 0, capsys.readouterr().err
    assert "retrying" in caplog.text
    assert _wait_gone(token) == []
    assert sorted(p.name for p in server.remote_tmp.iterdir()) == []


def test_sshd_gone_for_good_is_a_clear_device_error(server, tmp_path, device_models, capsys):
    profile = server.profile_yaml(tmp_path / "b.yaml", retries=2)
    server.stop()
    try:
        code = _bench(device_models["small"], profile)
    finally:
        server._launch()
    err = capsys.readouterr().err
    assert code == 4
    assert err.startswith("error: b: cannot reach") and "Traceback" not in err
    assert "fix:" in err


# --------------------------------------------------------------------------- 3. wrapper child hangs
def test_timeout_kills_the_wrappers_whole_process_group(server, tmp_path, device_models, capsys):
    token = f"edgeprune-fault-{uuid.uuid4().hex}"
    py = sys.executable
    # The wrapper does not exec: the real Python is its CHILD, and a grandchild hangs forever.
    wrapper = _wrapper(tmp_path, f'"{py}" -c "import time; time.sleep(600)" {token} &\n'
                                 f'"{py}" -c "import time; time.sleep(600)" {token}-fg\n')
    profile = server.profile_yaml(tmp_path / "b.yaml", python=str(wrapper))
    t0 = time.monotonic()
    code = _bench(device_models["small"], profile, "--timeout", "3")
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 4 and "did not finish within 3 s" in err and "Traceback" not in err
    assert took < 60
    assert _wait_gone(token) == [], "the wrapper's children survived the timeout"
    assert sorted(p.name for p in server.remote_tmp.iterdir()) == []


# --------------------------------------------------------------------------- 4. stale work dir
def test_stale_work_dir_of_a_killed_run_is_swept_and_nothing_else(server, tmp_path, device_models, caplog):
    stale = server.remote_tmp / "edgeprune.AbCdEf1234"
    fresh = server.remote_tmp / "edgeprune.ZyXwVu9876"  # another run's, still young: kept
    other = server.remote_tmp / "edgeprune.notours"  # not edgeprune's name pattern: kept
    mine = server.remote_tmp / "my-notes"
    for d in (stale, fresh, other, mine):
        d.mkdir()
        (d / "f.bin").write_bytes(b"x" * 10)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    os.utime(mine, (old, old))
    profile = server.profile_yaml(tmp_path / "b.yaml")
    with caplog.at_level(logging.WARNING, logger="edgeprune"):
        assert _bench(device_models["small"], profile, "--json") == 0
    assert "removed 1 stale work dir" in caplog.text and str(stale) in caplog.text
    assert sorted(p.name for p in server.remote_tmp.iterdir()) == sorted([fresh.name, other.name, mine.name])
