"""The one "skip here, fail under CI" rule for tests that need a tool of the machine.

A developer machine may lack sshd, the board venvs, the emulated board, gitlab-ci-local...:
the test skips with the reason. Under CI (``CI`` set, as ``.ci/run`` does) ``.ci/setup``
installs all of them, so a missing one is a defect: the test FAILS with the same reason.
"""
from __future__ import annotations

import os
from typing import Optional

import pytest


def under_ci() -> bool:
    return bool(os.environ.get("CI"))


def skip_or_fail(why: Optional[str]) -> None:
    """Nothing if ``why`` is empty; else skip (developer machine) or fail (CI) with ``why``."""
    if not why:
        return
    if under_ci():
        pytest.fail(why)
    pytest.skip(why)
