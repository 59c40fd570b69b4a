"""Fault injection for the crash tests: named points at every step boundary of the commands
that change state (validate, retrain and its stages, promote, rollback).

Only tests set these variables; unset (always, outside tests) a point costs one dictionary
lookup.

- ``MLOPS_TEST_KILL_AT=<point>``: the process sends itself SIGKILL when it reaches that
  point (not an exception: no ``finally`` or ``atexit`` runs, exactly like ``kill -9``).
  ``<point>#N`` kills on the N-th time the point is reached.
- ``MLOPS_TEST_TRACE=<file>``: each point reached is appended to the file, so a test can
  list the boundaries a command passes and then kill it at each one.
- ``MLOPS_TEST_PAUSE_AT=<point>=<file>``: at that point, wait until ``<file>`` exists (a
  barrier for race tests); ``<file>.ready.<pid>`` is created first to say "I am here".
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_hits: dict[str, int] = {}


def point(name: str) -> None:
    trace = os.environ.get("MLOPS_TEST_TRACE")
    kill = os.environ.get("MLOPS_TEST_KILL_AT")
    pause = os.environ.get("MLOPS_TEST_PAUSE_AT")
    if not (trace or kill or pause):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"{name}\n")
    if pause:
        where, _, barrier = pause.partition("=")
        if where == name and barrier:
            Path(f"{barrier}.ready.{os.getpid()}").touch()
            while not Path(barrier).exists():
                time.sleep(0.01)
    if kill:
        where, _, nth = kill.partition("#")
        if where == name and _hits[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
