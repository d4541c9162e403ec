"""The SSH client of the ``ssh`` backend (and of the board lock): settings resolved from the
profile and ``ssh_config``, host-key policies (verified by default; an unknown host only with
``trust_new_host``; a changed key never), and :func:`connect_client`. Nothing secret is logged."""
from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgeprune.errors import BadInput, DeviceError
from edgeprune.devices.base import TransientDeviceError

log = logging.getLogger("edgeprune.devices.ssh")


@dataclass
class SshSettings:
    hostname: str
    port: int
    user: str
    key_files: list = field(default_factory=list)
    known_hosts: Path = Path("~/.ssh/known_hosts")
    proxy_command: Optional[str] = None
    trust_new_host: bool = False
    allow_agent: bool = True
    look_for_keys: bool = True
    connect_timeout: float = 10.0

    @property
    def host_id(self) -> str:
        """The host's name as known_hosts writes it: ``host`` or ``[host]:port``."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def where(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def resolve_settings(profile) -> SshSettings:
    """Merge the profile's connection with ~/.ssh/config (explicit profile values win)."""
    conn = profile.connection
    cfg_path = Path(conn.ssh_config_file or "~/.ssh/config").expanduser()
    lookup: dict = {}
    if conn.ssh_config_file and not cfg_path.is_file():
        raise BadInput(f"{profile.name}: ssh config file {cfg_path} does not exist", "fix connection.ssh_config_file")
    if cfg_path.is_file():
        import paramiko

        try:
            cfg = paramiko.SSHConfig.from_path(str(cfg_path))
            lookup = cfg.lookup(conn.ssh_config_alias or conn.host)
        except Exception as exc:
            raise BadInput(f"{profile.name}: cannot read ssh config {cfg_path}: {exc}", "fix the ssh config file") from None
    elif conn.ssh_config_alias:
        raise BadInput(f"{profile.name}: ssh_config_alias {conn.ssh_config_alias!r} given but {cfg_path} does not exist",
                       "add a Host entry to ~/.ssh/config, or set connection.host instead")
    hostname = conn.host or lookup.get("hostname") or conn.ssh_config_alias
    port = conn.port or int(lookup.get("port", 22))
    user = conn.user or lookup.get("user") or getpass.getuser()
    key_files = [conn.key_file] if conn.key_file else list(lookup.get("identityfile", []) or [])
    key_files = [str(Path(k).expanduser()) for k in key_files]
    for k in key_files if conn.key_file else []:
        if not Path(k).is_file():
            raise BadInput(f"{profile.name}: key file {k} does not exist", "fix connection.key_file (the PRIVATE key's path)")
    known = conn.known_hosts or (lookup.get("userknownhostsfile") or "").split(" ")[0] or "~/.ssh/known_hosts"
    proxy = lookup.get("proxycommand")
    if proxy and proxy.lower() == "none":
        proxy = None
    return SshSettings(
        hostname=hostname, port=port, user=user, key_files=key_files, known_hosts=Path(known).expanduser(),
        proxy_command=proxy, trust_new_host=conn.trust_new_host, allow_agent=conn.allow_agent,
        look_for_keys=conn.look_for_keys, connect_timeout=conn.connect_timeout_s,
    )


