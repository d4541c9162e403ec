"""Screening (issue 23 item 1, pipeline/search/host_screen.py) through the real CLI on the bundled
example (local device, the data-free engine for speed): candidates judged on their pruned Keras
model are not converted, the answer is a converted candidate judged on its .tflite, the same as
with --no-screen; a screened candidate that fails on its .tflite gives way to the next lower one;
--resume reuses screened candidates."""
from __future__ import annotations

import json

import pytest

from edgeprune.cli import run_cli
from edgeprune.pipeline.search.host_screen import MARGIN_ENV

PAODING = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]  # the data-free engine
FAST = ["--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0", "--max-rate", "0.4", *PAODING]


def run_json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = run_cli(["run", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _chosen(rep: dict) -> dict:
    return next(c for c in rep["candidates"] if c["index"] == rep["chosen"]["index"])


@pytest.mark.slow
def test_screening_saves_conversions_and_gives_the_same_answer(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(MARGIN_ENV, raising=False)
    code, a = run_json(capsys, ["--out", str(tmp_path / "a"), *FAST])
    assert code == 0
    code, b = run_json(capsys, ["--out", str(tmp_path / "b"), *FAST, "--no-screen"])
    assert code == 0
    ca, cb = _chosen(a), _chosen(b)
    assert (ca["rate"], ca["sha256"], ca["size_bytes"]) == (cb["rate"], cb["sha256"], cb["size_bytes"])
    assert ca["rate"] == pytest.approx(0.2)  # the data-free engine's pick on the example
    sc = a["screen"]
    screened = [c for c in a["candidates"] if (c.get("screen") or {}).get("screened")]
    assert len(screened) >= 3 and sc["conversions_saved"] == len(screened) == len(sc["screened"])
    assert b["screen"] is None and not any(c.get("screen") for c in b["candidates"])
    assert a["settings"]["screen"] is True and b["settings"]["screen"] is False
    # the margin: the gap of candidate 0 (Keras 1.0 against its .tflite) + one of 800 samples
    c0 = a["candidates"][0]
    assert sc["margin"]["score"] >= 1.0 - c0["fidelity"]["score"] + 1 / 800 - 1e-6
    d = tmp_path / "a"
    for c in screened:
        assert c["sha256"] is None and c["fidelity"]["score"] is None and c["checks"]["fidelity"]["ok"] is None
        assert not (d / f"{c['name']}.tflite").exists() and (d / c["files"]["plan"]).exists()
        assert c["screen"]["keras"]["score"] - c["screen"]["margin"] >= 0.95
        assert c["measurement"] is None and c["not_measured"].startswith("screened on Keras")
        # honest: on its .tflite (the --no-screen run) every screened candidate does pass
        assert b["candidates"][c["index"]]["fidelity"]["score"] >= 0.95
    tflites = sorted(p.name for p in d.glob("cand-*.tflite"))
    assert len(tflites) == len(a["candidates"]) - len(screened)
    assert len(list((tmp_path / "b").glob("cand-*.tflite"))) == len(b["candidates"])
    # the pick is converted and judged on its .tflite; nothing without a .tflite was measured
    assert all(c["sha256"] and (d / c["files"]["tflite"]).is_file() for c in a["candidates"] if c["measurement"])
    assert ca["sha256"] and ca["fidelity"]["score"] >= 0.95 and ca["checks"]["fidelity"]["ok"] is True
    assert (d / "best.tflite").read_bytes() == (d / ca["files"]["tflite"]).read_bytes()
    md = (d / "report.md").read_text()
    assert f"screening: {len(screened)} candidate(s) judged on their pruned Keras model only" in md
    assert "screened on Keras" in md
    # --resume over the screened candidates: reused as screened, nothing built again, same answer
    code, r = run_json(capsys, ["--out", str(d), *FAST, "--resume"])
    assert code == 0 and r["resume"]["candidates_computed"] == 0
    assert [bool((c.get("screen") or {}).get("screened")) for c in r["candidates"]] == \
        [bool((c.get("screen") or {}).get("screened")) for c in a["candidates"]]
    assert _chosen(r)["sha256"] == ca["sha256"] and r["screen"]["conversions_saved"] == 0
    # --resume under a stricter threshold: the screened candidates are judged again on their Keras score;
    # those that no longer clear it with the margin are converted now and judged on their .tflite
    strict = 0.962
    code, t = run_json(capsys, ["--out", str(d), *FAST, "--resume", "--min-fidelity", str(strict)])
    assert code in (0, 3)
    again = [c for c in t["candidates"] if (c.get("screen") or {}).get("converted", "").startswith("on resume")]
    kept = [c for c in t["candidates"] if (c.get("screen") or {}).get("screened")]
    assert again and len(again) + len(kept) == len(screened)
    for c in again:
        assert c["screen"]["keras"]["score"] - t["screen"]["margin"]["score"] < strict and c["sha256"]
        assert c["fidelity"]["score"] == b["candidates"][c["index"]]["fidelity"]["score"]  # its .tflite, as --no-screen
    for c in kept:
        assert c["screen"]["keras"]["score"] - t["screen"]["margin"]["score"] >= strict
    assert t["resume"]["candidates_reused"] == len(t["candidates"]) - len(again)


@pytest.mark.slow
def test_a_screened_candidate_failing_on_its_tflite_gives_way_to_the_next_lower(tmp_path, capsys, monkeypatch):
    """Margin forced to 0: rates 0.05-0.25 are screened on their Keras agreement (0.25's Keras
    agreement is 0.9500, its .tflite's 0.94875). The device phase converts 0.25 first: it fails on
    its .tflite, so 0.20 is converted, passes and is the answer, as without screening."""
    monkeypatch.setenv(MARGIN_ENV, "0")
    code, a = run_json(capsys, ["--out", str(tmp_path / "a"), *FAST])
    assert code == 0
    monkeypatch.delenv(MARGIN_ENV)
    code, b = run_json(capsys, ["--out", str(tmp_path / "b"), *FAST, "--no-screen"])
    assert code == 0
    ca, cb = _chosen(a), _chosen(b)
    assert (ca["rate"], ca["sha256"]) == (cb["rate"], cb["sha256"])
    on_demand = a["screen"]["converted_on_demand"]
    assert a["screen"]["margin"]["forced"] == MARGIN_ENV
    assert len(on_demand) >= 2 and on_demand[-1] == ca["name"]  # the failing one(s), then the pick
    failed = [c for c in a["candidates"] if c["name"] in on_demand[:-1]]
    for c in failed:
        assert c["rate"] > ca["rate"] and c["sha256"] and c["checks"]["fidelity"]["ok"] is False
        assert c["screen"]["converted"].startswith("on demand")
        assert c["fidelity"]["score"] < 0.95 <= c["screen"]["keras"]["score"]  # passed on Keras, fails on .tflite
        assert c["measurement"] is None and "fails the fidelity threshold on its .tflite" in c["not_measured"]
        assert (tmp_path / "a" / c["files"]["tflite"]).exists()
    assert ca["screen"]["converted"].startswith("on demand") and ca["checks"]["fidelity"]["ok"] is True
    for c in failed + [ca]:  # its pruning (when it was screened) is kept, its plan's replay added
        assert 0 < c["timings"]["replay_s"] < c["timings"]["prune_s"]
    assert ca["measurement"] is not None


def _screen(model, x, y, min_fidelity: float, max_drop=None):
    """A Screen on a stand-in run: ``model``'s outputs are the reference, the gap measured as 0."""
    from types import SimpleNamespace

    from edgeprune.pipeline.convert.fidelity import FidelityConfig
    from edgeprune.pipeline.data.eval_data import EvalData
    from edgeprune.pipeline.search.host_screen import Screen
    from edgeprune.pipeline.search.verdict import clears

    ctx = SimpleNamespace(data=EvalData(x=x, y=y, source="user"), reference=model(x).numpy(), fid_config=FidelityConfig())
    checks = SimpleNamespace(min_fidelity=min_fidelity, max_drop=max_drop, confidence=None,
                             fidelity_ok=lambda fr: clears(fr, min_fidelity, None))
    s = Screen(ctx, checks, True)
    s.observed = 1
    return s


def test_the_first_look_screens_on_a_quarter_and_otherwise_judges_every_sample(monkeypatch):
    """A candidate agreeing well above the threshold is screened on the first look: its score is
    its agreement on the seeded quarter of the samples, and the lower bound less the margin clears
    the threshold. One that does not clear on the quarter gets the score on all samples, the same
    as without the first look. No first look with --max-accuracy-drop, nor for a non-agreement metric."""
    import numpy as np
    import keras

    from edgeprune.pipeline.search import host_screen
    from edgeprune.pipeline.search.verdict import lower_bound

    monkeypatch.delenv(MARGIN_ENV, raising=False)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=400)
    keras.utils.set_random_seed(3)
    ref = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(5, activation="softmax")])  # probabilities: top-1 agreement
    cand = keras.models.clone_model(ref)
    cand.set_weights([w + 0.15 * rng.normal(size=w.shape).astype(np.float32) for w in ref.get_weights()])
    full_agree = float((cand(x).numpy().argmax(1) == ref(x).numpy().argmax(1)).mean())
    assert 0.6 < full_agree < 0.97  # a candidate that is neither perfect nor hopeless

    low = _screen(ref, x, None, 0.3)
    idx = low.first_look()
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and np.all(np.diff(idx) > 0)
    k = low.keras_fidelity(cand, look=True)
    want = float((cand(x[idx]).numpy().argmax(1) == ref(x[idx]).numpy().argmax(1)).mean())
    assert k["n_samples"] == 100 and k["score"] == pytest.approx(want, abs=1e-12)
    assert lower_bound(k["score"], 100, host_screen.FIRST_LOOK_CONFIDENCE) - low.margin()["score"] >= 0.3
    assert low.partial(k) and low.clears(k)
    low.observe(k, {"score": 0.0})  # a first look's score never measures the gap
    assert low.gap == 0.0
    rec = low.judge(cand, 1)
    assert rec["screened"] and rec["keras"]["n_samples"] == 100
    assert low.looks == {"tried": 2, "screened": 2}

    high = _screen(ref, x, None, 0.55)  # clears on all samples, not by a bound on a quarter
    k = high.keras_fidelity(cand, look=True)
    assert k["n_samples"] == 400 and k["score"] == pytest.approx(full_agree, abs=1e-12)
    assert k == high.keras_fidelity(cand, look=False)
    assert high.judge(cand, 1)["screened"] is (full_agree - high.margin()["score"] >= 0.55)
    # tried once: then the last score (0.625; its bound on 100 samples ~0.47) would not clear 0.55
    assert high.last_score == pytest.approx(full_agree) and high.looks == {"tried": 1, "screened": 0}
    high.last_score = 1.0
    assert high.keras_fidelity(cand, look=True)["n_samples"] == 400 and high.looks["tried"] == 2
    # not tried when even a perfect score would not clear on 100 samples: 0.95 (bound 0.913)
    strict = _screen(ref, x, None, 0.95)
    assert strict.keras_fidelity(cand, look=True)["n_samples"] == 400 and strict.looks["tried"] == 0

    assert _screen(ref, x, y, 0.3, max_drop=5.0).first_look() is None
    assert not _screen(ref, x, y, 0.3, max_drop=5.0).clears(rec["keras"])  # --resume: judged again on every sample
    assert _screen(ref, x[:120], None, 0.3).first_look() is not None and _screen(ref, x[:100], None, 0.3).first_look() is None
    one = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3)])  # 3 free values: relative error, no proportion
    assert _screen(one, x, None, 0.3).first_look() is None


