"""Issue 14: ``--data`` in the forms people have it (folder of images, CSV, their own function),
the calibration/evaluation split, and the honesty of the verdict (Wilson interval, synthetic
coverage). Real Pillow files, real runs of the bundled example and of an MLPerf Tiny model."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeprune.cli import run_cli
from edgeprune.errors import BadInput
from edgeprune.pipeline.data.eval_data import EvalData
from edgeprune.pipeline.data.datasources import UserCodeError, load_data, parse_spec
from edgeprune.pipeline.example import example_data_path
from edgeprune.pipeline.data.split import split
from edgeprune.pipeline.search.verdict import class_coverage, wilson

FMNIST_NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


@pytest.fixture(scope="module")
def classifier10():
    """A (28, 28, 1) -> 10 classes Keras model (for the label checks that need the class count)."""
    import keras

    inp = keras.Input((28, 28, 1))
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp)))


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _run(capsys, argv):
    code = run_cli(["run", *argv, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip().startswith("{") else None), cap.err


# --------------------------------------------------------------------------- must show: PNG folder == .npz
@pytest.mark.slow
def test_png_class_folders_give_the_same_pick_as_the_bundled_npz(tmp_path, capsys):
    z = np.load(example_data_path())
    x, y = z["x"], z["y"]  # uint8 images + input_scale 1/255
    folder = tmp_path / "fmnist-pngs"
    for i, (img, label) in enumerate(zip(x, y)):
        _png(folder / FMNIST_NAMES[int(label)] / f"{i:04d}.png", img.reshape(28, 28))
    common = ["--step", "0.05", "--max-rate", "0.3", "--runs", "3", "--warmup", "1"]
    code_n, rep_n, err_n = _run(capsys, ["--out", str(tmp_path / "npz"), *common])
    code_p, rep_p, err_p = _run(capsys, ["--out", str(tmp_path / "png"), *common, "--data", str(folder),
                                         "--classes", ",".join(FMNIST_NAMES)])
    assert code_n == 0, err_n
    assert code_p == 0, err_p
    assert rep_p["data"]["form"] == "images" and rep_p["data"]["labelled"]
    assert any("labels from 10 class folders (declared by --classes)" in n for n in rep_p["data"]["notes"])
    assert rep_p["chosen"]["rate"] == rep_n["chosen"]["rate"]
    assert rep_p["chosen"]["sha256"] == rep_n["chosen"]["sha256"]  # the very same .tflite: same calibration samples
    # the labels really came from the folders: accuracy (needs the labels) is identical per candidate, on
    # the .tflite of a converted candidate and on the Keras model of a screened one (pipeline/search/host_screen.py)
    assert len(rep_n["candidates"]) == len(rep_p["candidates"]) == 7
    for a, b in zip(rep_n["candidates"], rep_p["candidates"]):
        assert a["fidelity"]["score"] == b["fidelity"]["score"]
        assert a["fidelity"]["accuracy"] == b["fidelity"]["accuracy"]
        assert a["screen"]["keras"]["accuracy"] == b["screen"]["keras"]["accuracy"] is not None
        assert a["screen"]["screened"] == b["screen"]["screened"]
        if not a["screen"]["screened"]:
            assert a["fidelity"]["accuracy"] is not None
    assert not rep_n["candidates"][0]["screen"]["screened"]
    for rep in (rep_n, rep_p):
        sp = rep["data"]["split"]
        assert (sp["n_samples"], sp["calibration"], sp["evaluation"], sp["shared"]) == (1000, 200, 800, 0)
        assert rep["data"]["n_samples"] == 800
        unc = rep["verdict"]["uncertainty"]["chosen"]
        assert unc["n"] == 800 and unc["low"] < rep["chosen"]["fidelity"] <= unc["high"]


# --------------------------------------------------------------------------- must show: no data, one class
@pytest.mark.slow
def test_run_without_data_on_a_one_class_model_warns_and_says_so_in_report_json(tmp_path, capsys):
    from conftest import mlperf_path
    from edgeprune.pipeline.data.loading import load_model

    # keyword spotting (the MLPerf Tiny DS-CNN stand-in) whose output bias sends every uniform input
    # to class 2, as the real trained model does
    kws = load_model(mlperf_path("kws"))
    head = kws.get_layer("dense")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + np.array([0.0, 0.0, 12.0], np.float32)])
    model = tmp_path / "kws_one_class.keras"
    kws.save(model)
    code, rep, err = _run(capsys, ["--model", str(model), "--out", str(tmp_path / "o"), "--step", "0.1",
                                   "--max-rate", "0.1", "--runs", "3", "--warmup", "1"])
    assert code == 0, err
    v = rep["verdict"]
    assert v["judged_on"] == "synthetic" and rep["data"]["synthetic"]
    syn = v["synthetic"]
    assert (syn["classes"], syn["classes_reached"], syn["largest_class_share"]) == (3, 1, 1.0)
    assert syn["informative"] is False and syn["unpruned_score"] == rep["candidates"][0]["fidelity"]["score"]
    codes = [w["code"] for w in v["warnings"]]
    assert "synthetic_uninformative" in codes
    assert "warning: the verdict says little" in " ".join(err.split()) and "--data" in err
    on_disk = json.loads((tmp_path / "o" / "report.json").read_text())
    assert on_disk["verdict"]["warnings"] == v["warnings"]
    assert "synthetic_uninformative" in (tmp_path / "o" / "report.md").read_text()


# --------------------------------------------------------------------------- images
def test_flat_image_folder_is_resized_converted_and_scaled_to_the_input_range(tmp_path):
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[...] = (128, 128, 128)
    _png(tmp_path / "imgs" / "a.png", rgb)
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "imgs" / "b.bmp")
    (tmp_path / "imgs" / "readme.txt").write_text("not an image")
    d = load_data(tmp_path / "imgs", (28, 28, 1))
    assert d.x.shape == (2, 28, 28, 1) and d.y is None and d.form == "images"
    np.testing.assert_allclose(d.x[0], 128 / 255, rtol=1e-6)  # RGB grey -> L, 40x30 -> 28x28
    np.testing.assert_allclose(d.x[1], 1.0)
    d2 = load_data(tmp_path / "imgs", (28, 28, 3), input_range=(-1.0, 1.0))
    assert d2.x.shape == (2, 28, 28, 3)
    np.testing.assert_allclose(d2.x[0], 128 * 2 / 255 - 1, atol=1e-6)
    assert any("1 resized" in n for n in d.notes)


def test_numeric_class_folders_are_labels_in_numeric_order(tmp_path, classifier10):
    for label in (0, 2, 9):
        _png(tmp_path / "d" / str(label) / "x.png", np.full((28, 28), label * 20, np.uint8))
    d = load_data(tmp_path / "d", classifier10)
    order = np.argsort(d.x[:, 0, 0, 0])
    assert list(d.y[order]) == [0, 2, 9]


def test_class_folder_pitfalls_are_refused(tmp_path, classifier10):
    for name in ("cat", "dog"):
        _png(tmp_path / "pets" / name / "x.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(BadInput, match="2 class folders but the model has 10 classes"):
        load_data(tmp_path / "pets", classifier10)
    with pytest.raises(BadInput, match="dog are not in --classes"):
        load_data(tmp_path / "pets", classifier10, classes="cat,bird")
    d = load_data(tmp_path / "pets", classifier10, classes="bird,dog,cat")
    assert sorted(d.y.tolist()) == [1, 2]
    _png(tmp_path / "pets" / "stray.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(BadInput, match="at its top level"):
        load_data(tmp_path / "pets", classifier10, classes="cat,dog")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BadInput, match="x.png is not a readable image"):
        load_data(tmp_path / "broken", classifier10)
    for i in range(11):  # 11 numeric folders for a 10-class model: label 10 is out of range (the common check)
        _png(tmp_path / "eleven" / str(i) / "x.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(BadInput, match=r"labels 'y' go up to 10 \(1 of 11 samples\), but the model has 10 output"):
        load_data(tmp_path / "eleven", classifier10)


# --------------------------------------------------------------------------- CSV
def test_csv_rows_labels_and_errors(tmp_path, classifier10):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 784)).round(3)
    head = ",".join(f"p{i}" for i in range(784))
    rows = [",".join(str(v) for v in r) + f",{k % 3}" for k, r in enumerate(x)]
    (tmp_path / "s.csv").write_text(head + ",label\n" + "\n".join(rows) + "\n")
    d = load_data(tmp_path / "s.csv", classifier10)
    assert d.x.shape == (5, 28, 28, 1) and d.y.tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_allclose(d.x.reshape(5, -1), x, rtol=1e-6)
    (tmp_path / "names.csv").write_text("a,b,label\n1,2,dog\n3,4,cat\n")
    d = load_data(tmp_path / "names.csv", (2,), classes="cat,dog")
    assert d.y.tolist() == [1, 0] and d.x.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(BadInput, match="label 'dog' in column 'label' is not a class index"):
        load_data(tmp_path / "names.csv", (2,))
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(BadInput, match=r"bad.csv line 2, column 2: 'oops' is not a number"):
        load_data(tmp_path / "bad.csv", (2,))
    with pytest.raises(BadInput, match=r"each row has 2 input values, but the model's input \(3,\) takes 3"):
        load_data(tmp_path / "names.csv", (3,), classes="cat,dog")
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    with pytest.raises(BadInput, match="NaN or infinity"):
        load_data(tmp_path / "nan.csv", (2,))


# --------------------------------------------------------------------------- the user's function
def test_user_function_returns_x_y_and_its_errors_are_reported_as_theirs(tmp_path, capsys):
    prep = tmp_path / "my_prep.py"
    prep.write_text(textwrap.dedent("""\
        import numpy as np

        def load():
            x = np.linspace(0, 1, 6 * 4, dtype=np.float32).reshape(6, 4)
            return x, np.array([0, 1, 0, 1, 0, 1])

        def _scale(v):
            return v / undefined_name

        def broken():
            return _scale(3)
        """))
    d = load_data(f"{prep}:load", (4,))
    assert d.x.shape == (6, 4) and d.y.tolist() == [0, 1, 0, 1, 0, 1] and d.label == "user data my_prep.py:load"
    assert parse_spec(str(prep)).func == "load"  # the default name
    with pytest.raises(UserCodeError) as ei:
        load_data(f"{prep}:broken", (4,))
    tb = ei.value.detail
    assert "NameError" in ei.value.message and "my_prep.py:broken" in ei.value.message
    assert tb.startswith("your code's traceback (most recent call last):") and 'my_prep.py", line 11, in broken' in tb
    assert 'line 8, in _scale' in tb and "datasources.py" not in tb and "edgeprune" not in tb
    with pytest.raises(BadInput, match="has no function 'lod'"):
        load_data(f"{prep}:lod", (4,))

    # through the CLI: exit 2, the error line first, their traceback, no edgeprune traceback
    code = run_cli(["run", "--data", f"{prep}:broken", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith("error: your data function my_prep.py:broken raised NameError"), err
    assert lines[1].strip().startswith("fix:") and lines[2] == "your code's traceback (most recent call last):"
    assert "return v / undefined_name" in err and "Traceback" not in err
    assert "site-packages" not in err and "datasources.py" not in err and "fix:" in err

    (tmp_path / "syntax.py").write_text("def load(:\n    pass\n")
    with pytest.raises(UserCodeError, match="importing your data file syntax.py raised SyntaxError") as ei:
        load_data(f"{tmp_path / 'syntax.py'}:load", (4,))
    assert "syntax.py" in ei.value.detail and "line 1" in ei.value.detail
    (tmp_path / "nan.py").write_text("import numpy as np\ndef load():\n    return np.full((3, 4), np.nan)\n")
    with pytest.raises(BadInput, match="NaN or infinity"):
        load_data(f"{tmp_path / 'nan.py'}:load", (4,))
    (tmp_path / "none.py").write_text("def load():\n    return None\n")
    with pytest.raises(BadInput, match=r"returned NoneType"):
        load_data(f"{tmp_path / 'none.py'}:load", (4,))


# --------------------------------------------------------------------------- the split
def test_split_never_shares_samples_and_does_not_depend_on_order():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (100, 4)).astype(np.float32)
    x[50] = x[10]  # a duplicate: both must land on the same side
    y = rng.integers(0, 3, 100)
    a = split(EvalData(x=x, y=y, source="user"))
    perm = rng.permutation(100)
    b = split(EvalData(x=x[perm], y=y[perm], source="user"))
    assert a.info["calibration"] in (20, 21) and a.info["shared"] == 0
    assert a.info["calibration"] + a.info["evaluation"] == 100
    np.testing.assert_array_equal(a.calibration, b.calibration)  # same samples, same order
    cal = {r.tobytes() for r in a.calibration}
    assert not any(r.tobytes() in cal for r in a.evaluation.x)
    assert len(a.evaluation.y) == len(a.evaluation.x)
    for n, k in ((16, 3), (32, 6), (1000, 200), (5000, 200), (2, 1)):
        assert split(EvalData(x=rng.uniform(0, 1, (n, 2)).astype(np.float32), y=None, source="user")).info[
            "calibration"] == k
    one = split(EvalData(x=x[:1], y=None, source="user"))
    assert one.calibration is None and one.info["calibration_source"] == "synthetic" and one.evaluation.n == 1


# --------------------------------------------------------------------------- statistics
def test_wilson_interval_and_class_coverage():
    lo, hi = wilson(8, 10)  # textbook values (Wilson 1927 / Newcombe 1998)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    ref = np.zeros((10, 4))
    ref[:7, 1] = 1
    ref[7:, 3] = 1
    assert class_coverage(ref) == {"classes": 4, "classes_reached": 2, "largest_class": 1, "largest_class_share": 0.7}
    assert class_coverage(np.array([[0.9], [0.8], [0.1]])) == {"classes": 2, "classes_reached": 2, "largest_class": 1,
                                                               "largest_class_share": 0.6667}
    assert class_coverage(np.zeros((5,))) is None


def test_data_spec_errors_name_the_four_forms(tmp_path):
    (tmp_path / "samples.txt").write_text("1 2 3")
    with pytest.raises(BadInput, match=r"samples.txt: unsupported data format .txt") as ei:
        parse_spec(tmp_path / "samples.txt")
    assert "folder of images" in ei.value.hint and ".csv" in ei.value.hint and "my_prep.py:load" in ei.value.hint
    with pytest.raises(BadInput, match="data function file .*missing.py does not exist"):
        parse_spec(f"{tmp_path / 'missing.py'}:load")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(BadInput, match="--classes applies to a folder of images or a CSV"):
        load_data(tmp_path / "x.npy", (4,), classes="a,b")
    with pytest.raises(BadInput, match="names b more than once"):
        load_data(tmp_path / "x.npy", (4,), classes="a,b,b")
