"""Noise-aware latency decisions: the budget on a stated statistic, one re-measurement when the
budget lies within the spread, 'within noise' when it still does, and the busy-board warning."""
from __future__ import annotations

import json

import pytest

from edgeprune.cli import run_cli
from edgeprune.pipeline.search.noise import band, latency_check, load_warning, straddles

M = {"latency_ms": {"median": 10.0, "p50": 10.0, "p90": 12.0, "p99": 20.0, "iqr": 1.0}, "latency_is_estimate": False}


def test_band_and_checks_on_the_stated_statistic():
    assert band(M, "p50") == (10.0, 9.5, 10.5) and band(M, "p90") == (12.0, 11.5, 12.5)
    assert straddles(M, "p50", 10.2) and straddles(M, "p50", 9.5) and not straddles(M, "p50", 10.6)
    assert not straddles(M, "p50", None)
    ck = latency_check(M, "p50", 11.0)
    assert ck["ok"] and ck["value"] == 10.0 and ck["spread_ms"] == 1.0 and "within_noise" not in ck
    assert not latency_check(M, "p90", 11.0)["ok"]  # the p90 is over: stated statistic decides
    first = latency_check(M, "p50", 10.2)  # inside the band, before the re-measurement: plain comparison
    assert first["ok"] and "within_noise" not in first
    second = latency_check(M, "p50", 10.2, remeasured=True)  # still inside after it: within noise, not met
    assert second["ok"] is False and second["within_noise"] and second["remeasured"]
    clear = latency_check(M, "p50", 10.6, remeasured=True)
    assert clear["ok"] and "within_noise" not in clear
    est = dict(M, latency_is_estimate=True)
    assert band(est, "p50") == (10.0, 10.0, 10.0) and not straddles(est, "p50", 10.0)


def test_load_warning_threshold():
    assert load_warning({"load_per_core": 0.4}, 0.5, 0.2) is None
    w = load_warning({"load_per_core": 1.25}, 0.5, 0.2)
    assert "1.25 per CPU" in w and "max_load_per_core 0.5" in w and "rate 0.20" in w
    assert load_warning({"load_per_core": None}, 0.5, 0.2) is None


# --objective size: the resumed runs add a --latency-budget, under which auto would build a latency
# model and prune for latency (a different configuration, which --resume refuses)
FAST = ["--step", "0.1", "--max-rate", "0.3", "--num-runs", "20", "--min-secs", "0.3", "--warmup-min-secs", "0.1",
        "--objective", "size"]


@pytest.mark.slow
def test_budget_inside_the_spread_is_measured_twice(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["run", "--out", str(out), *FAST, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    ch = rep["chosen"]
    m = next(c for c in rep["candidates"] if c["index"] == ch["index"])["measurement"]
    lat = m["latency_ms"]
    assert lat["iqr"] > 0 and lat["p25"] <= lat["p50"] <= lat["p75"]
    assert ch["latency_stat"] == "p50" and ch["latency_ms"] == lat["p50"] and ch["latency_spread_ms"] == lat["iqr"]
    # the same run again (cached first measurement), now with the budget at the measured p50, on a
    # profile that calls any load busy: the candidate is measured a second time and decided on that
    devs = tmp_path / "devs"
    devs.mkdir()
    (devs / "local.yaml").write_text("kind: local\nruntime: {python: current}\nthreads: 1\nmax_load_per_core: 0.000001\n"
                                     "limits: {flash_bytes: 100MB, ram_bytes: 2GiB}\n")
    budget = f"{lat['p50']:.7f}"
    code = run_cli(["run", "--out", str(out), *FAST, "--json", "--resume", "--devices-dir", str(devs),
                    "--latency-budget", budget])
    rep2 = json.loads(capsys.readouterr().out)
    c = next(c for c in rep2["candidates"] if c["index"] == ch["index"])
    assert c["first_measurement"]["latency_ms"]["p50"] == lat["p50"]  # the first, from the cache
    ck = c["checks"]["latency"]
    assert ck["remeasured"] is True and ck["stat"] == "p50" and ck["limit"] == pytest.approx(float(budget))
    second = c["measurement"]["latency_ms"]
    assert rep2["device_runs"]["made"] >= 1 and second != lat  # a new measurement
    lo, hi = second["p50"] - second["iqr"] / 2, second["p50"] + second["iqr"] / 2
    if lo <= float(budget) <= hi:
        assert ck.get("within_noise") and ck["ok"] is False and code in (0, 3)
    else:
        assert "within_noise" not in ck and ck["ok"] == (second["p50"] <= float(budget))
    assert "busy before measuring" in rep2["device"]["load_warning"]
    md = (out / "report.md").read_text()
    assert "**warning:**" in md and "±" in md
    # the human output names the statistic, the spread and the warning
    code = run_cli(["run", "--out", str(out), *FAST, "--resume", "--devices-dir", str(devs), "--latency-budget", budget,
                    "--latency-stat", "p90"])
    text = capsys.readouterr().out
    assert "latency p90" in text and "warning: the device was busy" in text


def test_bad_latency_stat_and_secs_exit_2(tmp_path, capsys):
    assert run_cli(["run", "--out", str(tmp_path / "x"), "--latency-stat", "p42"]) == 2
    assert run_cli(["run", "--out", str(tmp_path / "x"), "--max-secs", "0.5", "--min-secs", "1"]) == 2
    assert "max-secs" in capsys.readouterr().err
