"""``edgeprune run --confidence P`` (issue 23): the pick must hold with probability P, i.e. the
one-sided Wilson lower bound of its agreement, not the agreement itself, must clear the threshold.
Real runs of the bundled example (data-free engine for speed; --resume reuses the candidates)."""
from __future__ import annotations

import json

import pytest

from edgeprune.cli import run_cli
from edgeprune.pipeline.search.verdict import clears, lower_bound, wilson

ENGINE = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]
FAST = ["--step", "0.1", "--max-rate", "0.9", "--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0"]


def test_lower_bound_is_the_one_sided_wilson_bound():
    # 768 of 800 agree (0.96): z = 1.6449 (one-sided 95 %) gives 0.94697, below 0.95
    assert lower_bound(0.96, 800, 0.95) == pytest.approx(0.946968, abs=1e-5)
    assert lower_bound(0.96, 800, 0.95) == pytest.approx(wilson(768, 800, z=1.6448536269514722)[0], abs=1e-12)
    # tighter with more samples, looser with more confidence, the score itself at 0.5
    assert lower_bound(0.96, 8000, 0.95) > lower_bound(0.96, 800, 0.95) > lower_bound(0.96, 800, 0.99)
    assert lower_bound(0.96, 800, 0.5) == pytest.approx(0.96, abs=1e-12)
    fr = {"score": 0.96, "n_samples": 800, "metric": "top1"}
    assert clears(fr, 0.95, None) and not clears(fr, 0.95, 0.95) and clears(fr, 0.94, 0.95)
    # not a proportion: the score is judged as it is
    assert clears({"score": 0.96, "n_samples": 800, "metric": "cosine"}, 0.95, 0.95)
    assert not clears({"score": None, "n_samples": 0, "metric": "top1"}, 0.5, None)


def _run(capsys, argv):
    code = run_cli(["run", *argv, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip().startswith("{") else None), cap.err


def test_confidence_moves_the_pick_to_a_rate_whose_lower_bound_clears(tmp_path, capsys):
    out = tmp_path / "run"
    code, a, err = _run(capsys, ["--out", str(out), *ENGINE, *FAST])
    assert code == 0, err
    pa = next(c for c in a["candidates"] if c["index"] == a["chosen"]["index"])
    t = pa["fidelity"]["score"]  # the pick's own agreement as the threshold: its lower bound is below it
    assert a["fidelity_threshold"]["confidence"] is None and "low" not in pa["checks"]["fidelity"]

    code, b, err = _run(capsys, ["--out", str(out), "--resume", *ENGINE, *FAST, "--min-fidelity", repr(t),
                                 "--confidence", "0.95"])
    assert b is not None, err
    assert b["fidelity_threshold"]["confidence"] == 0.95
    assert b["resume"]["candidates_reused"] >= 1
    by_rate = {c["rate"]: c for c in b["candidates"]}
    cb = by_rate[pa["rate"]]["checks"]["fidelity"]
    assert cb["value"] == t and cb["low"] == pytest.approx(lower_bound(t, pa["fidelity"]["n_samples"], 0.95), abs=1e-6)
    assert cb["low"] < t and cb["ok"] is False  # cleared the threshold as a score, not as a bound
    for c in b["candidates"]:
        f = c["checks"]["fidelity"]
        if f.get("value") is not None:
            assert f["ok"] == (f["low"] >= t - 1e-12), c["rate"]
    if code == 0:
        assert b["chosen"]["rate"] < pa["rate"]
        ch = next(c for c in b["candidates"] if c["index"] == b["chosen"]["index"])
        assert ch["checks"]["fidelity"]["low"] >= t
        assert b["verdict"]["uncertainty"]["chosen"]["lower_bound"] == pytest.approx(ch["checks"]["fidelity"]["low"], abs=1e-4)
    else:  # even the unpruned model's bound misses so high a threshold
        assert code == 3 and b["chosen"] is None and "confidence" in " ".join(b["reasons"])

    # the same threshold without --confidence picks the same rate as the first run
    code, c, err = _run(capsys, ["--out", str(out), "--resume", *ENGINE, *FAST, "--min-fidelity", repr(t)])
    assert code == 0, err
    assert c["chosen"]["rate"] == pa["rate"]


@pytest.mark.parametrize("argv, what", [
    (["--confidence", "1.5"], "--confidence 1.5 must be in [0.5, 1)"),
    (["--confidence", "0.2"], "--confidence 0.2 must be in [0.5, 1)"),
    (["--confidence", "0.95", "--max-accuracy-drop", "1"], "--confidence applies to --min-fidelity"),
])
def test_bad_confidence_is_refused_with_error_and_fix(tmp_path, capsys, argv, what):
    code = run_cli(["run", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and what in " ".join(lines), err
    assert any(ln.strip().startswith("fix:") for ln in lines) and "Traceback" not in err
    assert not (tmp_path / "r").exists()
