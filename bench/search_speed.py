"""Benchmark (issue 23): what a search costs, and what the fixed-rate path costs after it.

All rows in ONE bench run, on the bundled example, local device, int8, each ONE ``edgeprune run``
(a subprocess, the real CLI) with ``--runs 3 --warmup 1 --min-secs 0 --warmup-min-secs 0``:

1. the default engine with data (flow + compensation + global allocation), the full search, with
   screening (the default: candidates judged on their pruned Keras model first, only those near the
   fidelity stop converted; pipeline/search/host_screen.py);
2. the data-free engine (``--criterion paoding --no-compensate --allocation uniform``), also screening;
3. the default engine with ``--no-screen`` (every candidate converted, as before screening);
4. ``--rate <row 1's pick>`` with an EMPTY work cache (the schedule is walked, nothing reused);
5. the same with row 1's work cache (its plan is replayed: an unchanged CI pipeline).

Wall seconds AND the CPU seconds of the run's processes (user + system, from the children's
rusage: less sensitive to other jobs on a shared machine than wall time), the report's own
phase timings, the conversions made and saved by screening, and whether rows 3-5 give row 1's .tflite
bytes (sha256).

    python bench/search_speed.py

Writes bench/results/search_speed.{json,md}.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, timed_run, write  # noqa: E402

COMMON = ["--runs", "3", "--warmup", "1", "--min-secs", "0", "--warmup-min-secs", "0", "--force", "--json"]
DATA_FREE = ["--criterion", "paoding", "--no-compensate", "--allocation", "uniform"]


def one(name: str, extra: list[str], out: Path, cache: Path) -> dict:
    env = dict(os.environ, EDGEPRUNE_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "edgeprune", "run", "--out", str(out), *COMMON, *extra]
    run = timed_run(name, cmd, env)
    rep = run["report"]
    ch = rep["chosen"]
    cand = next((c for c in rep["candidates"] if ch and c["index"] == ch["index"]), None)
    t = rep["timings"]
    sc = rep.get("screen") or {}
    converted = sum(1 for c in rep["candidates"] if c["sha256"])
    return {"converted": converted, "screened": len(sc.get("screened", [])),
            "conversions_saved": sc.get("conversions_saved", 0), "on_demand": len(sc.get("converted_on_demand", [])),
            "margin": (sc.get("margin") or {}).get("score"),
            "row": name, "command": "edgeprune run " + " ".join(extra), "exit": run["exit"], "wall_s": run["wall_s"],
            "cpu_s": run["cpu_s"], "load_before": run["load_before"], "candidates": len(rep["candidates"]),
            "pick_rate": ch["rate"] if ch else None, "pick_bytes": cand["size_bytes"] if cand else None,
            "pick_sha256": cand["sha256"] if cand else None,
            "pick_fidelity": cand["fidelity"]["score"] if cand else None,
            "timings": {k: t.get(k) for k in ("load_s", "prune_s", "keras_s", "convert_s", "fidelity_s", "device_s", "total_s")},
            "load_parts": t.get("load"),  # load_s split: tensorflow import, model, data, reference outputs
            "notes": [n for n in rep["notes"] if n.startswith("--rate")]}


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(one("default engine, full search", [], tmp / "a", tmp / "cache-a"))
        rows.append(one("data-free engine, full search", DATA_FREE, tmp / "b", tmp / "cache-b"))
        rows.append(one("default engine, full search, --no-screen", ["--no-screen"], tmp / "n", tmp / "cache-n"))
        pick = rows[0]["pick_rate"]
        rows.append(one(f"--rate {pick:g}, empty work cache", ["--rate", f"{pick:g}"], tmp / "c", tmp / "cache-c"))
        rows.append(one(f"--rate {pick:g}, row 1's work cache", ["--rate", f"{pick:g}"], tmp / "d", tmp / "cache-a"))
        for r in rows:
            print(json.dumps(r), flush=True)
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    cpu_ratio = rows[0]["cpu_s"] / max(rows[1]["cpu_s"], 1e-9)
    payload = {"machine": machine(), "rows": rows, "default_over_data_free_wall": round(ratio, 2),
               "default_over_data_free_cpu": round(cpu_ratio, 2)}
    L = ["# Search speed (issue 23)", "",
         "Bundled example, local device, int8; one `edgeprune run` per row, all in one bench run "
         "(bench/search_speed.py). **wall** is upper-bounded by other jobs on the shared 2-core machine "
         "(`load` = 1-minute load average before the row); **cpu** = user + system seconds of the run's processes. "
         "Phase seconds are the report's own timings.", "",
         "| row | exit | candidates | converted (screened, saved, on demand) | pick | .tflite | agreement | same bytes as row 1 | wall s | cpu s | load | load_s / prune_s / keras_s / convert_s / fidelity_s / device_s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["timings"]
        L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %.1f | %.1f | %.1f | %s |" % (
            r["row"], r["exit"], r["candidates"],
            f"{r['converted']} ({r['screened']}, {r['conversions_saved']}, {r['on_demand']})" if r["margin"] is not None
            else f"{r['converted']} (no screening)", f"{r['pick_rate']:.3f}" if r["pick_rate"] is not None else "-",
            f"{r['pick_bytes']:,} B" if r["pick_bytes"] else "-",
            f"{r['pick_fidelity']:.4f}" if r["pick_fidelity"] is not None else "-",
            "-" if r is rows[0] or r is rows[1] else ("yes" if r["pick_sha256"] == rows[0]["pick_sha256"] else "**no**"),
            r["wall_s"], r["cpu_s"], r["load_before"],
            " / ".join("-" if t.get(k) is None else f"{t[k]:.1f}" for k in ("load_s", "prune_s", "keras_s", "convert_s", "fidelity_s", "device_s"))))
    ns = rows[2]
    L += ["", f"Default engine / data-free engine (both screening): **{ratio:.2f}x** wall, **{cpu_ratio:.2f}x** CPU "
          "(issue 23 asks <= 2.5x).",
          f"Screening on the default engine: {rows[0]['converted']} of {rows[0]['candidates']} candidates converted "
          f"({rows[0]['conversions_saved']} conversions saved, margin {rows[0]['margin']}), against {ns['converted']} "
          f"with --no-screen; same pick and .tflite bytes: {'yes' if ns['pick_sha256'] == rows[0]['pick_sha256'] else '**no**'}; "
          f"wall {rows[0]['wall_s']:.1f} s against {ns['wall_s']:.1f} s, CPU {rows[0]['cpu_s']:.1f} s against {ns['cpu_s']:.1f} s.", ""]
    write("search_speed", payload, "\n".join(L) + "\n" + _reading())
    return 0


def _reading() -> str:
    """The hand-written reading sections of the existing .md (from its first ``## `` heading on):
    kept below the regenerated table, so a re-run does not drop them."""
    from _common import RESULTS

    path = RESULTS / "search_speed.md"
    if not path.exists():
        return ""
    text = path.read_text()
    at = text.find("\n## ")
    return "" if at < 0 else text[at + 1:]


if __name__ == "__main__":
    sys.exit(main())