def fingerprint(key) -> str:
    """OpenSSH-style SHA256 fingerprint of a PUBLIC host key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _policies():
    import paramiko

    class UnknownHostKey(paramiko.SSHException):
        def __init__(self, hostname, key):
            super().__init__(f"host key for {hostname} not in known_hosts")
            self.hostname, self.key = hostname, key

    class RefuseUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            raise UnknownHostKey(hostname, key)

    class TrustNew(paramiko.MissingHostKeyPolicy):
        """Accept-and-record, but only for a host with no key at all in known_hosts."""

        def __init__(self, path: Path):
            self.path = path

        def missing_host_key(self, client, hostname, key):
            known = client.get_host_keys().lookup(hostname)
            if known:  # the host is known with other key types: treat as a changed key
                raise paramiko.BadHostKeyException(hostname, key, next(iter(known.values())))
            client.get_host_keys().add(hostname, key.get_name(), key)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(self.path))
            log.warning("trusting NEW host key for %s (%s %s), recorded in %s", hostname, key.get_name(), fingerprint(key), self.path)

    return UnknownHostKey, RefuseUnknown, TrustNew


def connect_client(s: SshSettings, *, name: str):
    """An authenticated paramiko SSHClient, or a DeviceError that says what failed and the fix."""
    import paramiko

    UnknownHostKey, RefuseUnknown, TrustNew = _policies()
    client = paramiko.SSHClient()
    if s.known_hosts.is_file():
        try:
            client.load_host_keys(str(s.known_hosts))
        except Exception as exc:
            raise BadInput(f"{name}: cannot read known_hosts {s.known_hosts}: {exc}", "fix or remove the broken line") from None
    client.set_missing_host_key_policy(TrustNew(s.known_hosts) if s.trust_new_host else RefuseUnknown())
    sock = paramiko.ProxyCommand(s.proxy_command) if s.proxy_command else None
    keyscan = f"ssh-keyscan -p {s.port} {shlex.quote(s.hostname)} >> {shlex.quote(str(s.known_hosts))}"
    try:
        client.connect(
            s.hostname, port=s.port, username=s.user, key_filename=s.key_files or None,
            allow_agent=s.allow_agent, look_for_keys=s.look_for_keys, timeout=s.connect_timeout,
            banner_timeout=s.connect_timeout, auth_timeout=s.connect_timeout, sock=sock,
        )
        client.get_transport().set_keepalive(15)
        return client
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise DeviceError(
            f"{name}: host key for {s.host_id} has CHANGED: the server offered {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, {s.known_hosts} has {fingerprint(exc.expected_key)}. Refused: this can be a "
            f"reinstalled board or someone intercepting the connection",
            f"if you know the board was reinstalled, remove the old key with `ssh-keygen -R {shlex.quote(s.host_id)} "
            f"-f {shlex.quote(str(s.known_hosts))}` and add the new one with `{keyscan}` after checking its fingerprint",
        ) from None
    except UnknownHostKey as exc:
        client.close()
        raise DeviceError(
            f"{name}: host key for {s.host_id} is unknown (not in {s.known_hosts}); the server offered "
            f"{exc.key.get_name()} {fingerprint(exc.key)}. Refused",
            f"add it with `{keyscan}` (compare the fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on "
            f"the board), or opt in to trust-on-first-use with connection.trust_new_host: true / --trust-new-host",
        ) from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise DeviceError(f"{name}: the key file {', '.join(s.key_files) or '(default)'} is passphrase-protected",
                          "load it into the agent (`ssh-add KEYFILE`) and keep connection.allow_agent: true") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        tried = ", ".join(([f"key file {k}" for k in s.key_files]) + (["ssh-agent"] if s.allow_agent else [])
                          + (["~/.ssh/id_*"] if s.look_for_keys else [])) or "nothing"
        raise DeviceError(
            f"{name}: authentication failed for {s.where} (tried {tried}): {type(exc).__name__}",
            f"check the user name, and that your public key is in ~{s.user}/.ssh/authorized_keys on the board "
            f"(`ssh-copy-id -i KEY.pub -p {s.port} {s.user}@{s.hostname}`); set connection.key_file to the matching private key",
        ) from None
    except socket.gaierror as exc:
        client.close()
        raise DeviceError(f"{name}: cannot resolve host {s.hostname!r}: {exc.strerror or exc}",
                          "check connection.host / --host / $EDGEPRUNE_DEVICE_HOST (or the ssh_config alias)") from None
    except (paramiko.ssh_exception.NoValidConnectionsError, socket.timeout, TimeoutError, ConnectionError, EOFError, OSError) as exc:
        client.close()
        raise TransientDeviceError(
            f"{name}: cannot reach {s.where}: {type(exc).__name__}: {exc}",
            "check the board is powered, on the network and running sshd (ping it; `ssh -p PORT user@host`), "
            "and the host/port in the profile (or --host)",
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        msg = str(exc)
        if "private key" in msg.lower() or "key file" in msg.lower() or "not a valid" in msg.lower():
            raise DeviceError(f"{name}: cannot use the key file {', '.join(s.key_files)}: {msg}",
                              "point connection.key_file at an OpenSSH private key") from None
        raise TransientDeviceError(f"{name}: SSH connection to {s.where} failed: {msg}",
                                   "check the board runs an SSH server on that port") from None
