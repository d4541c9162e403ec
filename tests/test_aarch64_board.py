"""An emulated Raspberry Pi 4 (aarch64) over the real loopback OpenSSH, then behind a lossy link.

The board: .ci/aarch64-board.sh (arm64 Debian bookworm, its python3 + python3-numpy,
tflite-runtime 2.14 and ai-edge-litert aarch64 wheels from the registry, python3 run by
qemu-user with QEMU_CPU=cortex-a72). The link: the board's sshd in its own network namespace,
2 % packet loss each way (nftables), 15 ms each way (a delaying forwarder), and one link drop
on demand so the SSH backend's retries happen for certain (tests/boards/lossy.py).

A machine that cannot build or run these (no qemu, board not built, no namespaces) skips
them, and FAILS them under CI=true with the reason, like the other SSH tests.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sshd as sshd_helper
from boards import emulated, lossy
from ci_guard import skip_or_fail
from conftest import mlperf_path
from edgeprune.cli import run_cli
from edgeprune.devices.base import BenchConfig, check_device, measure
from edgeprune.devices.profile import load_profile

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
RUNTIMES = {"tflite_runtime": "2.14.0", "ai_edge_litert": None}  # None: the host's ai-edge-litert version


def _host_litert_version() -> str:
    from importlib import metadata

    return metadata.version("ai-edge-litert")


@pytest.fixture(scope="module")
def board():
    skip_or_fail(sshd_helper.available() or emulated.available())
    return emulated.PYTHON


@pytest.fixture(scope="module")
def server(board, tmp_path_factory):
    srv = sshd_helper.SshServer.start(tmp_path_factory.mktemp("sshd-pi4"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def link(board, tmp_path_factory):
    skip_or_fail(lossy.available())
    root = tmp_path_factory.mktemp("lossy-link")
    ln = lossy.LossyLink(root / "link").up()
    try:
        srv = lossy.LossySshServer.start_behind(root / "sshd", ln)
    except BaseException:
        ln.down()
        raise
    yield ln, srv
    srv.stop()
    ln.down()


@pytest.fixture(scope="module")
def resnet8_int8():
    return mlperf_path("pretrainedResnet_quant.tflite")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One seeded int8 32x32x3 image (.npy): the same inputs on the host and on the board."""
    path = tmp_path_factory.mktemp("inputs") / "images.npy"
    np.save(path, np.random.RandomState(12).randint(-128, 128, size=(1, 32, 32, 3)).astype(np.int8))
    return path


@pytest.fixture(scope="module")
def host_checksum(resnet8_int8, images):
    """The output checksum computed on THIS host (x86-64, ai-edge-litert) for the same inputs."""
    m = measure("local", resnet8_int8, BenchConfig(runs=2, warmup=0, threads=1, inputs=np.load(images)))
    assert m.arch != "aarch64"  # the reference is really computed on the host
    return m.output_checksum


def _profile(server, tmp_path, accept="[ai_edge_litert, tflite_runtime]", **kw):
    return emulated.write_profile(server, tmp_path / "pi4-emulated.yaml", accept=accept, **kw)


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_devices_check_reports_aarch64(server, tmp_path, runtime, capsys):
    prof = _profile(server, tmp_path, accept=f"[{runtime}]")
    assert run_cli(["devices", "check", str(prof)]) == 0
    out = capsys.readouterr().out
    version = RUNTIMES[runtime] or _host_litert_version()
    assert "aarch64" in out and runtime in out and version in out and "EMULATED" in out
    info = check_device(load_profile(prof))
    assert info["arch"] == "aarch64" and info["python_version"].startswith("3.11")
    assert info["runtime"] == runtime and info["runtime_version"] == version
    assert info["numpy_version"].startswith("1.24")  # Debian bookworm's python3-numpy, not the host's
    assert "EMULATED" in info["emulated"] and info["missing"] == []


