#!/usr/bin/env python3
"""Serve the emulated Raspberry Pi 4 over a loopback OpenSSH sshd, for trying edgeprune without a Pi.

    bash .ci/aarch64-board.sh                          # once: builds the board (~20 s)
    python3 tests/boards/serve.py --dir /tmp/pi4emu &  # sshd + a device profile
    edgeprune run --device /tmp/pi4emu/pi4-emulated.yaml --budget 2MB

``--lossy`` puts the board's sshd in its own network namespace behind 2 % loss and 15 ms each
way (root, iproute2 and nftables needed). Writes DIR/pi4-emulated.yaml (a fresh host key and
user key in DIR, so nothing of yours is used or changed), prints it, and runs until Ctrl-C or
SIGTERM, then stops exactly the processes it started and removes the namespaces.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: sshd.py and boards/

import sshd as sshd_helper  # noqa: E402
from boards import emulated, lossy  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="folder for the keys, sshd config and profile (default: a new temp dir)")
    p.add_argument("--lossy", action="store_true", help="behind a lossy link: own network namespace, 2%% loss, 15 ms each way")
    a = p.parse_args(argv)
    why = sshd_helper.available() or emulated.available() or (lossy.available() if a.lossy else None)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    root = a.dir or Path(tempfile.mkdtemp(prefix="edgeprune-pi4emu-"))
    root.mkdir(parents=True, exist_ok=True)
    link = None
    if a.lossy:
        link = lossy.LossyLink(root / "link").up()
        srv = lossy.LossySshServer.start_behind(root / "sshd", link)
        prof = emulated.write_profile(srv, root / "pi4-emulated.yaml", port=link.port, known_hosts=srv.known_hosts_via_link)
    else:
        srv = sshd_helper.SshServer.start(root / "sshd")
        prof = emulated.write_profile(srv, root / "pi4-emulated.yaml")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(prof.read_text())
    print(f"serving the emulated Pi 4; profile: {prof}\ntry: edgeprune devices check {prof}\n"
          f"     edgeprune run --device {prof} --budget 2MB\nCtrl-C stops it.", flush=True)
    try:
        done.wait()
    finally:
        srv.stop()
        if link is not None:
            link.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
