"""The one error type the CLI turns into a clear message and an exit code.

Exit codes (stable, documented in the README and ``--help``):
  0  success (for ``run``: a candidate meets every budget and the fidelity threshold)
  2  bad input (unknown device, unparsable budget, missing/corrupt model or data, ...)
  3  ``run`` only: no candidate meets every limit (the report says which and by how much)
  4  the device could not be reached or used (connection, auth, host key, no runtime)
  5  ``run`` / ``bench`` with ``--baseline``: a figure regressed against the baseline beyond its tolerance
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NO_CANDIDATE = 3
EXIT_DEVICE = 4
EXIT_REGRESSION = 5


class EdgepruneError(Exception):
    """A failure the user can act on: ``message`` says what is wrong, ``hint`` how to fix it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class BadInput(EdgepruneError):
    exit_code = EXIT_BAD_INPUT


class DeviceError(EdgepruneError):
    """The device could not be reached or could not run the model (exit code 4)."""

    exit_code = EXIT_DEVICE


class UnsupportedModel(BadInput):
    """The model (or one of its layers) cannot be handled."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner cancelling the job): unwinds like Ctrl-C, so every board is cleaned
    up and released on the way out; the CLI exits 143 (128 + SIGTERM) instead of 130."""
