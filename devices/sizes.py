"""Byte sizes as people write them in profiles and on the command line.

``parse_size("2MB") == 2_000_000`` (SI: kB, MB, GB are powers of 10) and
``parse_size("512KiB") == 524_288`` (IEC: KiB, MiB, GiB are powers of 2). A bare number is
bytes. Parsing is done by :mod:`humanfriendly` with ``binary=False``; before that the unit is
checked against a closed list, because humanfriendly matches units by their first letter and
would read "2 parsecs" as 2 petabytes.
"""
from __future__ import annotations

import re

from edgeprune.errors import BadInput

__all__ = ["parse_size", "format_size", "SIZE_HINT", "SIZE_UNITS_NOTE"]

SIZE_HINT = (
    "write bytes as a number (2000000) or with a unit: '2MB' / '300kB' (SI, 10^6 / 10^3) or "
    "'512KiB' / '2MiB' (binary, 2^10 / 2^20)"
)

# Accepted unit spellings (case-insensitive). Single letters k/m/g/t are SI like humanfriendly.
_PREFIXES = {"k": "kilo", "m": "mega", "g": "giga", "t": "tera"}
_BIN = {"k": "kibi", "m": "mebi", "g": "gibi", "t": "tebi"}
_UNITS: set[str] = {"b", "byte", "bytes"}
for _p, _name in _PREFIXES.items():
    _UNITS |= {_p, _p + "b", _name + "byte", _name + "bytes"}
for _p, _name in _BIN.items():
    _UNITS |= {_p + "i", _p + "ib", _name + "byte", _name + "bytes"}

_SPLIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Return the number of bytes in ``text`` ("2MB", "512KiB", "300kB", "1048576", 4096).

    Raises :class:`~edgeprune.errors.BadInput` (with a fix hint) for anything else: an unknown
    unit, a negative or fractional byte count, an empty string.
    """
    if isinstance(text, bool):
        raise BadInput(f"{what}: {text!r} is not a size", SIZE_HINT)
    if isinstance(text, int):
        if text < 0:
            raise BadInput(f"{what}: {text} is negative", SIZE_HINT)
        return text
    if isinstance(text, float):
        if text < 0 or text != int(text):
            raise BadInput(f"{what}: {text!r} is not a whole, non-negative number of bytes", SIZE_HINT)
        return int(text)
    if not isinstance(text, str):
        raise BadInput(f"{what}: {text!r} is not a size", SIZE_HINT)
    match = _SPLIT.match(text)
    if not match:
        raise BadInput(f"{what}: cannot read {text!r} as a size", SIZE_HINT)
    number, unit = match.groups()
    if unit and unit.lower() not in _UNITS:
        raise BadInput(f"{what}: unknown unit {unit!r} in {text!r}", SIZE_HINT)
    if "." in number and unit.lower() in ("", "b", "byte", "bytes"):
        raise BadInput(f"{what}: {text!r} is not a whole number of bytes", SIZE_HINT)
    import humanfriendly

    try:
        value = humanfriendly.parse_size(f"{number} {unit}".strip(), binary=False)
    except humanfriendly.InvalidSize as exc:
        raise BadInput(f"{what}: cannot read {text!r} as a size ({exc})", SIZE_HINT) from None
    if value != int(value):
        raise BadInput(f"{what}: {text!r} is not a whole number of bytes", SIZE_HINT)
    return int(value)


def format_size(n: int | float | None, *, signed: bool = False) -> str:
    """THE size formatter of edgeprune: SI units (B, kB, MB, GB, TB; powers of 10, as the
    budgets are written), three significant figures, trailing zeros dropped.

    ``format_size(2_000_000) == '2 MB'``, ``format_size(837_984) == '838 kB'``,
    ``format_size(51_720_192) == '51.7 MB'``, ``format_size(None) == '-'``; ``signed=True``
    writes ``+`` before positive figures (differences). Every size on the screen and in the
    reports goes through here, so one screen never mixes unit families.
    """
    if n is None:
        return "-"
    n = int(round(n))
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    a = abs(n)
    if a < 1000:
        return f"{sign}{a} B"
    for unit, scale in (("kB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12)):
        v = a / scale
        if v < 1000 or unit == "TB":
            text = f"{v:.{2 if v < 10 else 1 if v < 100 else 0}f}"
            if float(text) >= 1000 and unit != "TB":  # 999.6 kB rounds to 1000: say 1 MB
                continue
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return f"{sign}{text} {unit}"
    raise AssertionError("unreachable")


SIZE_UNITS_NOTE = "sizes in SI units: 1 kB = 1000 B, 1 MB = 10^6 B"