def test_bench_resnet8_int8_checksum_matches_host(server, tmp_path, resnet8_int8, images, host_checksum, capsys):
    """`edgeprune bench` on the board (aarch64 ai-edge-litert) gives the host's int8 outputs bit for bit."""
    prof = _profile(server, tmp_path, accept="[ai_edge_litert]")
    assert run_cli(["bench", str(resnet8_int8), "--device", str(prof), "--runs", "10", "--warmup", "2",
                    "--inputs", str(images), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["arch"] == "aarch64" and d["runtime"] == "ai_edge_litert" and d["runs"] >= 10
    assert d["output_checksum"] == host_checksum
    assert 0 < d["latency_ms"]["median"] < 2000 and d["peak_rss_bytes"] > 0
    assert "EMULATED" in d["extra"]["emulated"]
    assert run_cli(["bench", str(resnet8_int8), "--device", str(prof), "--runs", "3", "--inputs", str(images)]) == 0
    assert "EMULATED" in capsys.readouterr().out
    print(f"emulated ResNet-8 int8: median {d['latency_ms']['median']:.2f} ms, load {d['load_ms']:.0f} ms, "
          f"wall {d['wall_s']:.1f} s")


def test_bench_tflite_runtime_on_aarch64(server, tmp_path, resnet8_int8, images):
    """tflite-runtime 2.14 runs the int8 model on aarch64; its output is a real softmax over 10 classes.

    Its checksum is NOT compared with the host's: tflite-runtime 2.14's aarch64 int8 kernels round
    differently from its x86 build (outputs differ by a few int8 steps; see bench/results/aarch64_board.md).
    It must be the same as the board's own second run, and the top class the same as ai-edge-litert's.
    """
    prof = load_profile(_profile(server, tmp_path, accept="[tflite_runtime]"))
    cfg = BenchConfig(runs=5, warmup=1, inputs=np.load(images))
    m1, m2 = measure(prof, resnet8_int8, cfg), measure(prof, resnet8_int8, cfg)
    assert m1.arch == "aarch64" and m1.runtime == "tflite_runtime" and m1.runtime_version == "2.14.0"
    assert m1.output_checksum == m2.output_checksum and m1.extra["outputs"] == [{"shape": [1, 10], "dtype": "int8"}]


def test_run_on_emulated_pi4(server, tmp_path):
    """`edgeprune run --device <emulated pi4>` on the bundled example: exit 0, the report says aarch64."""
    prof = _profile(server, tmp_path)
    out = tmp_path / "run"
    code, report, err = _run_cli_subprocess(prof, out)
    assert code == 0, err[-3000:]
    _check_report(report)
    assert "aarch64" in (out / "report.md").read_text() and "EMULATED" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- the lossy link
def test_lossy_check_and_bench_with_retries(link, tmp_path, resnet8_int8, images, host_checksum, caplog):
    ln, srv = link
    prof = load_profile(_profile(srv, tmp_path, accept="[ai_edge_litert]", port=ln.port,
                                 known_hosts=srv.known_hosts_via_link))
    caplog.set_level(logging.WARNING, logger="edgeprune.devices")
    ln.cut_next(1)  # the link drops during the first connection's uploads
    info = check_device(prof)
    assert info["arch"] == "aarch64" and info["runtime"] == "ai_edge_litert"
    assert ln.cuts_pending() == 0 and "retrying" in caplog.text
    caplog.clear()
    ln.cut_next(1)
    m = measure(prof, resnet8_int8, BenchConfig(runs=10, warmup=2, inputs=np.load(images)))
    assert "retrying" in caplog.text, caplog.text
    assert m.arch == "aarch64" and m.output_checksum == host_checksum and m.latency_ms.median > 0
    print(f"lossy link: bench wall {m.wall_s:.1f} s (with one link drop + retry), median {m.latency_ms.median:.2f} ms, "
          f"packets dropped so far {ln.dropped()}")
    assert list(srv.remote_tmp.iterdir()) == []  # the work dirs were removed, also the dropped one's


def test_run_over_lossy_link_with_retries(link, tmp_path):
    ln, srv = link
    prof = _profile(srv, tmp_path, port=ln.port, known_hosts=srv.known_hosts_via_link)
    ln.cut_next(1)
    out = tmp_path / "run"
    code, report, err = _run_cli_subprocess(prof, out)
    assert code == 0, err[-3000:]
    _check_report(report)
    assert ln.cuts_pending() == 0
    assert "retrying" in err, err[-3000:]  # the SSH backend's retry is in the log
    dropped = ln.dropped()
    assert sum(dropped.values()) > 0, dropped  # nftables really dropped packets on the way
    print(f"lossy run: {report['timings']}, dropped packets {dropped}")


# --------------------------------------------------------------------------- helpers
def _run_cli_subprocess(prof: Path, out: Path):
    """`python -m edgeprune run` kept short: rates 0 and 0.05, 5 timed runs; stderr is the log."""
    cmd = [sys.executable, "-m", "edgeprune", "run", "--device", str(prof), "--max-rate", "0.05", "--step", "0.05",
           "--runs", "5", "--warmup", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, COLUMNS="200"))
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return res.returncode, report, res.stderr + res.stdout


def _check_report(report: dict) -> None:
    assert report is not None and report["exit_code"] == 0
    dev = report["device"]
    assert dev["kind"] == "ssh" and dev["arch"] == "aarch64" and "qemu" in dev["emulated"]
    measured = [c["measurement"] for c in report["candidates"] if c["measurement"]]
    assert measured and all(m["arch"] == "aarch64" and "EMULATED" in m["emulated"] for m in measured)
    assert report["chosen"] is not None and report["chosen"]["latency_ms"] > 0
