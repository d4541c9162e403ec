"""The SSH backend against a REAL OpenSSH sshd on 127.0.0.1 (tests/sshd.py starts it)."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import pytest

import sshd as sshd_helper
from ci_guard import skip_or_fail
from edgeprune.cli import run_cli
from edgeprune.devices.base import BenchConfig, check_device, measure
from edgeprune.devices.profile import load_profile
from edgeprune.errors import BadInput, DeviceError

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
VENVS = Path(os.environ.get("EDGEPRUNE_VENVS", "/opt/edgeprune-venvs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from sshd_helper.serve(tmp_path_factory, "sshd")


@pytest.fixture
def board(server, tmp_path):
    """A kind: ssh profile (path) for the loopback server, with an empty remote tmp."""
    for p in server.remote_tmp.iterdir():
        shutil.rmtree(p, ignore_errors=True)
    return server.profile_yaml(tmp_path / "board.yaml")


def _leftovers(server):
    return sorted(p.name for p in server.remote_tmp.iterdir())


def test_bench_over_ssh(server, board, device_models):
    t0 = time.perf_counter()
    m = measure(load_profile(board), device_models["small"], BenchConfig(runs=20, warmup=3))
    took = time.perf_counter() - t0
    assert m.kind == "ssh" and m.runtime == "ai_edge_litert" and m.measured["latency"]
    assert m.latency_ms.median > 0 and m.peak_rss_bytes > 0 and m.runs >= 20
    assert _leftovers(server) == []  # work dir removed
    print(f"SSH measurement took {took:.2f} s")


def test_cli_bench_and_check_over_ssh(server, board, device_models, capsys):
    assert run_cli(["bench", str(device_models["small"]), "--device", str(board), "--runs", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "ssh" and d["runs"] >= 5
    assert run_cli(["devices", "check", str(board)]) == 0
    out = capsys.readouterr().out
    assert "ai_edge_litert" in out and "disk free" in out
    info = check_device(load_profile(board))
    assert info["runtime"] == "ai_edge_litert" and info["disk_free_bytes"] > 0 and info["memory"]["MemAvailable"] > 0
    assert _leftovers(server) == []


def test_changed_host_key_refused(server, tmp_path, device_models, capsys):
    prof = server.profile_yaml(tmp_path / "b.yaml", known_hosts=server.wrong_known_hosts)
    with pytest.raises(DeviceError) as exc:
        measure(load_profile(prof), device_models["small"], BenchConfig(runs=2))
    assert "CHANGED" in exc.value.message and "ssh-keygen -R" in exc.value.hint
    # even with trust_new_host a changed key is refused
    prof2 = server.profile_yaml(tmp_path / "b2.yaml", known_hosts=server.wrong_known_hosts, trust_new_host=True)
    with pytest.raises(DeviceError):
        measure(load_profile(prof2), device_models["small"], BenchConfig(runs=2))
    assert run_cli(["bench", str(device_models["small"]), "--device", str(prof), "--runs", "2"]) == 4
    assert "CHANGED" in capsys.readouterr().err


def test_unknown_host_refused_unless_trusted(server, tmp_path, device_models):
    kh = tmp_path / "kh_empty"
    kh.write_text("")
    prof = server.profile_yaml(tmp_path / "b.yaml", known_hosts=kh)
    with pytest.raises(DeviceError) as exc:
        measure(load_profile(prof), device_models["small"], BenchConfig(runs=2))
    assert "unknown" in exc.value.message and "ssh-keyscan" in exc.value.hint
    assert run_cli(["bench", str(device_models["small"]), "-d", str(prof), "--runs", "2", "--trust-new-host"]) == 0
    assert str(server.port) in kh.read_text()  # recorded
    m = measure(load_profile(prof), device_models["small"], BenchConfig(runs=2))  # now known: works without opt-in
    assert m.runs >= 2


def test_failed_login_reported(server, tmp_path, device_models, capsys):
    prof = server.profile_yaml(tmp_path / "b.yaml", key_file=server.wrong_key)
    with pytest.raises(DeviceError) as exc:
        measure(load_profile(prof), device_models["small"], BenchConfig(runs=2))
    assert "authentication failed" in exc.value.message and "authorized_keys" in exc.value.hint
    key_text = server.wrong_key.read_text()
    assert key_text.splitlines()[1] not in str(exc.value)  # no key material in messages
    assert run_cli(["devices", "check", str(prof)]) == 4


def test_unreachable_port(server, tmp_path, device_models, capsys):
    prof = server.profile_yaml(tmp_path / "b.yaml")
    t0 = time.perf_counter()
    assert run_cli(["bench", str(device_models["small"]), "-d", str(prof), "--port", str(sshd_helper.free_port())]) == 4
    assert "cannot reach" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # retried with backoff, but bounded


def test_workdir_removed_after_failure(server, board, tmp_path):
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\0\0\0\0TFL3" + b"\x07" * 300)
    with pytest.raises((BadInput, DeviceError)):
        measure(load_profile(board), corrupt, BenchConfig(runs=2))
    assert _leftovers(server) == []


def test_timeout_kills_and_cleans(server, board, device_models):
    with pytest.raises(DeviceError) as exc:
        measure(load_profile(board), device_models["big"], BenchConfig(runs=100000, warmup=0, timeout=2))
    assert "did not finish" in exc.value.message
    assert _leftovers(server) == []


def test_weird_model_path(server, board, device_models, tmp_path):
    weird_dir = tmp_path / "dir with space; $(touch PWNED) `x`"
    weird_dir.mkdir()
    weird = weird_dir / "we ird $(x) ;&'\".tflite"
    shutil.copy(device_models["small"], weird)
    m = measure(load_profile(board), weird, BenchConfig(runs=3))
    assert m.runs >= 3 and m.model_bytes == weird.stat().st_size
    assert not Path("PWNED").exists() and not (server.remote_tmp / "PWNED").exists()
    assert _leftovers(server) == []


def test_remote_tmp_with_metacharacters(server, tmp_path, device_models):
    odd = server.root / "remote tmp $(touch PWNED2) ;&"
    odd.mkdir(exist_ok=True)
    prof = server.profile_yaml(tmp_path / "b.yaml")
    prof.write_text(prof.read_text().replace(f"remote_tmp: {server.remote_tmp}", f"remote_tmp: '{odd}'"))
    m = measure(load_profile(prof), device_models["small"], BenchConfig(runs=2))
    assert m.runs >= 2 and list(odd.iterdir()) == [] and not (server.root / "PWNED2").exists()


@pytest.mark.parametrize("venv,runtime", [("tflite-runtime", "tflite_runtime"), ("litert", "ai_edge_litert")])
def test_ssh_board_runtimes(server, tmp_path, device_models, venv, runtime):
    py = VENVS / venv / "bin" / "python"
    if not py.exists():
        skip_or_fail(f"{py} missing (bash .ci/board-venvs.sh; .ci/setup runs it)")
    prof = server.profile_yaml(tmp_path / "b.yaml", python=str(py))
    m = measure(load_profile(prof), device_models["small"], BenchConfig(runs=5))
    assert m.runtime == runtime and m.runtime_version


def test_no_runtime_on_board(server, tmp_path, device_models, capsys):
    py = VENVS / "tflite-runtime" / "bin" / "python"
    if not py.exists():
        skip_or_fail(f"{py} missing (bash .ci/board-venvs.sh; .ci/setup runs it)")
    prof = server.profile_yaml(tmp_path / "b.yaml", python=str(py), extra_runtime="  accept: [ai_edge_litert]\n")
    assert run_cli(["bench", str(device_models["small"]), "-d", str(prof), "--runs", "2"]) == 4
    err = capsys.readouterr().err
    assert "no TFLite runtime on the board" in err and "pip install" in err
    assert run_cli(["devices", "check", str(prof)]) == 4


def test_local_and_ssh_agree(server, board, device_models):
    """Medians within 25% on the same machine (interleaved, best of 3 pairs, to ride out load from others)."""
    cfg = BenchConfig(runs=40, warmup=5, threads=1)
    local, remote = [], []
    for _ in range(3):
        local.append(measure("local", device_models["big"], cfg).latency_ms.median)
        remote.append(measure(load_profile(board), device_models["big"], cfg).latency_ms.median)
        ratios = [r / l for l, r in zip(local, remote)]
        if any(0.75 <= x <= 1.25 for x in ratios):
            break
    lm, rm = statistics.median(local), statistics.median(remote)
    print(f"local median {lm:.3f} ms, ssh median {rm:.3f} ms (pairs: {list(zip(local, remote))})")
    assert lm > 1.0  # per-run time dominates timer noise
    assert any(0.75 <= x <= 1.25 for x in ratios), (local, remote)


def test_ssh_config_alias(server, tmp_path, device_models):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host myboard\n  HostName 127.0.0.1\n  Port {server.port}\n  User {server.user}\n"
                   f"  IdentityFile {server.user_key}\n  UserKnownHostsFile {server.known_hosts}\n")
    prof = tmp_path / "alias.yaml"
    prof.write_text(f"kind: ssh\nconnection: {{ssh_config_alias: myboard, ssh_config_file: {cfg}, allow_agent: false, "
                    f"look_for_keys: false}}\nruntime: {{python: {sys.executable}, remote_tmp: {server.remote_tmp}}}\n"
                    "threads: 1\nlimits: {flash_bytes: 1MB, ram_bytes: 1GB}\n")
    m = measure(load_profile(prof), device_models["small"], BenchConfig(runs=2))
    assert m.runs >= 2 and _leftovers(server) == []


def test_cli_inputs_npy_checksum(server, board, device_models, tmp_path, capsys):
    import numpy as np

    x = tmp_path / "x.npy"
    np.save(x, np.full((1, 64, 64, 3), 0.5, np.float32))
    sums = []
    for dev in ("local", str(board)):
        assert run_cli(["bench", str(device_models["small"]), "-d", dev, "--runs", "2", "--inputs", str(x), "--json"]) == 0
        sums.append(json.loads(capsys.readouterr().out)["output_checksum"])
    assert sums[0] == sums[1]  # same runtime, same inputs: same outputs on both backends


def test_disk_full_reported(server, tmp_path, device_models):
    """remote_tmp on a 64 KiB tmpfs: the board runner alone fits, the model does not."""
    import subprocess

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        big = tmp_path / "big.tflite"
        shutil.copy(device_models["small"], big)
        with open(big, "ab") as f:
            f.write(b"\0" * 200_000)  # padding after the flatbuffer: still loads, but does not fit
        prof = server.profile_yaml(tmp_path / "b.yaml")
        prof.write_text(prof.read_text().replace(f"remote_tmp: {server.remote_tmp}", f"remote_tmp: {tiny}"))
        with pytest.raises(DeviceError) as exc:
            measure(load_profile(prof), big, BenchConfig(runs=2))
        assert "disk is full" in exc.value.message and "free space" in exc.value.hint
        assert list(tiny.iterdir()) == []  # work dir removed
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)
