"""What `edgeprune run` prints on an 80-column terminal, and how many conversions the flash
prediction saves.

    python bench/run_screen.py

1. ``COLUMNS=80 python -m edgeprune run`` on the bundled example (local device): the
   stdout, its longest line, and whether any header is cut (an ellipsis).
2. ``edgeprune run --budget 200KB`` on the example with prediction (the default) and with
   ``--no-predict``: candidates converted, conversions saved, host-phase seconds, and whether
   the answer (exit code, chosen candidate) is the same.

Each run is a child process in a fresh temporary run dir. Writes
``bench/results/run_screen.md`` and ``.json``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run(args: list[str], columns: int = 80) -> tuple[int, str, dict, float]:
    with tempfile.TemporaryDirectory(prefix="edgeprune-screen-") as tmp:
        out = Path(tmp) / "run"
        env = dict(os.environ, COLUMNS=str(columns), TF_CPP_MIN_LOG_LEVEL="3")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "edgeprune", "run", "--out", str(out), *args],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 3):
            raise SystemExit(proc.stderr[-3000:])
        report = json.loads((out / "report.json").read_text())
        return proc.returncode, proc.stdout.replace(tmp, "<tmp>"), report, wall


def main() -> None:
    code, text, report, wall = run([])
    lines = text.splitlines()
    longest = max(len(ln) for ln in lines)
    screen = {"exit_code": code, "longest_line": longest, "lines": len(lines), "cut": "…" in text, "wall_s": round(wall, 1)}

    rows = {}
    for name, extra in (("predict", []), ("no-predict", ["--no-predict"])):
        code, _, rep, wall = run(["--budget", "200KB", *extra])
        cands = rep["candidates"]
        t = rep["timings"]
        rows[name] = {"exit_code": code, "candidates": len(cands),
                      "converted": sum(1 for c in cands if not c.get("skipped")),
                      "conversions_saved": rep["prediction"]["conversions_saved"],
                      "convert_s": t["convert_s"], "fidelity_s": t["fidelity_s"],
                      "host_s": round(t["prune_s"] + t["convert_s"] + t["fidelity_s"] + t["save_s"], 2),
                      "wall_s": round(wall, 1), "chosen": (rep["chosen"] or {}).get("sha256"),
                      "reasons": rep["reasons"], "calibration": rep["prediction"]["calibration"],
                      "stop": rep["stop"]}
    payload = {"screen": screen, "screen_text": text, "prediction": rows,
               "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    p, n = rows["predict"], rows["no-predict"]
    md = [
        "# The run screen at 80 columns, and conversions saved by prediction",
        "",
        f"Created {payload['created_at']} by `python bench/run_screen.py` (bundled example, local device, "
        "each run a child process in a fresh run dir).",
        "",
        "## `COLUMNS=80 edgeprune run`",
        "",
        f"- longest line: **{longest}** characters ({len(lines)} lines); a cut header or cell (…): "
        f"{'YES' if screen['cut'] else 'none'}; exit code {screen['exit_code']}",
        "",
        "```",
        text.rstrip(),
        "```",
        "",
        "## `edgeprune run --budget 200KB`: prediction vs `--no-predict`",
        "",
        "| | candidates | converted | conversions saved | convert s | host phase s | whole run s | exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(f"| {name} | {r['candidates']} | {r['converted']} | {r['conversions_saved']} | {r['convert_s']:.1f} "
                  f"| {r['host_s']:.1f} | {r['wall_s']:.1f} | {r['exit_code']} |")
    md += ["",
           f"Conversions made: {p['converted']} with prediction, {n['converted']} without "
           f"({n['converted'] - p['converted']} fewer); {p['conversions_saved']} candidates were skipped as predicted "
           "over the budget (the report's `prediction.conversions_saved`). The candidate counts differ because "
           "without prediction every candidate is converted and the search stops at the first fidelity failure, "
           "while the skipped candidates' fidelity is never evaluated, so pruning goes on until a converted "
           "candidate fails it.",
           "",
           f"Same answer: exit {p['exit_code']} / {n['exit_code']}, chosen "
           f"{'the same' if p['chosen'] == n['chosen'] else 'DIFFERENT'}. "
           f"Calibration on candidate 0: {json.dumps(p['calibration'])}.",
           "",
           f"Stop: predict {p['stop']}, no-predict {n['stop']}.",
           "",
           "Reasons (predict): " + "; ".join(p["reasons"]),
           "",
           "Reasons (no-predict): " + "; ".join(n["reasons"]), ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "run_screen.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "run_screen.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
