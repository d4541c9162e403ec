"""``edgeprune run`` end to end on the bundled example with the local device (real TF, LiteRT,
board runner child process; nothing mocked), resume after a kill, and the bad-input exits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeprune.cli import run_cli

PAODING = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]  # the data-free engine
FAST = ["--step", "0.1", "--runs", "3", "--warmup", "1"]


def run_json(capsys, argv: list[str]) -> tuple[int, dict | None, str]:
    code = run_cli(["run", *argv, "--json"])
    cap = capsys.readouterr()
    report = json.loads(cap.out) if cap.out.strip().startswith("{") else None
    return code, report, cap.err


def meets(c: dict) -> bool:
    return c["meets_all"]


# --------------------------------------------------------------------------- budget forces pruning
@pytest.mark.slow
def test_budget_forces_pruning_and_picks_the_largest_rate_that_meets_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, rep, err = run_json(capsys, ["--out", str(out), *FAST, "--max-rate", "0.5", "--budget", "600kB",
                                       "--min-fidelity", "0.95"])
    assert code == 0, err
    assert rep["status"] == "ok" and rep["exit_code"] == 0
    assert rep["budgets"]["flash_bytes"] == {"value": 600_000, "source": "option"}  # echoed back in bytes
    assert rep["budgets"]["ram_bytes"]["source"] == "profile"
    ch = rep["chosen"]
    assert ch["rate"] > 0, "600 kB is below the unpruned int8 model: pruning must be forced"
    best = out / "best.tflite"
    assert best.stat().st_size == ch["size_bytes"] <= 600_000
    assert best.read_bytes() == (out / ch["tflite"]).read_bytes()
    assert ch["fidelity"] >= 0.95
    cands = rep["candidates"]
    assert [c["rate"] for c in cands] == sorted(c["rate"] for c in cands)
    assert cands[0]["rate"] == 0.0
    i = next(k for k, c in enumerate(cands) if c["index"] == ch["index"])
    # the stop rule: the next larger rate does not meet everything, or the max rate was reached
    if i + 1 < len(cands):
        nxt = cands[i + 1]
        assert not all(v["ok"] for v in nxt["checks"].values())
    else:
        assert ch["rate"] == pytest.approx(0.5)
    # nothing above the chosen rate meets everything, and no smaller rate was needed on the device
    assert not any(meets(c) for c in cands[i + 1:])
    assert rep["device_runs"]["made"] == 1  # only the answer was measured
    for c in cands:
        if not c["checks"]["fidelity"]["ok"] or not c["checks"]["flash"]["ok"]:
            assert c["measurement"] is None and c["not_measured"]
    m = cands[i]["measurement"]
    assert m["runs"] >= 3 and m["latency_is_estimate"] is False and m["device"] == "local"
    # every candidate on disk, and the reports
    for c in cands:
        for f in (*c["files"].values(), f"{c['name']}.json"):
            assert (out / f).is_file(), f
        assert json.loads((out / f"{c['name']}.json").read_text())["sha256"] == c["sha256"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "CHOSEN" in md and "device runs: 1 made" in md
    assert json.loads((out / "report.json").read_text())["chosen"] == ch
    assert rep["data"]["source"] == "user" and rep["data"]["labelled"]

    # the same out dir with a different configuration is refused (exit 2) ...
    code, _, err = run_json(capsys, ["--out", str(out), "--step", "0.2", "--max-rate", "0.4"])
    assert code == 2 and "different configuration" in err and "--force" in err
    # ... and the same configuration with --resume re-measures nothing (sha256 cache)
    code, rep2, err = run_json(capsys, ["--out", str(out), *FAST, "--max-rate", "0.5", "--budget", "600kB",
                                        "--min-fidelity", "0.95", "--resume"])
    assert code == 0, err
    assert rep2["device_runs"] == {"made": 0, "cached": 1, "not_measured": len(cands) - 1}
    assert rep2["resume"]["candidates_reused"] == len(cands) and rep2["resume"]["candidates_computed"] == 0
    assert rep2["chosen"]["sha256"] == ch["sha256"]


# --------------------------------------------------------------------------- no candidate
@pytest.mark.slow
def test_budget_nobody_meets_exits_3_with_the_reason(tmp_path, capsys):
    out = tmp_path / "run"
    # the data-free engine (paoding, no compensation) falls below 0.95 before rate 0.5 on the example;
    # --no-predict: every candidate is converted, so the fidelity stop is known (with prediction,
    # all are skipped as over 100 kB: tests/test_predict.py)
    code, rep, err = run_json(capsys, ["--out", str(out), *FAST, "--max-rate", "0.5", "--budget", "100kB",
                                       "--min-fidelity", "0.95", *PAODING, "--no-predict"])
    assert code == 3, err
    assert rep["status"] == "no_candidate" and rep["chosen"] is None
    text = " ".join(rep["reasons"])
    assert "over the 100 kB budget" in text and "smallest model" in text
    assert "fidelity fell below 0.95" in text
    assert rep["device_runs"]["made"] == 0  # nothing passed the host checks: no device run
    assert not (out / "best.tflite").exists()
    assert "over the 100 kB budget" in (out / "report.md").read_text()
    # the human output says it too
    code = run_cli(["run", "--out", str(out), *FAST, "--max-rate", "0.5", "--budget", "100kB", "--min-fidelity",
                    "0.95", "--resume", *PAODING, "--no-predict"])
    cap = capsys.readouterr()
    assert code == 3
    assert "no candidate meets every limit" in cap.out and "over the 100 kB budget" in cap.out


# --------------------------------------------------------------------------- kill + resume
@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_candidates(tmp_path, capsys):
    out = tmp_path / "run"
    # --no-screen: every candidate is converted (with screening, candidate 1 would be screened: no .keras/.tflite)
    argv = ["run", "--out", str(out), *FAST, "--max-rate", "0.6", "--min-fidelity", "0.5", "--no-screen"]
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    second = out / "cand-01-rate0.10.json"
    deadline = time.monotonic() + 240
    try:
        while not second.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run did not produce two candidates in time"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group, nothing else
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stderr.close()
    assert not (out / "report.json").exists(), "the run finished before it was killed"
    done = sorted(p.name for p in out.glob("cand-*.json") if not p.name.endswith(".plan.json"))
    assert len(done) >= 2
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("cand-0[01]-*")}
    assert len(before) == 8  # .keras .tflite .plan.json .json for candidates 0 and 1
    killed_pid = json.loads(second.read_text())["pid"]
    assert killed_pid == proc.pid

    code, rep, err = run_json(capsys, [*argv[1:], "--resume"])
    assert code == 0, err
    rs = rep["resume"]
    assert rs["resumed"] and rs["candidates_reused"] == len(done) >= 2
    assert rs["candidates_computed"] == len(rep["candidates"]) - len(done)
    assert [c["rate"] for c in rep["candidates"]] == [round(0.1 * k, 6) for k in range(7)]
    for c in rep["candidates"][:2]:
        assert c["reused"] is True
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("cand-0[01]-*")}
    assert after == before  # not rewritten
    for name in done:
        assert json.loads((out / name).read_text())["pid"] == killed_pid  # made by the killed process
    fresh = [c for c in rep["candidates"] if not c["reused"]]
    assert fresh and all(json.loads((out / f"{c['name']}.json").read_text())["pid"] == os.getpid() for c in fresh)
    assert not list(out.glob(".*tmp*"))  # the killed run's temporary files are gone
    assert rep["chosen"]["rate"] == pytest.approx(0.6)  # min fidelity 0.5: every step passes


# --------------------------------------------------------------------------- a different configuration
@pytest.mark.slow
def test_a_different_configuration_is_refused_in_words(tmp_path, capsys):
    out = tmp_path / "run"
    # the cheapest global-allocation run (data-free criterion, no compensation), two candidates
    base = ["--out", str(out), *FAST, "--max-rate", "0.1", "--criterion", "paoding", "--no-compensate",
            "--allocation", "global"]
    assert run_cli(["run", *base]) == 0
    capsys.readouterr()
    # a latency budget the unpruned model misses: auto now prunes for latency (and the parameters)
    code = run_cli(["run", *base, "--latency-budget", "0.0001"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --out {out} holds a run of a different configuration: pruning objective (--objective): size there, "
        "auto (latency 0.5 + parameters 0.5) now (auto prunes for the budgets the unpruned model is predicted to miss)",
        "  fix: pass --objective size to reuse it as it was pruned, --force to discard it and start over, or choose "
        "another --out"]
    # a setting only the old run stored (--allocation global; uniform is not stored) is named too
    code = run_cli(["run", *[a if a != "global" else "uniform" for a in base], "--step", "0.2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --out {out} holds a run of a different configuration: rate step (--step): 0.1 there, 0.2 now; "
        "channel allocation (--allocation): global there, uniform now",
        "  fix: pass --force to discard it and start over, or choose another --out"]
    assert "Traceback" not in err and "{'" not in err and "None" not in err
    # the fix it gave works: --objective size resumes the run (no candidate recomputed)
    code, rep, err = run_json(capsys, [*base, "--latency-budget", "0.0001", "--objective", "size", "--resume"])
    assert code == 3, err  # 0.0001 ms: nothing meets it
    assert rep["resume"]["resumed"] and rep["resume"]["candidates_computed"] == 0


# --------------------------------------------------------------------------- bad input: exit 2
def _bad(capsys, argv) -> str:
    code = run_cli(["run", *argv])
    cap = capsys.readouterr()
    assert code == 2, cap.err
    assert "Traceback" not in cap.err
    return cap.err


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, capsys):
    o = ["--out", str(tmp_path / "o")]
    assert "unknown device 'no-such-board'" in _bad(capsys, [*o, "--device", "no-such-board"])
    err = _bad(capsys, [*o, "--budget", "2 parsecs"])
    assert "unknown unit 'parsecs'" in err and "--budget" in err
    assert "--step -0.1 must be in (0, 1]" in _bad(capsys, [*o, "--step", "-0.1"])
    assert "model file" in _bad(capsys, [*o, "--model", str(tmp_path / "missing.keras")]) 
    assert "data file" in _bad(capsys, [*o, "--data", str(tmp_path / "missing.npz")])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive at all")
    err = _bad(capsys, [*o, "--data", str(bad)])
    assert "bad.npz" in err and "not a valid .npz" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _bad(capsys, ["--out", str(blocker / "run")])
    assert "not writable" in err and "--out" in err
    if os.geteuid() != 0:  # root writes anywhere; the blocker above covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert "not writable" in _bad(capsys, ["--out", str(ro / "run")])
    assert "--max-rate" in _bad(capsys, [*o, "--max-rate", "1.5"])
    assert "--latency-budget" in _bad(capsys, [*o, "--latency-budget", "-3"])
    assert "'int4' is not one of" in _bad(capsys, [*o, "--quantize", "int4"])
    notrun = tmp_path / "notrun"
    notrun.mkdir()
    (notrun / "thesis.tex").write_text("mine")
    assert "not an edgeprune run directory" in _bad(capsys, ["--out", str(notrun)])
    assert (notrun / "thesis.tex").read_text() == "mine"


def test_help_documents_exit_codes():
    r = subprocess.run([sys.executable, "-m", "edgeprune", "run", "--help"], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for s in ("Exit codes: 0", "2 bad input", "3 no candidate", "4 the device"):
        assert s in text


# --------------------------------------------------------------------------- device budget miss
@pytest.mark.slow
def test_clear_latency_miss_measures_only_the_largest_host_passing_rate(tmp_path, capsys):
    out = tmp_path / "run"
    # --objective size: no latency model, so no candidate is predicted over the budget and left
    # unconverted (auto builds one for a latency budget): the device phase's own skipping is tested
    code, rep, err = run_json(capsys, ["--out", str(out), *FAST, "--max-rate", "0.3", "--min-fidelity", "0.9",
                                       "--latency-budget", "0.0001", "--objective", "size"])
    assert code == 3, err
    host_pass = [c for c in rep["candidates"] if c["checks"]["fidelity"]["ok"] and c["checks"]["flash"]["ok"]]
    assert len(host_pass) >= 2
    # the largest rate misses by far more than noise: the smaller rates (bigger models) are not measured
    assert rep["device_runs"]["made"] == 1
    measured = [c for c in rep["candidates"] if c["measurement"]]
    assert [c["rate"] for c in measured] == [max(c["rate"] for c in host_pass)]
    skipped = [c for c in host_pass if not c["measurement"]]
    assert skipped and all("missed the latency budget" in c["not_measured"] for c in skipped)
    text = " ".join(rep["reasons"])
    assert "over the 0.0001 ms latency budget" in text and "fastest candidate measured" in text


@pytest.mark.slow
def test_accuracy_drop_threshold(tmp_path, capsys):
    import numpy as np

    from edgeprune.pipeline.example import example_data_path

    with np.load(example_data_path()) as z:
        x = (z["x"][:300].astype("float32") / 255.0)
        y = z["y"][:300]
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, x)
    err = _bad(capsys, ["--out", str(tmp_path / "a"), "--data", str(unlabelled), "--max-accuracy-drop", "1"])
    assert "--max-accuracy-drop needs labelled data" in err
    labelled = tmp_path / "xy.npz"
    np.savez(labelled, x=x, y=y)
    code, rep, err = run_json(capsys, ["--out", str(tmp_path / "b"), "--data", str(labelled), *FAST, "--max-rate",
                                       "0.3", "--max-accuracy-drop", "2"])
    assert code == 0, err
    assert rep["fidelity_threshold"] == dict(rep["fidelity_threshold"], min_fidelity=None, max_accuracy_drop=2.0)
    assert rep["chosen"]["accuracy_drop"] <= 2.0
    assert rep["data"]["path"] == str(labelled) and rep["data"]["n_samples"] == 240  # 60 held out for calibration


# --------------------------------------------------------------------------- the global allocation's log
@pytest.mark.slow
def test_each_candidate_records_the_chunks_its_global_step_removed(tmp_path, capsys):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu", name="d1")(x)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="out")(x))
    model.save(tmp_path / "tiny.keras")
    xs = np.random.default_rng(0).random((200, 12, 12, 1), dtype=np.float32)
    np.savez(tmp_path / "data.npz", x=xs, y=model.predict(xs, verbose=0).argmax(-1))
    out = tmp_path / "run"
    # the default engine (labelled data: flow + compensation + the global greedy)
    code, rep, err = run_json(capsys, ["--model", str(tmp_path / "tiny.keras"), "--data", str(tmp_path / "data.npz"),
                                       "--out", str(out), "--step", "0.2", "--max-rate", "0.6", "--runs", "2",
                                       "--warmup", "0", "--min-fidelity", "0.5"])
    assert code == 0, err
    assert rep["settings"]["allocation"] == "global"
    recs = [json.loads((out / f"{c['name']}.json").read_text()) for c in rep["candidates"]]
    assert [r["rate"] for r in recs] == [0.0, 0.2, 0.4, 0.6]
    assert "allocation_log" not in recs[0]  # the unpruned model: no step
    for prev, rec in zip(recs, recs[1:]):
        log = rec["allocation_log"]
        assert log and all(set(row) >= {"group", "removed", "width", "params_saved", "loss"} for row in log)
        assert all(row["removed"] >= 1 and row["params_saved"] > 0 and row["loss"] >= 0 for row in log)
        # the rows are exactly this step's: together they remove what the candidate lost since the last one
        assert sum(row["params_saved"] for row in log) == prev["params"] - rec["params"]
        # each group's last row leaves the width the candidate has
        last = {row["group"]: row["width"] for row in log}
        for group, width in last.items():
            assert rec["widths"][group][1] == width, (rec["name"], group)
        # and the groups it did not touch kept the previous candidate's width
        for layer, (_, width) in rec["widths"].items():
            if layer not in last:
                assert prev["widths"][layer][1] == width
    assert "allocation_log" not in rep["candidates"][1]  # report.json's candidates are unchanged
