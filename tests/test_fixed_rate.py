"""``edgeprune run --rate R`` (issue 23): the fixed-rate path. Only the given rates are built,
judged, measured and gated; the candidate is the one the search builds at that rate (same
.tflite bytes), and plans are reused across runs by content (pipeline/search/work_cache.py).
Real runs of the bundled example (data-free engine for speed)."""
from __future__ import annotations

import json

import pytest

from edgeprune.cli import run_cli

ENGINE = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]
FAST = ["--step", "0.1", "--max-rate", "0.9", "--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0"]


def _run(capsys, argv):
    code = run_cli(["run", *argv, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip().startswith("{") else None), cap.err


def _by_rate(rep):
    return {round(c["rate"], 6): c for c in rep["candidates"]}


def test_rate_gives_the_search_candidate_and_reuses_its_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    code, a, err = _run(capsys, ["--out", str(tmp_path / "search"), *ENGINE, *FAST])
    assert code == 0, err
    pick = round(a["chosen"]["rate"], 6)
    assert pick > 0 and len(a["candidates"]) > 3
    plans = sorted((tmp_path / "cache" / "plans").glob("*.plan.json"))
    assert len(plans) == len([c for c in a["candidates"] if c["files"].get("plan")])

    # no cache: the schedule is walked without building candidates; the same bytes
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "empty"))
    code, b, err = _run(capsys, ["--out", str(tmp_path / "fresh"), *ENGINE, *FAST, "--rate", str(pick)])
    assert code == 0, err
    assert [round(c["rate"], 6) for c in b["candidates"]] == [0.0, pick]
    assert b["settings"]["rates"] == [pick] and b["stop"]["reason"] == "rates"
    assert b["chosen"]["rate"] == pytest.approx(pick)
    assert _by_rate(b)[pick]["sha256"] == _by_rate(a)[pick]["sha256"]
    assert any("0 plan(s) replayed" in n for n in b["notes"])

    # the search's cache: the plan is replayed, the same bytes again
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    code, c, err = _run(capsys, ["--out", str(tmp_path / "cached"), *ENGINE, *FAST, "--rate", str(pick)])
    assert code == 0, err
    assert _by_rate(c)[pick]["sha256"] == _by_rate(a)[pick]["sha256"]
    assert any("1 plan(s) replayed" in n for n in c["notes"])


def test_every_given_rate_is_judged_and_the_largest_passing_is_chosen(tmp_path, capsys):
    code, r, err = _run(capsys, ["--out", str(tmp_path / "r"), *ENGINE, *FAST, "--rate", "0.9", "--rate", "0.1",
                                 "--min-fidelity", "0.95"])
    assert r is not None, err
    rates = [round(c["rate"], 6) for c in r["candidates"]]
    assert rates == [0.0, 0.1, 0.9]  # ascending, and 0.9 judged although it is past a fidelity stop
    ok = {round(c["rate"], 6): c["checks"]["fidelity"]["ok"] for c in r["candidates"]}
    assert ok[0.1] is True and ok[0.9] is False  # the data-free engine: 0.965 at 0.1, about 0.23 at 0.9
    assert code == 0 and r["chosen"]["rate"] == pytest.approx(0.1)
    assert r["stop"] == {"reason": "rates", "rate": 0.9}


@pytest.mark.parametrize("argv, what", [
    (["--rate", "0.95"], "--rate 0.95 must be in (0, --max-rate 0.9]"),
    (["--rate", "0"], "--rate 0 must be in (0, --max-rate 0.9]"),
])
def test_bad_rate_is_refused_with_error_and_fix(tmp_path, capsys, argv, what):
    code = run_cli(["run", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.lstrip().startswith("error:") and what in " ".join(err.split()), err
    assert "fix:" in err and "Traceback" not in err and not (tmp_path / "r").exists()
