"""Board farms: labgrid places as devices (a real labgrid-coordinator + exporter on 127.0.0.1
and two loopback OpenSSH boards, tests/labgrid_farm.py), parallel device phase, board locks.

Which board runs overlapped is read from the boards' own log (the runtime.python wrapper logs
start/end around the real board runner), not inferred from edgeprune's output."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import labgrid_farm
import sshd
from ci_guard import skip_or_fail
from labgrid_farm import edgeprune, overlaps, read_runs

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

why_not = labgrid_farm.available()


def _need():
    skip_or_fail(why_not)  # .ci/setup installs sshd and labgrid: missing in CI is a defect


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    _need()
    f = labgrid_farm.Farm.start(tmp_path_factory.mktemp("farm"), prefix="ep", hold_s=1.0)
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def clean(farm):
    """Every test starts on a farm it has checked is clean (no runner process, work dir or board
    lock on either board, both places free) with an empty run log, and must leave it so: what a
    test leaves fails that test (and is cleaned up, so the next one is not blamed)."""
    before = farm.scrub()
    farm.runs_log.write_text("")
    if before:
        pytest.fail(f"the farm was not clean before this test (left by an earlier one): {before}")
    yield farm
    after = farm.scrub()
    assert not after, f"this test left on the boards: {after}"


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# --------------------------------------------------------------------------- labgrid places
def test_two_benches_on_one_place_serialize(clean, device_models, tmp_path):
    farm = clean
    prof = farm.profile_yaml(tmp_path / "pa.yaml", place="ep-a")
    model = str(device_models["small"])
    procs = [edgeprune("bench", model, "--device", str(prof), "--runs", "20", "--min-secs", "0", "--warmup-min-secs", "0", "--warmup", "1", "--json")
             for _ in range(2)]
    results = [_finish(p) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        m = json.loads(out)
        assert m["kind"] == "labgrid" and m["device"] == "pa@ep-a"
        assert m["extra"]["labgrid"]["place"] == "ep-a"
        assert m["extra"]["labgrid"]["port"] == farm.boards[0].port  # the endpoint came from the NetworkService
        assert m["runs"] == 20 and m["latency_ms"]["median"] > 0
    runs = read_runs(farm.runs_log)
    assert len(runs) == 2 and {r[0] for r in runs} == {str(farm.board_tmp(0))}  # both on board 0 (place ep-a)
    assert not overlaps(runs), runs  # never at once on one board
    waited = [err for _, _, err in results if "busy" in err]
    assert len(waited) == 1 and "waiting up to 120 s" in waited[0] and "ep-a by " in waited[0]
    assert farm.holder("ep-a") is None  # released


def test_place_held_by_someone_else_waits_then_exit_4(clean, device_models, tmp_path):
    farm = clean
    farm.client("-p", "ep-b", "acquire")
    holder = farm.holder("ep-b")
    assert holder
    prof = farm.profile_yaml(tmp_path / "pb.yaml", place="ep-b", acquire_timeout_s=2)
    t0 = time.monotonic()
    code, out, err = _finish(edgeprune("bench", str(device_models["small"]), "--device", str(prof), "--runs", "3", "--min-secs", "0", "--warmup-min-secs", "0"))
    took = time.monotonic() - t0
    assert code == 4, err
    assert f"ep-b by {holder}" in err and "waiting up to 2 s" in err  # the visible wait message
    assert "still busy after waiting" in err and "release --kick" in err and "Traceback" not in err
    assert took >= 2.0
    assert read_runs(farm.runs_log) == []  # nothing ran on the board
    assert farm.holder("ep-b") == holder  # someone else's place is left alone
    farm.client("-p", "ep-b", "release")


def test_place_host_key_is_verified(clean, device_models, tmp_path):
    farm = clean
    prof = farm.profile_yaml(tmp_path / "pa.yaml", place="ep-a")
    prof.write_text(prof.read_text().replace(str(farm.known_hosts), str(farm.boards[0].wrong_known_hosts)))
    code, out, err = _finish(edgeprune("bench", str(device_models["small"]), "--device", str(prof), "--runs", "3", "--min-secs", "0", "--warmup-min-secs", "0"))
    assert code == 4, err
    assert "host key" in err and "CHANGED" in err
    assert farm.holder("ep-a") is None  # released after the failure


# --------------------------------------------------------------------------- interrupts (issue 20)
LONG = ["--runs", "100000", "--min-secs", "30", "--max-secs", "60", "--warmup", "1", "--warmup-min-secs", "0"]
FAST_ENGINE = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]


def _log(farm) -> str:
    return farm.runs_log.read_text() if farm.runs_log.exists() else ""


def _runners(farm) -> list[str]:
    return [p for p in labgrid_farm.board_processes(farm.board_dirs()) if "board_runner.py" in p and " --check" not in p]


def _wait(proc, what, pred, timeout=600):
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"edgeprune ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


def _at_moment(farm, proc, moment: str, boards: int = 1) -> None:
    """Wait for the moment to interrupt at: ``workdir`` (a session made its work dir; the runner
    may not have started), ``hold`` (the board's wrapper started, the board runner not yet),
    ``runner`` (the Python board runner has run for 1.5 s: importing or timing inferences)."""
    if moment == "workdir":
        _wait(proc, "a work dir on the board", lambda: any(list(d.glob("edgeprune.*")) for d in farm.board_dirs()))
    elif moment == "hold":
        _wait(proc, "the wrapper's start", lambda: _log(farm).count("start") >= boards)
    else:
        _wait(proc, "the board runner", lambda: len(_runners(farm)) >= boards)
        time.sleep(1.5)
        assert len(_runners(farm)) >= boards


def _assert_ended_before_release(farm, code, err, sig, started_max=None):
    """Right at edgeprune's exit: nothing of the run is left on any board; every wrapper that
    started was ended by TERM (no ``end``) and was gone while the board lock was still held."""
    assert code == (143 if sig == signal.SIGTERM else 130), err
    assert "Traceback" not in err, err
    left = farm.leftovers()
    assert not left, f"left on the boards at exit: {left}"
    events = labgrid_farm.read_log(farm.runs_log)
    starts = [e for e in events if e[0] == "start"]
    deads = [e for e in events if e[0] == "dead"]
    terms = [e for e in events if e[0] == "term"]
    assert not [e for e in events if e[0] == "end"], events  # no interrupted run went on to its end
    assert len(terms) >= len(starts), events  # every started wrapper was ended by edgeprune's TERM
    # ... and was gone (its trap takes 1.5 s) while the board lock was still held. A trap that
    # outlasts the cleanup's TERM wait (5 s: only on a very loaded machine) is ended by KILL
    # before it logs ``dead``; nothing of it may be left either way (above).
    assert len(deads) <= len(starts), events
    assert all(e[3] == "lock=yes" for e in deads), events
    if started_max is not None:
        assert len(starts) <= started_max
    for place in farm.places():
        assert farm.holder(place) is None  # released (after the above, by construction of close())
    time.sleep(2.0)  # nothing comes back to life: no late start, no late end
    assert labgrid_farm.read_log(farm.runs_log) == events
    assert not farm.leftovers()
    labgrid_farm.read_runs(farm.runs_log, interrupted=len(deads), unlogged=len(starts) - len(deads))


@pytest.mark.slow
@pytest.mark.parametrize("moment,sig", [("workdir", signal.SIGINT), ("hold", signal.SIGINT),
                                        ("runner", signal.SIGINT), ("runner", signal.SIGTERM)])
def test_interrupt_bench_on_a_place(clean, device_models, tmp_path, moment, sig):
    """Ctrl-C (or a CI runner's SIGTERM) of `bench` on a labgrid place at several moments: the
    board's wrapper and runner are ended and waited for BEFORE the lock and place go."""
    farm = clean
    prof = farm.profile_yaml(tmp_path / "pa.yaml", place="ep-a")
    p = edgeprune("bench", str(device_models["small"]), "--device", str(prof), *LONG)
    _at_moment(farm, p, moment)
    assert farm.holder("ep-a")  # held while measuring
    p.send_signal(sig)
    code, out, err = _finish(p, timeout=120)
    _assert_ended_before_release(farm, code, err, sig, started_max=1)
    if moment in ("hold", "runner"):
        assert _log(farm).count("dead") == 1


@pytest.mark.slow
def test_interrupt_bench_on_an_ssh_board(clean, board, device_models, tmp_path):
    """The same on a plain SSH board (board lock, no labgrid): the wrapper did not outlive exit 130."""
    farm = clean
    prof = _ssh_profile(farm, board, tmp_path / "b.yaml")
    p = edgeprune("bench", str(device_models["small"]), "--device", str(prof), *LONG)
    _at_moment(farm, p, "runner")
    p.send_signal(signal.SIGINT)
    code, out, err = _finish(p, timeout=120)
    _assert_ended_before_release(farm, code, err, signal.SIGINT, started_max=1)
    assert _log(farm).count("dead") == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_run_on_one_place(clean, tmp_path, sig):
    """`run`'s serial device phase interrupted while the board measures."""
    farm = clean
    prof = farm.profile_yaml(tmp_path / "pa.yaml", place="ep-a")
    p = edgeprune("run", "--device", str(prof), "--out", str(tmp_path / "run"), "--step", "0.1", "--max-rate", "0.2",
                  "--min-fidelity", "0.5", *FAST_ENGINE, *LONG)
    _at_moment(farm, p, "runner")
    p.send_signal(sig)
    code, out, err = _finish(p, timeout=180)
    _assert_ended_before_release(farm, code, err, sig, started_max=1)
    assert _log(farm).count("dead") == 1


def test_run_with_two_places_measures_in_parallel(clean, tmp_path):
    farm = clean
    prof = farm.profile_yaml(tmp_path / "farm.yaml", tags=True, name="farm")
    out = tmp_path / "run"
    # every board run holds 8 s: the two boards' runs must overlap although, on a loaded machine, the
    # second board's run started up to ~5 s after the first (SSH and upload in the other thread)
    farm.hold_file.write_text("8")
    try:
        code, stdout, err = _finish(edgeprune(
            "run", "--device", str(prof), "--out", str(out), "--step", "0.1", "--max-rate", "0.3", "--min-fidelity",
            "0.9", "--runs", "5", "--min-secs", "0", "--warmup-min-secs", "0", "--warmup", "1", "--measure-all", "--json"),
            timeout=900)
    finally:
        farm.hold_file.unlink(missing_ok=True)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["device"]["kind"] == "labgrid"
    assert sorted(rep["device"]["boards"]) == ["farm@ep-a", "farm@ep-b"]
    assert "in parallel (2: " in rep["strategy"]
    host_pass = [c for c in rep["candidates"] if c["checks"]["fidelity"]["ok"] and c["checks"]["flash"]["ok"]]
    assert len(host_pass) >= 3
    measured = [c for c in rep["candidates"] if c["measurement"]]
    assert {c["index"] for c in measured} == {c["index"] for c in host_pass}
    assert rep["device_runs"]["made"] == len(host_pass)
    by_board = {c["measurement"]["labgrid"]["place"] for c in measured}
    assert by_board == {"ep-a", "ep-b"}  # both boards measured
    runs = read_runs(farm.runs_log)
    assert len(runs) == len(host_pass)
    assert overlaps(runs) and len({r[0] for r in runs}) == 2  # runs on the two boards overlapped in time
    cache = json.loads((out / "measurements.json").read_text())
    assert len(cache) == len(host_pass) and {e["sha256"] for e in cache.values()} == {c["sha256"] for c in host_pass}
    assert rep["chosen"]["rate"] == max(c["rate"] for c in host_pass)
    assert farm.holder("ep-a") is None and farm.holder("ep-b") is None

    # resumed without --measure-all: the answer comes from the cache, whichever board measured it
    code, stdout, err = _finish(edgeprune(
        "run", "--device", str(prof), "--out", str(out), "--step", "0.1", "--max-rate", "0.3", "--min-fidelity", "0.9",
        "--runs", "5", "--min-secs", "0", "--warmup-min-secs", "0", "--warmup", "1", "--resume", "--json"), timeout=900)
    assert code == 0, err
    rep2 = json.loads(stdout)
    assert rep2["device_runs"]["made"] == 0 and rep2["device_runs"]["cached"] == 1
    assert rep2["chosen"]["rate"] == rep["chosen"]["rate"]


# --------------------------------------------------------------------------- plain SSH board lock
@pytest.fixture(scope="module")
def board(farm):
    return farm.boards[1]


def _ssh_profile(farm, srv, path, *, wait=120):
    prof = srv.profile_yaml(path, name="lockboard", python=str(farm.runner))
    prof.write_text(prof.read_text().replace("  retries: 2\n", f"  retries: 2\n  lock_wait_s: {wait}\n"))
    return prof


def test_ssh_lock_two_benches_serialize(clean, board, device_models, tmp_path):
    farm = clean
    prof = _ssh_profile(farm, board, tmp_path / "b.yaml")
    procs = [edgeprune("bench", str(device_models["small"]), "--device", str(prof), "--runs", "20", "--min-secs", "0", "--warmup-min-secs", "0", "--json")
             for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    runs = read_runs(farm.runs_log)
    assert len(runs) == 2 and not overlaps(runs), runs
    waited = [err for _, _, err in results if "the board is busy" in err]
    assert len(waited) == 1 and "lock held by" in waited[0] and "waiting up to 120 s" in waited[0]
    assert not (board.remote_tmp / "edgeprune-board.lock").exists()


def test_ssh_lock_busy_times_out_exit_4(clean, board, device_models, tmp_path):
    farm = clean
    lock = board.remote_tmp / "edgeprune-board.lock"
    lock.write_text("ci@other-host pid 4242 token 0123456789abcdef\n")
    try:
        prof = _ssh_profile(farm, board, tmp_path / "b.yaml", wait=2)
        code, out, err = _finish(edgeprune("bench", str(device_models["small"]), "--device", str(prof), "--runs", "3", "--min-secs", "0", "--warmup-min-secs", "0"))
        assert code == 4, err
        assert "lock held by ci@other-host pid 4242" in err and "waiting up to 2 s" in err
        assert "still locked by ci@other-host" in err and "Traceback" not in err
        assert lock.read_text().startswith("ci@other-host")  # a fresh lock of another run is never broken
        assert read_runs(farm.runs_log) == []
    finally:
        lock.unlink()


def test_ssh_stale_lock_is_broken(clean, board, device_models, tmp_path):
    farm = clean
    lock = board.remote_tmp / "edgeprune-board.lock"
    lock.write_text("ci@gone-host pid 99 token feedfacefeedface\n")
    old = time.time() - 7200  # older than the default stale age (2 x run_timeout_s + 300 = 900 s)
    os.utime(lock, (old, old))
    prof = _ssh_profile(farm, board, tmp_path / "b.yaml", wait=5)
    code, out, err = _finish(edgeprune("bench", str(device_models["small"]), "--device", str(prof), "--runs", "3", "--min-secs", "0", "--warmup-min-secs", "0"))
    assert code == 0, err
    assert "broke a stale board lock" in err and "ci@gone-host pid 99" in err
    assert len(read_runs(farm.runs_log)) == 1
    assert not lock.exists()  # ours removed afterwards


def test_run_with_two_ssh_profiles_rejects_different_boards(clean, board, tmp_path):
    farm = clean
    a = _ssh_profile(farm, farm.boards[0], tmp_path / "a.yaml")
    b = _ssh_profile(farm, board, tmp_path / "b.yaml")
    b.write_text(b.read_text().replace("ram_bytes: 2GiB", "ram_bytes: 1GiB"))
    code, out, err = _finish(edgeprune("run", "--device", str(a), "--device", str(b), "--out", str(tmp_path / "r")))
    assert code == 2, err
    assert "differ in limits" in err and "Traceback" not in err


def test_run_with_two_ssh_profiles_stops_like_one_board(clean, tmp_path):
    """`--device a --device b`: the top two candidates are measured at once; the largest rate
    meets every budget, so it is the answer, and the second measurement changes nothing."""
    farm = clean
    a = _ssh_profile(farm, farm.boards[0], tmp_path / "pi-a.yaml")
    b = _ssh_profile(farm, farm.boards[1], tmp_path / "pi-b.yaml")
    b.write_text(b.read_text().replace(str(farm.boards[1].user_key), str(farm.boards[0].user_key)))
    out = tmp_path / "run"
    code, stdout, err = _finish(edgeprune(
        "run", "--device", str(a), "--device", str(b), "--out", str(out), "--step", "0.1", "--max-rate", "0.3", "--no-screen",
        "--min-fidelity", "0.9", "--runs", "5", "--min-secs", "0", "--warmup-min-secs", "0", "--warmup", "1", "--json"), timeout=900)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["device"]["boards"] == ["pi-a", "pi-b"]
    host_pass = sorted((c for c in rep["candidates"] if c["checks"]["fidelity"]["ok"] and c["checks"]["flash"]["ok"]),
                       key=lambda c: -c["rate"])
    assert rep["chosen"]["rate"] == host_pass[0]["rate"]  # the answer one board gives
    measured = sorted((c for c in rep["candidates"] if c["measurement"]), key=lambda c: -c["rate"])
    assert [c["index"] for c in measured] == [c["index"] for c in host_pass[:2]]  # top-2 at once, no more
    assert {c["measurement"]["device"] for c in measured} == {"pi-a", "pi-b"}
    assert rep["device_runs"]["made"] == 2
    assert any("measured on a parallel board" in n for n in rep["notes"])
    for c in host_pass[2:]:
        assert c["not_measured"].startswith(f"not measured: rate {host_pass[0]['rate']:.2f} (a larger rate) already meets")
    runs = read_runs(farm.runs_log)
    assert len(runs) == 2 and overlaps(runs) and len({r[0] for r in runs}) == 2


@pytest.mark.slow
def test_ctrl_c_in_a_parallel_run_releases_both_places(clean, tmp_path):
    """Ctrl-C while both places measure (parallel device phase): both boards' runners are ended
    and waited for, then both work dirs, locks and places go."""
    farm = clean
    prof = farm.profile_yaml(tmp_path / "farm.yaml", tags=True)
    p = edgeprune("run", "--device", str(prof), "--out", str(tmp_path / "run"), "--step", "0.1", "--max-rate", "0.3",
                  "--min-fidelity", "0.5", *FAST_ENGINE, *LONG, "--measure-all")
    _at_moment(farm, p, "runner", boards=2)
    assert farm.holder("ep-a") and farm.holder("ep-b")  # both boards busy for this run
    p.send_signal(signal.SIGINT)
    code, out, err = _finish(p, timeout=180)
    _assert_ended_before_release(farm, code, err, signal.SIGINT, started_max=2)
    assert _log(farm).count("dead") == 2
