"""The Candidate dataclass writes the same ``cand-XX.json`` the dict records did: keys, values and
key order, for a converted, a trained, a skipped and a measured candidate; and reads it back."""
from __future__ import annotations

import json

import pytest

from edgeprune.pipeline.search.candidate import ABSENT, Candidate


def _converted(**kw) -> Candidate:
    base = dict(index=1, rate=0.05, name="cand-01-rate0.05",
                files={"keras": "cand-01-rate0.05.keras", "tflite": "cand-01-rate0.05.tflite",
                       "plan": "cand-01-rate0.05.plan.json"},
                params=1234, size_bytes=5678, flash_bytes=5678, sha256="ab" * 32,
                conversion={"quantize": "int8"}, fidelity={"score": 0.99, "score_name": "top-1 agreement"},
                widths={"conv": [32, 30]}, prediction={"params": 1234}, made_by={"criterion": "flow"},
                timings={"prune_s": 0.1, "convert_s": 1.0, "fidelity_s": 0.2, "save_s": 0.01},
                created_at="2026-01-01T00:00:00.000+00:00", pid=42, device=None,
                checks={"fidelity": {"ok": True}, "flash": {"ok": True}})
    base.update(kw)
    return Candidate(**base)


def test_converted_candidate_json_is_the_dict_record():
    c = _converted()
    old = {"format": "edgeprune-candidate/1", "index": 1, "rate": 0.05, "name": "cand-01-rate0.05", "files": c.files,
           "params": 1234, "size_bytes": 5678, "flash_bytes": 5678, "sha256": "ab" * 32,
           "conversion": {"quantize": "int8"}, "fidelity": c.fidelity, "widths": {"conv": [32, 30]},
           "prediction": {"params": 1234}, "made_by": {"criterion": "flow"}, "timings": c.timings,
           "created_at": "2026-01-01T00:00:00.000+00:00", "pid": 42, "device": None, "checks": c.checks}
    assert json.dumps(c.to_json()) == json.dumps(old)  # same keys, values and order
    back = Candidate.from_json(json.loads(json.dumps(c.to_json())))
    assert back == c and back.recovery is ABSENT and not back.reused


def test_recovery_key_present_when_training_even_if_untrained_and_vela_arena_after_device():
    c = _converted(recovery=None, vela={"npu_share": 1.0}, arena_calibration={"arena_bytes": 100})
    keys = list(c.to_json())
    assert keys[keys.index("made_by") + 1] == "recovery" and c.to_json()["recovery"] is None
    assert keys[-4:] == ["device", "vela", "arena_calibration", "checks"]
    assert Candidate.from_json(c.to_json()).recovery is None  # present, None: not ABSENT
    assert "recovery" not in _converted().to_json()


def test_skipped_candidate_json_order_and_device_phase_keys():
    c = Candidate(index=3, rate=0.15, name="cand-03-rate0.15", files={"plan": "cand-03-rate0.15.plan.json"},
                  params=10, size_bytes=900, flash_bytes=1000, sha256=None, skipped="predicted over", skip_budget=[1, 2],
                  skip_what="ram", skip_value=5, skip_limit=4, skip_resource_budget=[4, None],
                  prediction={"params": 10}, fidelity={"score": None, "skipped": True}, widths={},
                  timings={"prune_s": 0.1}, created_at="t", pid=1, device=None, checks={"fidelity": {"ok": None}})
    assert list(c.to_json()) == ["format", "index", "rate", "name", "files", "params", "size_bytes", "flash_bytes",
                                 "sha256", "skipped", "skip_budget", "skip_what", "skip_value", "skip_limit",
                                 "skip_resource_budget", "prediction", "fidelity", "widths", "timings", "created_at",
                                 "pid", "device", "checks"]
    assert c.skip_kind == "ram" and _converted().skip_kind == "flash"
    m = _converted(measurement={"latency_ms": {"median": 1.0}}, first_measurement={"x": 1}, measurement_cached=False)
    assert list(m.to_json())[-4:] == ["checks", "measurement", "first_measurement", "measurement_cached"]


def test_unknown_keys_are_kept_and_a_non_candidate_refused():
    d = dict(_converted().to_json(), future_key=[1, 2])
    c = Candidate.from_json(d)
    assert c.extra == {"future_key": [1, 2]} and c.to_json() == d
    with pytest.raises(ValueError):
        Candidate.from_json({"format": "something-else/1"})
    with pytest.raises(ValueError):
        Candidate.from_json({"format": "edgeprune-candidate/1", "index": 0})  # required keys missing
    assert not _converted(checks={"fidelity": {"ok": True}, "latency": {"ok": False}}).meets_all
