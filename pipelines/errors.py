"""Errors that end a step, each mapped to an exit code by the CLI (see docs/exit-codes)."""

from __future__ import annotations


class StepError(Exception):
    """A step could not do its job; the message is the one line printed on stderr."""

    exit_code = 1


class BatchRejected(StepError):
    """A batch failed to read or validate and went to quarantine."""


class Skipped(Exception):
    """Done, and downstream should be skipped (exit 99): e.g. a gate refused a challenger."""

    exit_code = 99


class RegistryConflict(StepError):
    """The champion moved since the gate evaluated against it (compare-and-set failed)."""

    exit_code = 3