@pytest.mark.slow
def test_the_first_look_through_the_cli(tmp_path, capsys, monkeypatch):
    """A low threshold: the candidates are screened on 200 of the 800 evaluation samples, the
    report says so, and the answer is the --no-screen run's."""
    monkeypatch.delenv(MARGIN_ENV, raising=False)
    code, a = run_json(capsys, ["--out", str(tmp_path / "a"), *FAST, "--min-fidelity", "0.5"])
    assert code == 0
    code, b = run_json(capsys, ["--out", str(tmp_path / "b"), *FAST, "--min-fidelity", "0.5", "--no-screen"])
    assert code == 0
    assert (_chosen(a)["rate"], _chosen(a)["sha256"]) == (_chosen(b)["rate"], _chosen(b)["sha256"])
    screened = [c for c in a["candidates"] if (c.get("screen") or {}).get("screened")]
    assert len(screened) >= 3
    for c in screened:
        assert c["screen"]["keras"]["n_samples"] == 200
        assert "on 200 of 800 samples, 99.9 % lower bound" in c["not_measured"]
        assert b["candidates"][c["index"]]["fidelity"]["score"] >= 0.5
    assert all(s["keras_samples"] == 200 for s in a["screen"]["screened"])
    assert a["screen"]["first_look"]["samples"] == 200 and a["screen"]["first_look"]["screened"] == \
        len([c for c in a["candidates"] if ((c.get("screen") or {}).get("keras") or {}).get("n_samples") == 200])
    assert "first look" in a["screen"]["method"]
