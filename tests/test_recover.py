"""Recovery training (``run --train-data SAMPLES --recover EPOCHS``, pipeline/prune/recover.py) end to end
through the real CLI on a small seeded model and data built here: training raises agreement at
the same widths, two runs give the same bytes, ``--resume`` and plan replay give the same bytes,
training samples equal to evaluation samples are removed (all of them: refused), bad input
exits 2 with error:/fix:, and the report's keys are present and schema-valid."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeprune.cli import run_cli

CLASSES, SIDE = 4, 8
# the data-free engine (fast, and it loses agreement early on this model), candidates 0, 0.3, 0.6, 0.9;
# the threshold is set between the untrained 0.3 and 0.6 candidates' agreement, measured on THIS
# machine (the trained model's numbers vary with the CPU's float kernels), so 0.6 fails untrained
# and training starts there wherever the suite runs
FAST = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform", "--step", "0.3", "--max-rate", "0.9",
        "--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0"]
STRICT = ["--min-fidelity", "0.95"]  # replaced by the measured threshold (setup)


def _samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 classes: a fixed prototype 8x8 image per class (seed 0) plus per-sample noise (``seed``)."""
    protos = np.random.default_rng(0).uniform(0, 1, (CLASSES, SIDE, SIDE, 1)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = np.clip(protos[y] * rng.uniform(0.3, 1.0, (n, 1, 1, 1)) + rng.normal(0, 0.35, (n, SIDE, SIDE, 1)), 0, 1)
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("recover")
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((SIDE, SIDE, 1)), L.Conv2D(16, 3, activation="relu"), L.Flatten(),
                              L.Dense(48, activation="relu"), L.Dense(CLASSES, activation="softmax")], name="tiny")
    xtr, ytr = _samples(4000, 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(xtr, ytr, epochs=4, batch_size=64, verbose=0, shuffle=False)
    model.save(d / "tiny.keras")
    xev, yev = _samples(300, 2)
    np.savez(d / "eval.npz", x=xev, y=yev)
    np.savez(d / "train.npz", x=xtr, y=ytr)
    np.save(d / "train_x.npy", xtr)  # unlabelled form
    # 40 evaluation samples planted in the training set (and one calibration-only sample is fine)
    np.savez(d / "train_overlap.npz", x=np.concatenate([xtr[:500], xev[:40]]), y=np.concatenate([ytr[:500], yev[:40]]))
    # untrained agreement of the candidates: the threshold between rate 0.3 and rate 0.6
    out = d / "untrained"
    code = run_cli(["run", "--model", str(d / "tiny.keras"), "--data", str(d / "eval.npz"), "--out", str(out), *FAST,
                    "--min-fidelity", "0.01", "--json", "--no-screen"])  # every candidate's .tflite score
    assert code == 0
    score = {round(c["rate"], 2): c["fidelity"]["score"] for c in json.loads((out / "report.json").read_text())["candidates"]}
    assert score[0.3] > score[0.6] + 0.01, f"the untrained 0.3 and 0.6 candidates are too close to split: {score}"
    STRICT[:] = ["--min-fidelity", f"{(score[0.3] + score[0.6]) / 2:.4f}"]
    return d


def _run(capsys, argv):
    code = run_cli(["run", *argv, "--json"])
    cap = capsys.readouterr()
    rep = json.loads(cap.out) if cap.out.strip().startswith("{") else None
    return code, rep, cap.err


def _base(d: Path, out: Path, train="train.npz", epochs="3"):
    return ["--model", str(d / "tiny.keras"), "--data", str(d / "eval.npz"), "--train-data", str(d / train),
            "--recover", epochs, "--out", str(out), *FAST, *STRICT]


@pytest.fixture(scope="module")
def first(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-a") / "run"
    code = run_cli(["run", *_base(setup, out), "--json"])
    rep = json.loads((out / "report.json").read_text())
    return code, rep, out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a loaded shared machine: the module fixture runs the whole search inside the first test
def test_training_raises_agreement_at_the_same_widths(first):
    code, rep, out = first
    trained = [c for c in rep["candidates"] if c.get("recovery")]
    assert len(trained) >= 2, "rate 0.6 fails untrained: it and 0.9 are trained"
    t0 = trained[0]
    before = t0["recovery"]["untrained_fidelity"]["score"]
    after = t0["fidelity"]["score"]
    # the same candidate (same plan widths), judged before and after training on the same 240 samples
    assert after > before + 0.01, (before, after)
    assert t0["recovery"]["untrained_fidelity"]["n_samples"] == t0["fidelity"]["n_samples"] == 240
    # candidates before the first failure are untrained, every one from it on is trained
    idx = [c["index"] for c in rep["candidates"]]
    first_t = idx.index(t0["index"])
    assert all(c.get("recovery") is None for c in rep["candidates"][:first_t])
    assert all(c.get("recovery") for c in rep["candidates"][first_t:])
    # the loss is a real number that went down over the three epochs
    for c in trained:
        lp = c["recovery"]["loss_per_epoch"]
        assert len(lp) == 3 and lp[2] < lp[0] and c["recovery"]["loss"] == lp[-1]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a loaded shared machine: the module fixture runs the whole search inside the first test
def test_report_keys_and_schema(first):
    from edgeprune.pipeline.report.schema import validation_errors

    code, rep, out = first
    assert code in (0, 3)
    assert validation_errors(rep) == []
    assert rep["settings"]["recover"] == {"epochs": 3, "temperature": 4.0, "label_weight": 0.0, "batch_size": 128,
                                          "learning_rate": 0.001, "optimizer": "Adam", "seed": 0}
    tr = rep["data"]["train"]
    assert tr["n_given"] == 4000 and tr["overlap_removed"] == 0 and tr["n_samples"] == 4000 and tr["shared"] == 0
    assert tr["labelled"] is True and tr["targets"] == "probabilities"
    assert tr["candidates_trained"] == sum(1 for c in rep["candidates"] if c.get("recovery")) >= 2
    assert rep["timings"]["train_s"] > 0
    for c in rep["candidates"]:
        r = c.get("recovery")
        assert "recovery" in c
        if r is None:
            continue
        assert r["samples"] == 4000 and r["epochs"] == 3 and r["steps"] == 3 * 32
        assert r["seconds_per_epoch"] == pytest.approx(r["seconds"] / 3, abs=2e-3)
        assert c["timings"]["train_s"] == pytest.approx(r["seconds"], abs=1e-3)
        f = out / c["files"]["trained"]
        assert f.name == c["name"] + ".trained.bin" and _sha(f) == r["weights_sha256"]
        plan = json.loads((out / c["files"]["plan"]).read_text())
        assert plan["trained"]["file"] == f.name and plan["trained"]["sha256"] == r["weights_sha256"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a loaded shared machine: the module fixture runs the whole search inside the first test
def test_two_runs_give_the_same_bytes(setup, first, tmp_path, capsys):
    _, rep_a, out_a = first
    code, rep_b, err = _run(capsys, _base(setup, tmp_path / "b"))
    assert code in (0, 3), err
    a = [(c["rate"], c["sha256"], (c.get("recovery") or {}).get("weights_sha256")) for c in rep_a["candidates"]]
    b = [(c["rate"], c["sha256"], (c.get("recovery") or {}).get("weights_sha256")) for c in rep_b["candidates"]]
    assert a == b
    assert any(w for _, _, w in a)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a loaded shared machine: the module fixture runs the whole search inside the first test
def test_resume_and_plan_replay_give_the_same_bytes(setup, first, tmp_path, capsys):
    import keras

    from edgeprune.pipeline.prune.plan import Plan
    from edgeprune.pipeline.prune.recover import weights_bytes

    _, rep_a, out_a = first
    out = tmp_path / "resumed"
    shutil.copytree(out_a, out)
    trained = [c for c in rep_a["candidates"] if c.get("recovery")]
    # "killed" during the 2nd trained candidate: its .json (written last) and everything after it are gone
    cut = trained[1]["index"]
    for c in rep_a["candidates"]:
        if c["index"] >= cut:
            for f in [*c["files"].values(), c["name"] + ".json"]:
                (out / f).unlink(missing_ok=True)
    code, rep_r, err = _run(capsys, [*_base(setup, out), "--resume"])
    assert code in (0, 3), err
    assert rep_r["resume"]["candidates_reused"] == len([c for c in rep_a["candidates"] if c["index"] < cut])
    assert [(c["rate"], c["sha256"]) for c in rep_r["candidates"]] == [(c["rate"], c["sha256"]) for c in rep_a["candidates"]]
    # plan replay on the original model: the trained weights bit for bit, the same outputs as the saved .keras
    original = keras.models.load_model(setup / "tiny.keras", compile=False)
    x = np.load(setup / "eval.npz")["x"][:50]
    for c in trained:
        replayed = Plan.load(out_a / c["files"]["plan"]).apply(original)
        assert hashlib.sha256(weights_bytes(replayed)).hexdigest() == c["recovery"]["weights_sha256"]
        saved = keras.models.load_model(out_a / c["files"]["keras"], compile=False)
        np.testing.assert_array_equal(replayed.predict(x, verbose=0), saved.predict(x, verbose=0))
        assert replayed.count_params() == c["params"]
    # a changed weights file is refused, naming it
    from edgeprune.errors import BadInput

    bad = tmp_path / "tampered"
    shutil.copytree(out_a, bad)
    f = bad / trained[0]["files"]["trained"]
    raw = bytearray(f.read_bytes())
    raw[0] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(BadInput, match="do not match the sha256"):
        Plan.load(bad / trained[0]["files"]["plan"]).apply(original)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a loaded shared machine: the module fixture runs the whole search inside the first test
def test_training_samples_equal_to_evaluation_samples_are_removed(setup, tmp_path, capsys):
    code, rep, err = _run(capsys, _base(setup, tmp_path / "ov", train="train_overlap.npz", epochs="1"))
    assert code in (0, 3), err
    tr = rep["data"]["train"]
    # 40 planted evaluation samples; the split's evaluation part is 240 of the 300, so the planted ones
    # that landed in the calibration part (not judged) are kept: count them the way the split does
    from edgeprune.pipeline.data.split import sample_keys

    xev = np.load(setup / "eval.npz")["x"]
    keys = sample_keys(xev)
    cal = np.sort(keys)[:60]
    planted_in_eval = int((~np.isin(keys[:40], cal)).sum())
    assert 0 < planted_in_eval <= 40
    assert tr["n_given"] == 540 and tr["overlap_removed"] == planted_in_eval
    assert tr["n_samples"] == 540 - planted_in_eval and tr["shared"] == 0
    assert any("are also evaluation samples" in n and "removed from the training set" in n for n in rep["notes"])
    for c in rep["candidates"]:
        if c.get("recovery"):
            assert c["recovery"]["samples"] == 540 - planted_in_eval


def _bad(capsys, argv) -> str:
    code = run_cli(["run", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert sum(ln.startswith("error:") for ln in lines) == 1 and any(ln.strip().startswith("fix:") for ln in lines), err
    return err


def test_bad_train_data_exits_2_with_error_and_fix(setup, tmp_path, capsys):
    d = setup
    base = ["--model", str(d / "tiny.keras"), "--data", str(d / "eval.npz"), *FAST]
    err = _bad(capsys, [*base, "--train-data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r1")])
    assert "--train-data" in err and "missing.npz" in err
    np.savez(tmp_path / "wrong.npz", x=np.zeros((10, 5, 5, 1), np.float32))
    err = _bad(capsys, [*base, "--train-data", str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "r2")])
    assert "--train-data" in err and "shape" in err
    err = _bad(capsys, [*base, "--recover", "2", "--out", str(tmp_path / "r3")])
    assert "--recover needs --train-data" in err
    err = _bad(capsys, [*base, "--train-data", str(d / "train.npz"), "--recover", "0", "--out", str(tmp_path / "r4")])
    assert "--recover 0" in err
    err = _bad(capsys, [*base, "--train-data", str(d / "train_x.npy"), "--label-weight", "0.5",
                        "--out", str(tmp_path / "r5")])
    assert "needs labelled --train-data" in err
    # every training sample is an evaluation sample: refused (nothing left to train on)
    from edgeprune.pipeline.data.split import sample_keys

    xev, yev = np.load(d / "eval.npz")["x"], np.load(d / "eval.npz")["y"]
    keys = sample_keys(xev)
    judged = ~np.isin(keys, np.sort(keys)[:60])  # the split's evaluation part (60 lowest hashes calibrate)
    np.savez(tmp_path / "judged.npz", x=xev[judged], y=yev[judged])
    err = _bad(capsys, [*base, "--train-data", str(tmp_path / "judged.npz"), *STRICT, "--out", str(tmp_path / "r6")])
    assert "also evaluation samples" in err


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a loaded shared machine: the module fixture runs the whole search inside the first test
def test_without_train_data_nothing_is_trained(setup, tmp_path, capsys):
    code, rep, err = _run(capsys, ["--model", str(setup / "tiny.keras"), "--data", str(setup / "eval.npz"),
                                   "--out", str(tmp_path / "plain"), *FAST, *STRICT])
    assert code in (0, 3), err
    assert "recover" not in rep["settings"] and "train" not in rep["data"] and "train_s" not in rep["timings"]
    assert all("recovery" not in c for c in rep["candidates"])
    assert not list((tmp_path / "plain").glob("*.trained.bin"))
    assert not (tmp_path / "plain" / "train-reference.npy").exists()
