"""The candidates table of ``edgeprune run`` on the terminal, and the cell texts it shares
with ``report.md``.

Rules (checked by tests/test_run_table.py at COLUMNS=80 and 150):

- the table fits the terminal: below :data:`WIDE_MIN` columns a compact layout (fewer
  columns, the latency spread under the latency, short verdicts with the reasons below the
  table), so no header is cut, no row takes more than two lines, and a number is never
  split from its unit (the space between them is a no-break space);
- one size unit family: every size goes through :func:`edgeprune.devices.sizes.format_size`
  (SI: kB, MB), and the title says so;
- the accuracy column is the accuracy CHANGE against the original model, in points, with
  an explicit sign (``-0.5`` means half a point lost);
- the device is named once in the title.
"""
from __future__ import annotations

import re
from typing import Optional

from edgeprune.devices.sizes import format_size

WIDE_MIN = 104  # below this many columns: the compact layout
NBSP = "\u00a0"

__all__ = ["candidates_table", "keep_units", "print_kept", "latency_text", "ram_text", "accuracy_change_text", "verdict",
           "latency_stat", "WIDE_MIN"]


def latency_stat(report_or_settings: Optional[dict]) -> str:
    """The statistic budgets are checked on: ``settings.latency_stat`` (default p50)."""
    if not report_or_settings:
        return "p50"
    s = report_or_settings.get("settings", report_or_settings)
    return s.get("latency_stat") or "p50"


def _lat_value(lat: dict, stat: str) -> float:
    if stat in ("p50", "median"):
        return float(lat.get("p50", lat["median"]))
    return float(lat.get(stat, lat["median"]))


def spread_text(m: Optional[dict]) -> str:
    """'±0.0002': half the interquartile range of the timed runs ('' for an estimate)."""
    if not m or m.get("latency_is_estimate"):
        return ""
    iqr = m["latency_ms"].get("iqr")
    if iqr is None:
        return ""
    return "±<0.001" if iqr / 2 < 0.0005 else f"±{iqr / 2:.3f}"


def latency_text(c: dict, stat: str = "p50", *, spread: bool = True) -> str:
    """'0.082 ms ±0.00015' (the stated statistic and half the IQR), '1.20 ms (est.)', or '-'."""
    m = c.get("measurement")
    if not m:
        return "-"
    v = _lat_value(m["latency_ms"], stat)
    if m.get("latency_is_estimate"):
        return f"{v:.3f} ms (est.)"
    sp = spread_text(m) if spread else ""
    return f"{v:.3f} ms" + (f" {sp}" if sp else "")


def ram_text(c: dict) -> str:
    m = c.get("measurement")
    if not m or m.get("ram_bytes") is None:
        return "-"
    return format_size(m["ram_bytes"])


def accuracy_change_text(fr: dict) -> str:
    """Accuracy change against the original model in points, explicit sign: '-0.5', '+0.1', '±0.0'."""
    drop = fr.get("accuracy_drop")
    if drop is None:
        return "-"
    change = -float(drop)
    if abs(change) < 0.05:
        return "±0.0"
    return f"{change:+.1f}"


def screened_text(c: dict) -> str:
    """A screened candidate's line: its Keras score against the threshold and the margin."""
    s, ck = c["screen"], c["checks"]["fidelity"]
    parts = []
    if ck.get("min") is not None:
        parts.append(f"{s['keras']['score']:.4f} >= {ck['min']:g} + margin {s['margin']:.4f}")
    if ck.get("max_accuracy_drop") is not None and s.get("margin_points") is not None:
        parts.append(f"accuracy drop {s['keras']['accuracy_drop']:.2f} + {s['margin_points']:.2f} <= {ck['max_accuracy_drop']:g} points")
    return "screened on Keras (~score, ~size predicted): " + " and ".join(parts) + "; not converted"


def verdict(c: dict, chosen_index, *, short: bool = False) -> str:
    """What happened to a candidate. ``short`` (compact layout): at most ~14 characters, the
    reason is then listed under the table."""
    if c["index"] == chosen_index:
        return "CHOSEN"
    if c.get("skipped"):
        what = {"ram": "RAM", "latency": "latency"}.get(c.get("skip_what"), "flash")
        return "not converted" if short else f"not converted (predicted over {what})"
    if (c.get("screen") or {}).get("screened"):
        return "screened" if short else "screened on Keras"
    failed = [k for k, v in c["checks"].items() if not v["ok"]]
    noisy = [k for k, v in c["checks"].items() if v.get("within_noise")]
    if noisy and not [k for k in failed if k not in noisy]:
        return "within noise" if short else "within noise: " + ", ".join(noisy)
    if failed:
        return "fails " + ", ".join("RAM" if k == "ram" else k for k in failed)
    if c.get("measurement") is None:
        if short:
            return "not measured"
        nm = c.get("not_measured") or ""
        return "host ok; not measured" if "already meets" in nm or not nm else "not measured: " + nm
    return "meets all"


def _nb(text: str) -> str:
    """Keep a number with its unit: no-break spaces inside a cell."""
    return text.replace(" ", NBSP)


