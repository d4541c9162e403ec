"""The run table on an 80- and a 150-column terminal: `edgeprune run` on the bundled example
(real run, child process with COLUMNS set), plus the same report made harder (long device name,
every verdict, a microcontroller) rendered at both widths."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from edgeprune.devices.sizes import format_size
from edgeprune.pipeline.report.run_table import WIDE_MIN, candidates_table, print_kept

pytestmark = pytest.mark.slow  # the fast subset (-m 'not slow') skips this module

UNITS = re.compile(r"\b(KiB|MiB|GiB|KB|Kb)\b")
FAST = ["--step", "0.1", "--max-rate", "0.3", "--num-runs", "5", "--min-secs", "0.2", "--warmup-min-secs", "0.05"]


def _cli(out_dir, columns: int, *extra) -> tuple[str, dict]:
    env = dict(os.environ, COLUMNS=str(columns), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("LINES", None)
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "run", "--out", str(out_dir), *FAST, *extra],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    return proc.stdout, json.loads((out_dir / "report.json").read_text())


def _table_rows(text: str) -> dict[int, list[str]]:
    """Rows of the printed table by candidate index: a row's first line starts with the index,
    its other lines (wrapped cells) follow until the next index or the end of the table."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.fullmatch(r"\s*┡?[─━╇]{10,}┩?\s*", ln))
    rows: dict[int, list[str]] = {}
    current = None
    for ln in lines[start + 1:]:
        if not ln.strip() or ln.lstrip().startswith("└"):
            break
        m = re.match(r"^[│\s]*(\d+)\s*│?\s+\d\.\d\d\s", ln)
        if m:
            current = int(m.group(1))
            rows[current] = [ln]
        else:
            rows[current].append(ln)
    return rows


def check_screen(text: str, report: dict, width: int) -> None:
    lines = text.splitlines()
    assert lines, "nothing printed"
    too_long = [ln for ln in lines if len(ln) > width]
    assert not too_long, f"lines over {width} columns: {too_long}"
    assert "…" not in text, "a cut cell or header"
    assert "\u00a0" not in text  # no-break spaces are for layout only
    assert not UNITS.search(text), f"another size unit family: {UNITS.search(text).group(0)}"
    assert "SI units" in text
    dev = report["device"]
    assert f"{dev['name']} ({dev['kind']})" not in text or dev["name"] != dev["kind"]
    assert text.count(f"on {dev['name']}") == 1  # named once
    compact = width < WIDE_MIN
    heads = ["#", "rate", "fidelity", "RAM", "verdict", "latency p50"]
    heads += ["acc.", "change"] if compact else ["accuracy change", "params"]
    header_block = "\n".join(lines[:6])
    for h in heads:
        assert h in header_block, f"header {h!r} missing or cut at {width} columns"
    rows = _table_rows(text)
    assert sorted(rows) == [c["index"] for c in report["candidates"]]
    for i, row in rows.items():
        assert len(row) <= 2, f"row {i} takes {len(row)} lines: {row}"
    for c in report["candidates"]:
        row = " ".join(rows[c["index"]])
        size = c["flash_bytes"] if dev["kind"] == "mcu" else c["size_bytes"]
        assert format_size(size) in row, f"{format_size(size)} split or missing in {row!r}"  # number + unit together
        drop = c["fidelity"].get("accuracy_drop")
        if drop is not None:
            change = -drop
            want = "±0.0" if abs(change) < 0.05 else f"{change:+.1f}"
            assert want in row
        m = c.get("measurement")
        if m and not m.get("latency_is_estimate"):
            assert f"{m['latency_ms']['p50']:.3f} ms" in rows[c["index"]][0]
            assert "±" in row  # the spread next to the latency
        if m and m.get("ram_bytes"):
            assert format_size(m["ram_bytes"]) in row


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "run"
    text80, report = _cli(out, 80)
    text150, report2 = _cli(out, 150, "--resume")  # same candidates and cached measurement
    assert report2["device_runs"]["made"] == 0
    return text80, text150, report


def test_run_screen_at_80_columns(real_run):
    text80, _, report = real_run
    assert report["chosen"] is not None
    check_screen(text80, report, 80)
    assert "params" not in "\n".join(text80.splitlines()[:6])  # the compact layout


def test_run_screen_at_150_columns(real_run):
    _, text150, report = real_run
    check_screen(text150, report, 150)
    assert max(len(ln) for ln in text150.splitlines()) > 80  # the wide layout uses the room
    assert "chosen: rate" in text150 and "accuracy change" in text150


def _render(report: dict, width: int) -> str:
    con = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    print_kept(con, candidates_table(report, width))
    return con.export_text()


def test_harder_report_at_both_widths(real_run):
    """Every verdict, a long device name, big numbers and a noisy latency in one table."""
    _, _, report = real_run
    rep = copy.deepcopy(report)
    rep["device"].update(name="pi-zero-2w-living-room", kind="ssh")
    rep["model"]["name"] = "mobilenet_v1_0.25_visual_wake_words"
    base = rep["candidates"][0]
    measured = next(c for c in rep["candidates"] if c.get("measurement"))
    cands = []
    for i, kind in enumerate(["fails", "skipped", "noise", "not_measured", "chosen", "fails2"]):
        c = copy.deepcopy(base)
        c.update(index=i, rate=round(0.05 * i, 2), params=12_345_678 - i, size_bytes=987_654_321 - i * 1000,
                 flash_bytes=987_654_321 - i * 1000, measurement=None, not_measured=None, skipped=None)
        if kind == "fails":
            c["checks"] = {"fidelity": {"ok": False}, "flash": {"ok": False}}
        elif kind == "skipped":
            c["skipped"] = "predicted .tflite 988 MB (at least 938 MB with the 5% margin) is over the 200 kB budget"
            c["fidelity"] = {"score": None, "accuracy_drop": None}
            c["checks"] = {"fidelity": {"ok": None}, "flash": {"ok": False}}
        elif kind in ("noise", "chosen"):
            c["measurement"] = copy.deepcopy(measured["measurement"])
            c["measurement"]["latency_ms"].update(p50=1234.5678, median=1234.5678, iqr=56.789)
            c["measurement"]["ram_bytes"] = 3_456_789_012
            c["checks"] = {"fidelity": {"ok": True}, "flash": {"ok": True},
                           "latency": {"ok": kind == "chosen", "within_noise": kind == "noise"}, "ram": {"ok": True}}
        elif kind == "not_measured":
            c["not_measured"] = "not measured: rate 0.20 (a larger rate) already meets every budget"
            c["checks"] = {"fidelity": {"ok": True}, "flash": {"ok": True}}
        else:
            c["checks"] = {"fidelity": {"ok": False}, "flash": {"ok": True}}
            c["fidelity"] = dict(base["fidelity"], accuracy_drop=12.34)
        cands.append(c)
    rep["candidates"] = cands
    rep["chosen"] = {"index": 4}
    for width in (80, 150):
        text = _render(rep, width)
        check_screen(text, rep, width)
        assert "1234.568 ms" in text and "±28.39" in text and "~988 MB" in text and "3.46 GB" in text
        assert "-12.3" in text and "within noise" in text and "not converted" in text
        assert "pi-zero-2w-living-room (ssh)" in text
    mcu = copy.deepcopy(rep)
    mcu["device"].update(name="stm32h7", kind="mcu")
    text = _render(mcu, 80)
    check_screen(text, mcu, 80)
    assert any(ln.split()[:4] == ["#", "rate", "flash", "fidelity"] for ln in text.splitlines()[:6])
