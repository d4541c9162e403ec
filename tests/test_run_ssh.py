"""``edgeprune run`` over SSH against a real loopback OpenSSH sshd (tests/sshd.py): the device
runs are counted, cached by sha256 across invocations, and an unreachable board exits 4."""
from __future__ import annotations

import json

import pytest

import sshd
from edgeprune.cli import run_cli

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from sshd.serve(tmp_path_factory, "run-sshd")


def _run(capsys, argv):
    code = run_cli(["run", *argv, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip().startswith("{") else None), cap.err


def test_run_over_ssh_counts_device_runs(server, tmp_path, capsys):
    prof = server.profile_yaml(tmp_path / "board.yaml", name="board")
    out = tmp_path / "run"
    args = ["--device", str(prof), "--out", str(out), "--step", "0.1", "--max-rate", "0.3", "--min-fidelity", "0.9",
            "--runs", "3", "--warmup", "1", "--no-screen"]  # every candidate converted: all of them host-passing
    code, rep, err = _run(capsys, args)
    assert code == 0, err
    assert rep["device"]["kind"] == "ssh" and rep["device"]["host"] == "127.0.0.1"
    assert rep["device"]["latency"] == "measured on the device"
    host_pass = [c for c in rep["candidates"] if c["checks"]["fidelity"]["ok"] and c["checks"]["flash"]["ok"]]
    assert len(host_pass) >= 2
    # only the largest host-passing rate is measured: it meets the profile's RAM budget
    assert rep["device_runs"]["made"] == 1 and rep["device_runs"]["cached"] == 0
    measured = [c for c in rep["candidates"] if c["measurement"]]
    assert [c["rate"] for c in measured] == [max(c["rate"] for c in host_pass)] == [rep["chosen"]["rate"]]
    m = measured[0]["measurement"]
    assert m["runs"] >= 3 and m["latency_ms"]["median"] > 0 and m["sha256"] == measured[0]["sha256"]
    assert m["device"] == "board"
    text = (out / "report.json").read_text() + (out / "report.md").read_text()
    assert str(server.user_key) not in text and "PRIVATE KEY" not in text  # no key material or key paths
    assert not any(server.remote_tmp.iterdir())  # the board's work dirs are removed

    # again, resumed, measuring every host-passing candidate: the one measured before comes from
    # the sha256 cache, the others are new device runs
    code, rep2, err = _run(capsys, [*args, "--resume", "--measure-all"])
    assert code == 0, err
    assert rep2["device_runs"]["cached"] == 1
    assert rep2["device_runs"]["made"] == len(host_pass) - 1
    passing = {c["index"] for c in host_pass}
    assert all(bool(c["measurement"]) == (c["index"] in passing) for c in rep2["candidates"])
    assert rep2["chosen"]["rate"] == rep["chosen"]["rate"]
    cache = json.loads((out / "measurements.json").read_text())
    assert len(cache) == len(host_pass)


def test_unreachable_board_exits_4(server, tmp_path, capsys):
    prof = server.profile_yaml(tmp_path / "gone.yaml", name="gone", retries=1)
    text = prof.read_text().replace(f"port: {server.port}", f"port: {sshd.free_port()}")
    prof.write_text(text)
    code, rep, err = _run(capsys, ["--device", str(prof), "--out", str(tmp_path / "run")])
    assert code == 4, err
    assert "gone" in err and "Traceback" not in err