_UNIT = re.compile(r"(\d) (B|kB|MB|GB|TB|ms|s|pt|points)\b")


def keep_units(text: str) -> str:
    """Free text for the terminal: a no-break space between each number and its unit, so a
    wrapped line never leaves '538' at the end of one line and 'kB' at the start of the next."""
    return _UNIT.sub(lambda m: m.group(1) + NBSP + m.group(2), text)


def print_kept(console, obj, *, markup: bool = True) -> None:
    """Print text (rich markup) or a renderable on ``console``, wrapped to its width without ever
    breaking a number from its unit, with plain spaces in the output (so it can be searched and
    copied): laid out with no-break spaces, which are turned back into spaces afterwards."""
    from rich.segment import Segment, Segments
    from rich.text import Text

    if isinstance(obj, str):
        obj = Text.from_markup(keep_units(obj)) if markup else Text(keep_units(obj))
    segs = []
    for line in console.render_lines(obj, console.options, pad=False):
        segs += [Segment(s.text.replace(NBSP, " "), s.style, s.control) for s in line]
        segs.append(Segment.line())
    console.print(Segments(segs), soft_wrap=True)


def candidates_table(report: dict, width: Optional[int] = None):
    """The rich Table of the candidates, laid out for ``width`` columns (default: the terminal's)."""
    from rich import box
    from rich.table import Table

    if width is None:
        import shutil

        width = shutil.get_terminal_size((80, 24)).columns
    compact = width < WIDE_MIN
    ch = report.get("chosen")
    chosen_index = ch["index"] if ch else None
    dev = report["device"]
    stat = latency_stat(report)
    dev_name = dev["name"] if dev["name"] == dev["kind"] else f"{dev['name']} ({dev['kind']})"
    title = (f"{report['model']['name']} on {dev_name}, {report['settings']['quantize']}; "
             f"sizes in SI units (1 kB = 1000 B)")
    mcu = dev["kind"] in ("mcu", "ethos-u")  # flash figure: model + runtime, or Vela's
    size_head = "flash" if mcu else ".tflite"
    cols = [("#", "right"), ("rate", "right")]
    if not compact:
        cols.append(("params", "right"))
    cols += [(size_head, "right"), ("fidelity", "right"), ("accuracy change" if not compact else "acc. change", "right"),
             (f"latency {stat}", "right"), ("RAM", "right"), ("verdict", "left")]
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
              pad_edge=not compact, padding=(0, 1), collapse_padding=compact)
    for name, justify in cols:
        longest = max(len(w) for w in name.split())
        numeric = name not in ("verdict",)
        t.add_column(name, justify=justify, min_width=longest, no_wrap=numeric and " " not in name,
                     overflow="fold")
    notes: dict = {}
    for c in report["candidates"]:
        fr = c["fidelity"]
        v = verdict(c, chosen_index, short=compact)
        style = "bold green" if v == "CHOSEN" else ("red" if v.startswith("fails") else None)
        size = c["flash_bytes"] if mcu else c["size_bytes"]
        lat = latency_text(c, stat, spread=False)
        sp = spread_text(c.get("measurement"))
        lat_cell = _nb(lat) + ((("\n" if compact else " ") + sp) if sp else "")
        scr = c.get("screen") or {}
        score = ("~" + f"{scr['keras']['score']:.4f}" if scr.get("screened") and scr["keras"].get("score") is not None
                 else "-" if fr.get("score") is None else f"{fr['score']:.4f}")  # ~: the Keras model's score
        row = [str(c["index"]), f"{c['rate']:.2f}"]
        if not compact:
            row.append(f"{c['params']:,}")
        size_cell = ("~" if c.get("skipped") or scr.get("screened") else "") + format_size(size)  # ~: predicted, never converted
        row += [_nb(size_cell), score, accuracy_change_text(fr), lat_cell, _nb(ram_text(c)), v]
        t.add_row(*row, style=style)
        if c.get("skipped") and c.get("skip_what", "flash") != "flash":
            why = "not converted: " + c["skipped"]
        elif c.get("skipped"):
            why = "not converted: size (~) predicted over the flash budget even with the margin"
        elif scr.get("screened"):
            why = screened_text(c)
        elif compact and v == "not measured":
            why = c.get("not_measured") or "not measured"
            why = why if why.startswith("not measured") else "not measured: " + why
        elif compact and v == "within noise":
            why = verdict(c, chosen_index, short=False)
        else:
            continue
        notes.setdefault(why, []).append(c["rate"])
    if notes:
        t.caption = "\n".join(keep_units(f"{_rates(r)}: {why}") for why, r in notes.items())
        t.caption_justify = "left"
    return t


def _rates(rates: list) -> str:
    """'rate 0.05', 'rates 0.05-0.50' (consecutive candidates), 'rates 0.05, 0.20'."""
    if len(rates) == 1:
        return f"rate {rates[0]:.2f}"
    if len(rates) > 2:
        return f"rates {rates[0]:.2f}-{rates[-1]:.2f}"
    return "rates " + ", ".join(f"{r:.2f}" for r in rates)
