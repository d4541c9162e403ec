"""A real OpenSSH sshd on 127.0.0.1 for the SSH backend's tests (no mocked transport).

``SshServer.start(tmp)`` generates a host key, a user key and a wrong user key (ssh-keygen),
authorized_keys, a known_hosts file with the real host key and one with a wrong key, an
sshd_config (StrictModes no, PidFile in tmp, key-only login, root allowed with a key only,
internal-sftp), starts ``/usr/sbin/sshd -D -e`` on a free port and waits for its banner.
``stop()`` terminates exactly that process. The machine needs openssh-server and
openssh-client (.ci/setup installs them).
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def available() -> Optional[str]:
    """None if a test sshd can be started here, else why not."""
    if not Path(SSHD).exists():
        return f"sshd not found at {SSHD} (apt-get install openssh-server; .ci/setup does it)"
    if not Path(SSH_KEYGEN).exists():
        return "ssh-keygen not found (apt-get install openssh-client)"
    return None


def serve(tmp_path_factory, name: str = "sshd"):
    """Body of a module-scoped ``server`` fixture: a started SshServer, stopped afterwards.
    Without sshd the tests skip on a developer machine and FAIL under CI (.ci/setup installs it)."""
    from ci_guard import skip_or_fail

    skip_or_fail(available())
    srv = SshServer.start(tmp_path_factory.mktemp(name))
    try:
        yield srv
    finally:
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


@dataclass
class SshServer:
    root: Path
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    proc: Optional[subprocess.Popen] = None
    listen: str = "127.0.0.1"  # ListenAddress (tests/boards/lossy.py: an address inside a network namespace)
    prefix: list = field(default_factory=list)  # prepended to the sshd command (e.g. ip netns exec NS)

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def user_key(self) -> Path:
        return self.root / "id_user"

    @property
    def wrong_key(self) -> Path:
        return self.root / "id_wrong"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def wrong_known_hosts(self) -> Path:
        return self.root / "known_hosts_wrong"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def remote_tmp(self) -> Path:
        """A folder for the remote work dirs, so a test can see they are removed."""
        return self.root / "remote-tmp"

    @classmethod
    def start(cls, root: Path, **kw) -> "SshServer":
        srv = cls(Path(root), **kw)
        srv._setup()
        srv._launch()
        return srv

    def _setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.remote_tmp.mkdir(exist_ok=True)
        keygen(self.host_key, "edgeprune-test-host")
        keygen(self.user_key, "edgeprune-test-user")
        keygen(self.wrong_key, "edgeprune-test-wrong")
        keygen(self.root / "other_host_key", "edgeprune-other-host")
        (self.root / "authorized_keys").write_text(Path(str(self.user_key) + ".pub").read_text())
        os.chmod(self.root / "authorized_keys", 0o600)
        self.port = free_port()
        self._write_known_hosts(self.known_hosts, Path(str(self.host_key) + ".pub"))
        self._write_known_hosts(self.wrong_known_hosts, self.root / "other_host_key.pub")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
            os.chmod("/run/sshd", 0o755)
        (self.root / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.listen}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    f"AllowUsers {self.user}",
                    "Subsystem sftp internal-sftp",
                    "PrintMotd no",
                    "MaxStartups 50",
                    "MaxSessions 50",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )

    def _write_known_hosts(self, path: Path, pub: Path) -> None:
        keytype, b64 = pub.read_text().split()[:2]
        path.write_text(f"[127.0.0.1]:{self.port} {keytype} {b64}\n")

    def _launch(self) -> None:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([*self.prefix, SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(self.probe_address(), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log.read_text()[-2000:]}")

    def probe_address(self) -> tuple:
        """Where the launch check connects to see the SSH banner."""
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def profile_yaml(self, path: Path, *, name: str = "testboard", python: Optional[str] = None,
                     key_file: Optional[Path] = None, known_hosts: Optional[Path] = None,
                     trust_new_host: bool = False, threads: int = 1, retries: int = 2,
                     extra_runtime: str = "", port: Optional[int] = None, extra: str = "") -> Path:
        """Write a kind: ssh profile pointing at this server."""
        import sys

        py = python or sys.executable
        path.write_text(
            f"""# test board: loopback sshd
kind: ssh
description: loopback OpenSSH for tests
connection:
  host: 127.0.0.1
  port: {port or self.port}
  user: {self.user}
  key_file: {key_file or self.user_key}
  known_hosts: {known_hosts or self.known_hosts}
  trust_new_host: {str(trust_new_host).lower()}
  allow_agent: false
  look_for_keys: false
  connect_timeout_s: 10
  retries: {retries}
runtime:
  python: {py}
  remote_tmp: {self.remote_tmp}
{extra_runtime}threads: {threads}
limits:
  flash_bytes: 100MB
  ram_bytes: 2GiB
{extra}"""
        )
        return path
