"""The parallel device-phase scheduler (pipeline/search/device_farm.py) decides exactly as one board:
results arriving out of order (random durations) are judged in rate order, cached candidates
never take a board, and k boards really run k measurements at once."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import pytest

from edgeprune.pipeline.search.device_farm import run_in_rate_order


@dataclass(frozen=True)
class Board:
    name: str


def _search(n_boards: int, outcomes: dict, durations: dict, cached: set):
    """Run the scheduler over candidates 0..N-1 (0 = largest rate). outcome 'ok' stops (answer),
    'miss' stops (clear miss), 'near' goes on (a miss within noise)."""
    order = [{"i": i} for i in range(len(outcomes))]
    boards = [Board(f"b{k}") for k in range(n_boards)]
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "measured": [], "on": {}}
    decided, kept, stored = [], [], []

    def measure(board, r):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            state["measured"].append(r["i"])
            state["on"].setdefault(board.name, []).append(r["i"])
        time.sleep(durations[r["i"]])
        with lock:
            state["now"] -= 1
        return outcomes[r["i"]]

    def store(board, r, m):
        assert threading.current_thread() is threading.main_thread()  # cache writes: main thread only
        stored.append(r["i"])
        return m

    def decide(r, entry, was_cached, spent):
        decided.append((r["i"], entry, was_cached))
        return entry == "near"

    run_in_rate_order(order, boards, lookup=lambda r: outcomes[r["i"]] if r["i"] in cached else None,
                      measure=measure, store=store, decide=decide,
                      keep=lambda r, e, s: kept.append(r["i"]), emit=lambda *a, **k: None)
    return decided, kept, state


@pytest.mark.parametrize("seed", range(12))
def test_parallel_decides_like_one_board(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 7)
    outcomes = {i: rng.choice(["near", "near", "ok", "miss"]) for i in range(n)}
    durations = {i: rng.uniform(0.005, 0.05) for i in range(n)}
    cached = {i for i in range(n) if rng.random() < 0.25}
    serial, serial_kept, s1 = _search(1, outcomes, durations, cached)
    assert serial_kept == [] and s1["peak"] <= 1
    for k in (2, 3):
        par, kept, st = _search(k, outcomes, durations, cached)
        assert par == serial  # same candidates decided, same results, in the same (rate) order
        assert not set(st["measured"]) & cached  # a cached candidate never occupies a board
        assert len(st["measured"]) == len(set(st["measured"]))  # nothing measured twice
        last = serial[-1][0] if serial else -1
        assert all(i > last for i in kept)  # kept extras are only smaller rates than the decision
        assert st["peak"] <= k


@pytest.mark.slow
def test_k_boards_measure_k_at_once_and_wall_time_drops():
    outcomes = {i: "near" for i in range(4)}  # nothing stops the search: all 4 are measured
    durations = {i: 0.3 for i in range(4)}
    t0 = time.perf_counter()
    _, _, serial = _search(1, outcomes, durations, set())
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    decided, _, par = _search(2, outcomes, durations, set())
    t_par = time.perf_counter() - t0
    assert [d[0] for d in decided] == [0, 1, 2, 3]
    assert par["peak"] == 2 and sorted(len(v) for v in par["on"].values()) == [2, 2]  # two per board
    assert serial["peak"] == 1
    assert t_serial >= 1.2 and t_par < 0.8 * t_serial  # 4 x 0.3 s one after the other vs two at a time


@pytest.mark.slow
def test_a_failing_board_stops_the_search_after_the_others_finish():
    from edgeprune.errors import DeviceError

    order = [{"i": i} for i in range(4)]
    finished = []

    def measure(board, r):
        if board.name == "bad":
            raise DeviceError("bad: cannot reach the board", "check it")
        time.sleep(0.2)
        finished.append(r["i"])
        return "near"

    with pytest.raises(DeviceError, match="bad: cannot reach"):
        run_in_rate_order(order, [Board("good"), Board("bad")], lookup=lambda r: None, measure=measure,
                          store=lambda b, r, m: m, decide=lambda *a: True, keep=lambda *a: None,
                          emit=lambda *a, **k: None)
    assert finished == [0]  # the running measurement on the good board was allowed to finish


# --------------------------------------------------------------------------- labgrid profiles
LABGRID_PROFILE = """kind: labgrid
labgrid:
  coordinator: 127.0.0.1:{port}
{where}limits: {{flash_bytes: 1MB, ram_bytes: 1MB}}
"""


def _cli(capsys, *argv):
    from edgeprune.cli import run_cli

    code = run_cli(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("where, extra, message", [
    ("  place: a\n  tags: {board: pi4}\n", "", "give exactly one of 'place'"),
    ("", "", "give exactly one of 'place'"),
    ("  place: a\n", "connection: {host: 10.0.0.9}\n", "takes the board's address and port from the place"),
    ("  place: a\n  acquire_timeout_s: -1\n", "", "acquire_timeout_s"),
])
def test_bad_labgrid_profile_exits_2(tmp_path, capsys, where, extra, message):
    prof = tmp_path / "lg.yaml"
    prof.write_text(LABGRID_PROFILE.format(port=20408, where=where) + extra)
    code, err = _cli(capsys, "devices", "check", str(prof))
    assert code == 2, err
    assert message in err and "fix:" in err and "Traceback" not in err


def test_unreachable_coordinator_exits_4(tmp_path, capsys):
    import sshd

    prof = tmp_path / "lg.yaml"
    prof.write_text(LABGRID_PROFILE.format(port=sshd.free_port(), where="  place: a\n"))
    code, err = _cli(capsys, "devices", "check", str(prof))
    assert code == 4, err
    assert "cannot reach the labgrid coordinator at 127.0.0.1:" in err and "fix:" in err
    assert "Traceback" not in err and "ERROR:root" not in err


def test_host_options_with_several_devices_exit_2(tmp_path, capsys):
    code, err = _cli(capsys, "run", "--device", "pi4", "--device", "pi5", "--host", "10.0.0.2", "--out", str(tmp_path / "r"))
    assert code == 2, err
    assert "several --device" in err


def test_look_ahead_is_at_most_k_past_the_decision():
    # the top candidate is slow and meets every budget; the others are quick: with 2 boards only
    # the top two are ever measured (the quick board waits instead of racing ahead)
    outcomes = {0: "ok", 1: "near", 2: "near", 3: "near", 4: "near"}
    durations = {0: 0.4, 1: 0.01, 2: 0.01, 3: 0.01, 4: 0.01}
    decided, kept, st = _search(2, outcomes, durations, set())
    assert [d[0] for d in decided] == [0]
    assert sorted(st["measured"]) == [0, 1] and kept == [1]
    # 3 boards: the top three
    decided, kept, st = _search(3, outcomes, durations, set())
    assert sorted(st["measured"]) == [0, 1, 2] and sorted(kept) == [1, 2]
