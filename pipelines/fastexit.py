"""Ending a step's process without the interpreter's teardown.

A step's process has imported pandas and some of scikit-learn, MLflow, Great Expectations or
Evidently. Once its work is done and its exit code known, Python still frees every object of
every module before the process ends: ~1-1.3 s on this project's 2-core machine (a bare
Evidently script: 8.0 s, against 6.7 s when it ends in ``os._exit``), paid by every task of a
nightly run and by each of the three DVC stages of a retrain. So the ``mlops`` command and its
MLflow helper end like this:

- :func:`arm` first thing: its exit handler is the first registered, so it runs last;
- :func:`leave` with the exit code once the work is done: Python's exit goes on as usual
  (non-daemon threads joined, then every library's exit handler: MLflow's, loky's, temporary
  folders' finalizers), and the last handler flushes the logs and the standard streams and
  ends the process with ``os._exit(code)``.

An uncaught exception takes Python's usual exit (its traceback, its teardown, exit code 1).
Nothing a step leaves depends on the teardown: each must already survive ``kill -9`` at any
line, and this is gentler (every write flushed, every exit handler run).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import NoReturn

_code: list[int] = []


def _end() -> None:
    if not _code:  # not through leave(): an uncaught exception, Python's usual exit
        return
    logging.shutdown()  # (registered when logging was imported, before arm(): it would run after this)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (its reader gone) or stream
            stream.flush()
    os._exit(_code[0])


def arm() -> None:
    atexit.register(_end)


def leave(code: int) -> NoReturn:
    _code.append(code)
    sys.exit(code)
