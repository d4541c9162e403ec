"""The emulated Raspberry Pi 4 built by .ci/aarch64-board.sh, as a device profile for the tests.

The board is an arm64 Debian bookworm userland whose python3 runs under qemu-user
(``bin/python3`` is the wrapper); its device profile is an ordinary ``kind: ssh`` profile
pointing at a test sshd, with ``runtime.python`` = that wrapper and ``emulated`` set, so its
figures are labelled emulated in ``bench``, ``devices check`` and the run report.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
BOARDS = Path(os.environ.get("EDGEPRUNE_BOARDS", "/opt/edgeprune-boards"))
BOARD = BOARDS / "pi4-bookworm-arm64"
PYTHON = BOARD / "bin" / "python3"
BUILD_SCRIPT = ROOT / ".ci" / "aarch64-board.sh"
EMULATION = "qemu-user aarch64, QEMU_CPU=cortex-a72, Debian bookworm userland"


def available() -> Optional[str]:
    """None if the emulated board is built and runs here, else why not (and the fix)."""
    if not shutil.which("qemu-aarch64-static") and not Path("/usr/bin/qemu-aarch64-static").exists():
        return "qemu-aarch64-static not found (apt-get install qemu-user-static; .ci/setup does it)"
    if not PYTHON.exists():
        return f"the emulated board is not built ({PYTHON} missing): run `bash {BUILD_SCRIPT.relative_to(ROOT)}` (.ci/setup does)"
    res = subprocess.run([str(PYTHON), "-c", "import platform, numpy; print(platform.machine())"],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or res.stdout.strip() != "aarch64":
        return f"the emulated board's Python does not run: {res.stderr.strip()[-500:] or res.stdout.strip()}"
    return None


def write_profile(server, path: Path, *, accept: str = "[ai_edge_litert, tflite_runtime]", port: Optional[int] = None,
                  known_hosts: Optional[Path] = None, retries: int = 3, connect_timeout_s: float = 10) -> Path:
    """A kind: ssh profile for the emulated Pi 4 served by ``server`` (a tests/sshd.py SshServer)."""
    server.profile_yaml(path, name=path.stem, python=str(PYTHON), known_hosts=known_hosts, retries=retries,
                        threads=1, port=port, extra_runtime=f"  accept: {accept}\n  run_timeout_s: 600\n",
                        extra=f"emulated: {EMULATION}\n")
    text = path.read_text()
    text = text.replace("description: loopback OpenSSH for tests",
                        "description: emulated Raspberry Pi 4 (aarch64 under qemu-user) over loopback OpenSSH")
    text = text.replace("connect_timeout_s: 10", f"connect_timeout_s: {connect_timeout_s:g}")
    path.write_text(text)
    return path
