"""Serial vs parallel device phase: ``edgeprune run --measure-all`` on the bundled example with
4 host-passing candidates (--step 0.1 --max-rate 0.3), measured on one board and on two.

The farm is the tests' one (tests/labgrid_farm.py): a real labgrid-coordinator and exporter on
127.0.0.1 and two loopback OpenSSH "boards" (both on THIS machine, so the two boards share its
CPU cores: the parallel speed-up here is bounded by the machine, not by the farm). Rows:

- ``labgrid, 1 place``: a kind-labgrid profile naming one place (serial device phase);
- ``labgrid, 2 places``: the same profile with tags matching both places (parallel);
- ``ssh, 1 board`` / ``ssh, 2 boards``: plain SSH profiles, ``--device a [--device b]``.

The candidates are built once (host phase); each row then runs ``--resume`` on a copy of that
run dir without its measurement cache, so all 4 candidates are measured anew, ``--repeats``
times (rows interleaved, medians reported: the machine is shared and single runs are noisy).
The device-phase time is ``timings.device_s`` of report.json (the phase's wall time);
``sum of measurement s`` adds up each measurement's own wall time (connect, lock, copy, run,
clean up).

    python bench/farm.py [--runs 300] [--repeats 3]

Writes bench/results/farm.json and farm.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
RESULTS = HERE / "results"

import labgrid_farm  # noqa: E402
import sshd  # noqa: E402


def one(name: str, devices: list[Path], out: Path, runs: int, *, resume: bool = False) -> dict:
    argv = [sys.executable, "-m", "edgeprune", "run", "--json", "--out", str(out), "--step", "0.1", "--max-rate", "0.3",
            "--min-fidelity", "0.9", "--runs", str(runs), "--warmup", "10", "--min-secs", "0", "--warmup-min-secs", "0",
            "--measure-all"] + (["--resume"] if resume else [])
    for d in devices:
        argv += ["--device", str(d)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rep = json.loads(proc.stdout)
    measured = [c for c in rep["candidates"] if c["measurement"]]
    return {
        "name": name, "boards": rep["device"]["boards"], "candidates_measured": len(measured),
        "device_runs_made": rep["device_runs"]["made"], "device_s": rep["timings"]["device_s"],
        "board_s": round(sum(c["measurement"]["wall_s"] for c in measured), 2),
        "median_latency_ms": {f"{c['rate']:.2f}": round(c["measurement"]["latency_ms"]["median"], 3) for c in measured},
        "measured_on": {f"{c['rate']:.2f}": c["measurement"]["device"] for c in measured},
        "chosen_rate": (rep["chosen"] or {}).get("rate"), "run_wall_s": round(wall, 1),
    }


def fresh_copy(prepared: Path, dest: Path) -> Path:
    """The prepared run dir (candidates built and converted once) without its measurement cache:
    ``--resume`` then reuses every candidate and measures all of them again."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(prepared, dest)
    for name in ("measurements.json", "report.json", "report.md", "report.png", "best.tflite"):
        (dest / name).unlink(missing_ok=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    why = labgrid_farm.available()
    if why:
        raise SystemExit(why)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-farm-bench-") as tmp:
        tmp = Path(tmp)
        farm = labgrid_farm.Farm.start(tmp / "farm", prefix="bench", hold_s=0)
        try:
            one_place = farm.profile_yaml(tmp / "pi-place.yaml", place="bench-a")
            two_places = farm.profile_yaml(tmp / "pi-farm.yaml", tags=True)
            ssh = []
            for i, srv in enumerate(farm.boards):
                p = srv.profile_yaml(tmp / f"pi-{'ab'[i]}.yaml", name=f"pi-{'ab'[i]}", python=sys.executable,
                                     key_file=farm.boards[0].user_key)
                ssh.append(p)
            plan = [("labgrid, 1 place", [one_place]), ("labgrid, 2 places", [two_places]),
                    ("ssh, 1 board", ssh[:1]), ("ssh, 2 boards", ssh)]
            print("preparing the candidates (host phase, once)", file=sys.stderr, flush=True)
            prepared = tmp / "prepared"
            one("prepare", ssh[:1], prepared, args.runs)
            raw: dict = {name: [] for name, _ in plan}
            for rep in range(args.repeats):  # rows interleaved, so slow spells of the machine spread over all
                for name, devs in plan:
                    print(f"repeat {rep + 1}: {name}", file=sys.stderr, flush=True)
                    raw[name].append(one(name, devs, fresh_copy(prepared, tmp / "run"), args.runs, resume=True))
            for name, _ in plan:
                runs_ = raw[name]
                row = dict(runs_[len(runs_) // 2])
                times = sorted(r["device_s"] for r in runs_)
                row["device_s"] = round(statistics.median(times), 2)
                row["device_s_all"] = times
                row["board_s"] = round(statistics.median(r["board_s"] for r in runs_), 2)
                rows.append(row)
        finally:
            farm.stop()
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), Python "
                       f"{platform.python_version()}", "runs": args.runs, "warmup": 10,
            "command": "edgeprune run --measure-all --step 0.1 --max-rate 0.3 --min-fidelity 0.9 (bundled example, int8)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "farm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = ["# Board farm: serial vs parallel device phase", "",
             f"`python bench/farm.py --runs {args.runs} --repeats {args.repeats}`. {meta['command']}, `--runs {args.runs} --warmup 10 "
             "--min-secs 0 --warmup-min-secs 0` (a fixed number of inferences). The candidates are built once; every "
             f"row then runs `--resume` on a copy without the measurement cache (all 4 measured anew), {args.repeats} "
             f"times, rows interleaved; the table gives the median device-phase time and all of them. Boards: loopback OpenSSH sshds on this machine "
             f"({meta['machine']}); labgrid rows go through a real labgrid-coordinator + exporter on 127.0.0.1 and "
             "acquire/release a place per measurement.", "",
             "| setup | boards | candidates measured | device phase s (wall, median) | all repeats s | sum of measurement s (median) | speed-up vs 1 board | chosen rate |",
             "|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in rows:
        kind = r["name"].split(",")[0]
        if len(r["boards"]) == 1:
            base[kind] = r["device_s"]
        speed = base.get(kind, r["device_s"]) / r["device_s"] if r["device_s"] else float("nan")
        lines.append(f"| {r['name']} | {', '.join(r['boards'])} | {r['candidates_measured']} | {r['device_s']:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in r['device_s_all'])} | {r['board_s']:.2f} | {speed:.2f}x | "
                     f"{r['chosen_rate']} |")
    lines += ["", "Median latency (ms) per rate and the board that measured it:", ""]
    for r in rows:
        per = ", ".join(f"{k}: {v} ({r['measured_on'][k]})" for k, v in r["median_latency_ms"].items())
        lines.append(f"- {r['name']}: {per}")
    lines += ["", "Both boards are this machine's loopback sshds: two runners at once share its cores (and other jobs "
              "ran on it), so the latency measured in the parallel rows is not that of two real boards and the "
              "speed-up is bounded by the machine; on real boards each runner has its board to itself. Other jobs used "
              "the same two cores while this ran: single repeats differ by tens of percent (see the column of all "
              "repeats), hence the medians."]
    (RESULTS / "farm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
