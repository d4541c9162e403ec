"""The published JSON Schema of report.json (``configs/schema/report-N.json``, shipped in the package).

``edgeprune schema`` prints the schema of the current format (:data:`REPORT_FORMAT` in
:mod:`edgeprune.pipeline.report.run_report`). Versioning: keys may be added within a version; a change that
removes or retypes a key, or tightens the schema so that a report of the same version no
longer validates, is a new version: a new file ``report-N+1.json`` and ``edgeprune-report/N+1``
(the older files stay, so reports already written keep a schema to validate against).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "configs" / "schema"


def format_version(fmt: str) -> int:
    """``"edgeprune-report/1"`` -> 1."""
    return int(fmt.rsplit("/", 1)[1])


def schema_path(version: Optional[int] = None) -> Path:
    if version is None:
        from edgeprune.pipeline.report.run_report import REPORT_FORMAT

        version = format_version(REPORT_FORMAT)
    return SCHEMA_DIR / f"report-{version}.json"


@lru_cache(maxsize=None)
def load_schema(version: Optional[int] = None) -> dict:
    return json.loads(schema_path(version).read_text())


def validation_errors(report: dict) -> list[str]:
    """Every way ``report`` differs from the schema of its own format (empty list: valid).

    Each error is one line: the JSON path and the validator's message."""
    import jsonschema

    try:
        version = format_version(str(report.get("format")))
        schema = load_schema(version)
    except (ValueError, IndexError, FileNotFoundError):
        return [f"format {report.get('format')!r} has no published schema (known: "
                + ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("report-*.json"))) + ")"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}" for e in errors]
