"""A real labgrid farm on 127.0.0.1 for the farm tests: labgrid-coordinator, labgrid-exporter
and two loopback OpenSSH "boards" (tests/sshd.py), each exported as a NetworkService and put in
its own place (``<prefix>-a``, ``<prefix>-b``, both tagged ``farm=<prefix>``).

Each board's sshd sets ``TMPDIR`` for its sessions (``SetEnv``), so the two boards have their
own temp dirs, as two real boards do (the board lock lives there). The boards' Python is a
wrapper (``runner.sh``) that logs ``start``/``end`` with a timestamp and the board's TMPDIR to
``runs.log`` around the real board runner, and sleeps ``hold_s`` first (a slower board): the
tests read from it which runs overlapped. Sent TERM (edgeprune ending an interrupted run),
the wrapper logs ``term``, takes ``term_s`` to die (a runner that cleans up), then logs
``dead ... lock=yes|no``: whether the board lock was still held when it was gone (it must
be: edgeprune releases a board only after everything it started there has ended).
``board_processes()`` lists whatever of a run still lives on the boards (from /proc).
``stop()`` ends every process it started, each by its own PID.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import sshd


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def available() -> Optional[str]:
    why = sshd.available()
    if why:
        return why
    try:
        import labgrid  # noqa: F401
    except ImportError:
        return "labgrid is not installed (pip install 'labgrid>=26,<27'; pyproject declares it)"
    if not Path(_bin("labgrid-coordinator")).exists():
        return "labgrid-coordinator not found next to the Python running the tests"
    return None


def _wait_for(predicate, what: str, timeout: float = 30.0, proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}: {log.read_text()[-2000:] if log else ''}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not happen within {timeout:g} s: {log.read_text()[-2000:] if log else ''}")


LOG_WORDS = ("start", "end", "term", "dead")


def read_log(log: Path) -> list[tuple[str, float, str, str]]:
    """Every line of runs.log as (word, time, board TMPDIR, rest); anything else fails the test."""
    events = []
    for n, line in enumerate(log.read_text().splitlines() if log.exists() else [], 1):
        parts = line.split(" ", 3)
        assert len(parts) >= 3 and parts[0] in LOG_WORDS, f"runs.log line {n} is not a board-runner event: {line!r}"
        events.append((parts[0], float(parts[1]), parts[2], parts[3] if len(parts) > 3 else ""))
    return events


def read_runs(log: Path, *, interrupted: int = 0, unlogged: int = 0) -> list[tuple[str, float, float]]:
    """(board TMPDIR, start, end) of every finished board run in runs.log, strictly: every
    ``end`` has its ``start`` on the same board, and every ``start`` ends (``end``, or ``dead``
    after ``term`` for exactly ``interrupted`` runs that edgeprune ended; ``unlogged`` runs ended
    after ``term`` without logging ``dead``). A run that is still
    going, or an ``end`` of a run this log never saw start (a leftover of an earlier test),
    fails the test instead of being skipped."""
    starts: dict[str, list[float]] = {}
    out, killed = [], 0
    for word, ts, board, rest in read_log(log):
        if word == "start":
            starts.setdefault(board, []).append(ts)
        elif word == "term":
            continue
        else:
            assert starts.get(board), f"runs.log: {word} at {ts} on {board} without a start: {log.read_text()}"
            t0 = starts[board].pop(0)
            if word == "end":
                out.append((board, t0, ts))
            else:
                killed += 1
    left = {b: v for b, v in starts.items() if v}
    assert sum(len(v) for v in left.values()) == unlogged, f"runs.log: runs started and never ended: {left}: {log.read_text()}"
    assert killed == interrupted, f"runs.log: {killed} run(s) ended by TERM, expected {interrupted}: {log.read_text()}"
    return sorted(out, key=lambda r: r[1])


def board_processes(roots) -> list[str]:
    """``pid cmdline`` of every live process (zombies aside) whose command line or working
    directory lies under one of ``roots`` (the farm's and boards' folders): what a run left."""
    roots = [str(Path(r)) for r in roots]
    me = os.getpid()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            state = next((ln.split()[1] for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
            try:
                cwd = os.readlink(d / "cwd")
            except OSError:
                cwd = ""
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state == "Z" or not cmd or "sshd" in cmd.split(" ")[0]:
            continue
        if any(r in cmd or cwd == r or cwd.startswith(r + "/") for r in roots):
            found.append(f"{d.name} {cmd}")
    return found


def overlaps(runs) -> bool:
    return any(a[2] > b[1] for a, b in zip(runs, runs[1:]))


@dataclass
class Farm:
    root: Path
    prefix: str = "farm"
    hold_s: float = 0.0
    term_s: float = 1.5
    boards: list = field(default_factory=list)  # SshServer
    port: int = 0
    procs: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def runs_log(self) -> Path:
        return self.root / "runs.log"

    @property
    def hold_file(self) -> Path:
        """While it exists, its number is the seconds every board run holds (instead of hold_s)."""
        return self.root / "hold_s"

    @property
    def runner(self) -> Path:
        return self.root / "runner.sh"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def places(self) -> list[str]:
        return [f"{self.prefix}-a", f"{self.prefix}-b"]

    def board_tmp(self, i: int) -> Path:
        return self.root / f"board{i}-tmp"

    def board_dirs(self) -> list[Path]:
        """Where runs put work dirs and locks: each board's TMPDIR and its sshd's remote_tmp."""
        return [self.board_tmp(i) for i in range(len(self.boards))] + [b.remote_tmp for b in self.boards]

    def scrub(self) -> list[str]:
        """Make the farm clean again (kill leftover runner processes, remove work dirs and locks,
        release held places) and say what was there: a test that left anything fails with it."""
        import signal as _signal

        found = self.leftovers()
        for line in board_processes([self.runner, *self.board_dirs()]):
            try:
                os.kill(int(line.split(" ", 1)[0]), _signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in self.board_dirs():
            for w in d.glob("edgeprune.*"):
                shutil.rmtree(w, ignore_errors=True)
            (d / "edgeprune-board.lock").unlink(missing_ok=True)
        for place in self.places():
            holder = self.holder(place)
            if holder:
                found.append(f"place {place} held by {holder}")
                self.client("-p", place, "release", "--kick", check=False)
        return found

    def leftovers(self) -> list[str]:
        """What runs left on the boards: live processes of the runner (wrapper or board runner),
        work dirs, board locks. Empty on a clean farm."""
        left = board_processes([self.runner, *self.board_dirs()])
        for d in self.board_dirs():
            left += [f"work dir {p}" for p in d.glob("edgeprune.*")]
            if (d / "edgeprune-board.lock").exists():
                left.append(f"board lock {d / 'edgeprune-board.lock'}")
        return left

    @classmethod
    def start(cls, root: Path, *, prefix: str = "farm", hold_s: float = 0.0) -> "Farm":
        farm = cls(Path(root), prefix=prefix, hold_s=hold_s)
        try:
            farm._start()
        except BaseException:
            farm.stop()
            raise
        return farm

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.runs_log
        # HUP is ignored (sshd may hang up the session's group when edgeprune's channel closes; a
        # runner under nohup, the case of the issue, would survive that), so what ends the run is
        # edgeprune's own TERM (or KILL). Children run in the background and are waited for, so a TERM is handled at once (the
        # trap), not only after the child has ended; the trap takes term_s to die, like a runner
        # that cleans up, and says whether the board lock (beside the work dir) was still held.
        self.runner.write_text(
            "#!/bin/sh\n"
            "trap '' HUP\n"  # like a runner started with nohup: only edgeprune's TERM/KILL may end it
            # PIPE too: once edgeprune has closed the SSH channel, the shell's own "Terminated" notice
            # for its TERMed child goes to a closed stderr and SIGPIPE killed the wrapper before its
            # TERM trap could log (3 interrupts in 12 under load; seen with a PIPE trap that logged).
            # A runner logging to a file (nohup) is never ended that way: only edgeprune's TERM may.
            "trap '' PIPE\n"
            f"trap 'echo \"term $(date +%s.%N) $TMPDIR\" >> {log}; sleep {self.term_s}; l=no; "
            f"[ -e ../edgeprune-board.lock ] && l=yes; echo \"dead $(date +%s.%N) $TMPDIR lock=$l\" >> {log}; "
            "exit 143' TERM\n"
            # "start" only once the traps are in place: the tests interrupt as soon as they read it, and a
            # TERM that came before the trap (a loaded machine) ended the wrapper without a word
            f"echo \"start $(date +%s.%N) $TMPDIR\" >> {log}\n"
            # the hold: hold_s, or what hold_file says while it exists (a test that needs longer runs)
            f"h=$(cat {self.hold_file} 2>/dev/null || echo {self.hold_s})\nsleep \"$h\" &\nwait $!\n"
            f"{sys.executable} \"$@\" &\nwait $!\nrc=$?\n"
            f"echo \"end $(date +%s.%N) $TMPDIR\" >> {log}\n"
            "exit $rc\n")
        self.runner.chmod(0o755)
        known = []
        for i in range(2):
            srv = sshd.SshServer(self.root / f"board{i}")
            srv._setup()
            self.board_tmp(i).mkdir()
            with open(srv.root / "sshd_config", "a") as f:
                f.write(f"SetEnv TMPDIR={self.board_tmp(i)}\n")
            if self.boards:  # one user key logs in to every board (the profile has one key_file)
                with open(srv.root / "authorized_keys", "a") as f:
                    f.write(Path(str(self.boards[0].user_key) + ".pub").read_text())
            srv._launch()
            self.boards.append(srv)
            known.append(srv.known_hosts.read_text())
        self.known_hosts.write_text("".join(known))
        # coordinator
        self.port = sshd.free_port()
        clog = self.root / "coordinator.log"
        with open(clog, "ab") as f:
            p = subprocess.Popen([_bin("labgrid-coordinator"), "-l", self.address], cwd=self.root, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        _wait_for(lambda: "Coordinator ready" in clog.read_text(), "labgrid-coordinator ready", proc=p, log=clog)
        # exporter: one NetworkService per board
        exp = self.root / "exporter.yaml"
        exp.write_text("".join(
            f"board{i}:\n  NetworkService:\n    address: 127.0.0.1\n    username: {srv.user}\n    port: {srv.port}\n"
            for i, srv in enumerate(self.boards)))
        elog = self.root / "exporter.log"
        with open(elog, "ab") as f:
            p = subprocess.Popen([_bin("labgrid-exporter"), "-c", self.address, "--hostname", "127.0.0.1",
                                  "-n", f"{self.prefix}-exp", str(exp)], cwd=self.root, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        _wait_for(lambda: "Exporter ready" in elog.read_text(), "labgrid-exporter ready", proc=p, log=elog)
        for i, place in enumerate(self.places()):
            self.client("-p", place, "create")
            self.client("-p", place, "add-match", f"{self.prefix}-exp/board{i}/NetworkService")
            self.client("-p", place, "set-tags", f"farm={self.prefix}")

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_bin("labgrid-client"), "-x", self.address, *args], capture_output=True, text=True,
                              timeout=60, check=check, stdin=subprocess.DEVNULL)

    def holder(self, place: str) -> Optional[str]:
        out = self.client("-p", place, "show").stdout
        for line in out.splitlines():
            if line.strip().startswith("acquired:"):
                v = line.split(":", 1)[1].strip()
                return None if v == "None" else v
        return None

    def profile_yaml(self, path: Path, *, place: Optional[str] = None, tags: bool = False,
                     acquire_timeout_s: float = 120, name: Optional[str] = None) -> Path:
        srv = self.boards[0]
        where = f"  place: {place}\n" if place else f"  tags:\n    farm: {self.prefix}\n"
        assert place or tags
        path.write_text(
            f"""# a board of the test farm (labgrid places on 127.0.0.1)
kind: labgrid
description: loopback labgrid farm for tests
labgrid:
  coordinator: {self.address}
{where}  acquire_timeout_s: {acquire_timeout_s}
  poll_s: 0.3
connection:
  key_file: {srv.user_key}
  known_hosts: {self.known_hosts}
  allow_agent: false
  look_for_keys: false
  retries: 2
runtime:
  python: {self.runner}
threads: 1
limits:
  flash_bytes: 100MB
  ram_bytes: 2GiB
"""
        )
        return path

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs = []
        for srv in self.boards:
            srv.stop()


def edgeprune(*args: str, timeout: float = 600) -> subprocess.Popen:
    """Start ``python -m edgeprune ARGS`` (stdout, stderr piped)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "edgeprune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL,
                            preexec_fn=default_sigint)


def default_sigint() -> None:
    """In the child: SIGINT back to its default. A test run started in the background (nohup,
    `cmd &` in a script, some CI launchers) inherits SIGINT IGNORED, and Python then installs no
    KeyboardInterrupt handler, so the Ctrl-C the tests send would never arrive."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
