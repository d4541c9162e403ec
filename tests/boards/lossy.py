"""A lossy, slow link to a board's sshd: its own network namespace, 2 % loss, 15 ms each way.

Layout (every address lives inside the two namespaces made here; nothing is added to the
host's interfaces):

    test process ──loopback──> forwarder (listens on 127.0.0.1 in the host namespace,
                                connects from namespace L, adds 15 ms each way)
                                   │ veth 10.213.X.1/30 (L)  <->  10.213.X.2/30 (B)
                                   v
                               sshd of the board, in namespace B; nftables in B drops
                               2 % of packets in each direction (input and output hooks)

The kernel here has no netem (``tc qdisc ... netem`` fails), hence nftables for the loss and
a user-space delay line (tests/boards/forwarder.py) for the delay. The forwarder can also
cut a connection on demand (:meth:`LossyLink.cut_next`), so the SSH backend's retries are
exercised for certain rather than by chance. Needs root, ``ip`` (iproute2) and ``nft``
(nftables); :func:`available` says why not.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import sshd as sshd_helper

FORWARDER = Path(__file__).resolve().parent / "forwarder.py"
IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
LOSS_PERCENT = 2
DELAY_MS = 15.0


def _sh(*argv, input: Optional[str] = None) -> str:
    res = subprocess.run([str(a) for a in argv], input=input, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def available() -> Optional[str]:
    """None if network namespaces with nftables can be made here, else why not."""
    if os.geteuid() != 0:
        return "the lossy link needs root (network namespaces, nftables)"
    for tool, pkg in ((IP, "iproute2"), (NFT, "nftables")):
        if not Path(tool).exists():
            return f"{tool} not found (apt-get install {pkg}; .ci/setup does it)"
    name = f"ep12probe{os.getpid()}"
    try:
        _sh(IP, "netns", "add", name)
        try:
            _sh(IP, "netns", "exec", name, NFT, "add", "table", "inet", "probe")
        finally:
            subprocess.run([IP, "netns", "del", name], capture_output=True)
    except RuntimeError as exc:
        return f"cannot make a network namespace with nftables here: {exc}"
    return None


class LossyLink:
    """Two namespaces, a veth pair, nftables loss in the board's, and the delaying forwarder."""

    _count = 0

    def __init__(self, root: Path, *, loss_percent: int = LOSS_PERCENT, delay_ms: float = DELAY_MS):
        LossyLink._count += 1
        tag = f"{os.getpid() % 100000}{LossyLink._count}"
        self.root = Path(root)
        self.ns_link, self.ns_board = f"ep12L{tag}", f"ep12B{tag}"
        octet = (os.getpid() + LossyLink._count * 7) % 250 + 1
        self.link_addr, self.board_addr = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self.loss_percent, self.delay_ms = loss_percent, delay_ms
        self.cut_file = self.root / "cut-next"
        self.fwd: Optional[subprocess.Popen] = None
        self.port = 0  # the forwarder's loopback port: what the device profile connects to
        self._made: list = []

    def up(self) -> "LossyLink":
        self.root.mkdir(parents=True, exist_ok=True)
        for ns in (self.ns_link, self.ns_board):
            _sh(IP, "netns", "add", ns)
            self._made.append(ns)
            _sh(IP, "-n", ns, "link", "set", "lo", "up")
        va, vb = f"v{self.ns_link}"[:15], f"v{self.ns_board}"[:15]
        _sh(IP, "link", "add", va, "netns", self.ns_link, "type", "veth", "peer", "name", vb, "netns", self.ns_board)
        _sh(IP, "-n", self.ns_link, "addr", "add", f"{self.link_addr}/30", "dev", va)
        _sh(IP, "-n", self.ns_board, "addr", "add", f"{self.board_addr}/30", "dev", vb)
        _sh(IP, "-n", self.ns_link, "link", "set", va, "up")
        _sh(IP, "-n", self.ns_board, "link", "set", vb, "up")
        p = self.loss_percent
        _sh(IP, "netns", "exec", self.ns_board, NFT, "-f", "-", input=(
            "table inet lossy {\n"
            f"  chain rx {{ type filter hook input priority 0; policy accept; iifname \"{vb}\" numgen random mod 100 < {p} counter drop; }}\n"
            f"  chain tx {{ type filter hook output priority 0; policy accept; oifname \"{vb}\" numgen random mod 100 < {p} counter drop; }}\n"
            "}\n"))
        return self

    def start_forwarder(self, target_port: int) -> int:
        self.cut_file.write_text("0")
        log = open(self.root / "forwarder.log", "ab")
        self.fwd = subprocess.Popen(
            [sys.executable, str(FORWARDER), "--target", f"{self.board_addr}:{target_port}", "--netns", self.ns_link,
             "--delay-ms", str(self.delay_ms), "--cut-file", str(self.cut_file)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
        log.close()
        line = self.fwd.stdout.readline()
        if not line.startswith("PORT "):
            self.down()
            raise RuntimeError(f"forwarder did not start: {line!r} {(self.root / 'forwarder.log').read_text()[-1000:]}")
        self.port = int(line.split()[1])
        return self.port

    def cut_next(self, n: int = 1) -> None:
        """The next ``n`` connections are cut mid-transfer (a link drop)."""
        self.cut_file.write_text(str(n))

    def cuts_pending(self) -> int:
        return int(self.cut_file.read_text().strip() or 0)

    def dropped(self) -> dict:
        """Packets nftables dropped so far: {'rx': n, 'tx': n}."""
        out = json.loads(_sh(IP, "netns", "exec", self.ns_board, NFT, "-j", "list", "table", "inet", "lossy"))
        counts: dict = {}
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if rule:
                for e in rule.get("expr", []):
                    if "counter" in e:
                        counts[rule["chain"]] = e["counter"]["packets"]
        return counts

    def down(self) -> None:
        if self.fwd is not None and self.fwd.poll() is None:
            self.fwd.terminate()
            try:
                self.fwd.wait(10)
            except subprocess.TimeoutExpired:
                self.fwd.kill()
                self.fwd.wait(5)
        self.fwd = None
        for ns in reversed(self._made):  # deleting a namespace deletes its veth end (and the pair)
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        self._made = []


class LossySshServer(sshd_helper.SshServer):
    """The test sshd, started inside the board's namespace and reached through the link."""

    link: Optional[LossyLink] = None

    @classmethod
    def start_behind(cls, root: Path, link: LossyLink) -> "LossySshServer":
        srv = cls(Path(root), listen=link.board_addr, prefix=[IP, "netns", "exec", link.ns_board])
        srv.link = link
        srv._setup()
        link.start_forwarder(srv.port)
        srv.known_hosts_via_link = srv.root / "known_hosts_link"
        keytype, b64 = Path(str(srv.host_key) + ".pub").read_text().split()[:2]
        srv.known_hosts_via_link.write_text(f"[127.0.0.1]:{link.port} {keytype} {b64}\n")
        srv._launch()
        return srv

    def probe_address(self) -> tuple:
        return ("127.0.0.1", self.link.port)
