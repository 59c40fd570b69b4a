"""MLflow in a second process, started first, so that importing it overlaps the step's own imports.

`mlops monitor` needs MLflow twice, before its report (the champion and its reference sample)
and after it (the run that logs the report), and Evidently in between. Importing MLflow and
opening its SQLAlchemy store cost ~2 s of pure Python, Evidently ~4 s; a thread cannot overlap
them (both hold the GIL), a second process can. So where a second core is free the step starts
this helper first thing: it imports MLflow while the step imports Evidently and reads its data,
then answers the step's calls one by one, in the order they were made.

Where there is one core (``os.sched_getaffinity``), or ``MLOPS_TRACKING_HELPER=0``, the same
calls run in the step's own process when their result is asked for; the outputs are the same
either way (``tests/code/test_helper.py`` compares them).

Kill safety, the invariant: the helper never outlives the step by more than the call in hand,
and a kill of either leaves nothing a kill of the one-process step would not. The helper reads
its calls from a pipe the step holds; when the step dies, SIGKILL included, the pipe closes and
the helper exits. A helper killed mid-call leaves what the same kill in the step would (a
RUNNING MLflow run, which the next run closes as FAILED), and the step fails with one line
naming it. Only functions of the ``pipelines`` package can be called.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

from pipelines.errors import Skipped, StepError

_ROOT = Path(__file__).resolve().parents[1]


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    if not (module == "pipelines" or module.startswith("pipelines.")) or not name:
        raise ValueError(f"the helper only calls functions of the pipelines package, not {target!r}")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


class Helper:
    """Calls made in this process, in the order they are submitted; an error is raised when
    the call's result is asked for, as from the helper process."""

    pid: int | None = None

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def submit(self, target: str, **kwargs: Any) -> Callable[[], Any]:
        """Call ``target(settings, **kwargs)`` (a function of the pipelines package; arguments
        and results are JSON); the returned function gives its result or raises its error."""
        fn = _resolve(target)
        try:
            value = fn(self.settings, **kwargs)
        except Exception as exc:
            error = exc

            def fail() -> Any:
                raise error

            return fail
        return lambda: value

    def close(self) -> None:
        pass

    def sharing_cores(self) -> contextlib.AbstractContextManager[Any]:
        """Where the step computes while the helper works: nothing to share in this process."""
        return contextlib.nullcontext()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProcessHelper(Helper):
    """Calls made in a helper process (``python -m pipelines.helper``), answered in order."""

    def __init__(self, settings: Any, label: str) -> None:
        super().__init__(settings)
        env = dict(os.environ)
        # the helper runs the same pipelines package as this process, wherever it came from (-P:
        # not one that the working directory happens to hold)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        # one thread for the helper's own computing (the champion's predictions in evaluate): the
        # step's OpenMP threads have the cores, and two OpenMP pools spinning on two cores can
        # double the step's time. Predictions do not depend on the number of threads.
        env["OMP_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "pipelines.helper", label],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.pid = self.proc.pid
        self._asked = 0  # calls written
        self._answers: dict[int, dict[str, Any]] = {}  # answers read ahead of their turn
        self._read = 0
        self._send({"settings": settings.model_dump(mode="json")})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died("before it was asked") from None

    def _died(self, when: str) -> StepError:
        code = self.proc.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        return StepError(f"the MLflow helper process (pid {self.pid}) {how} {when}")

    def submit(self, target: str, **kwargs: Any) -> Callable[[], Any]:
        _resolve(target)  # a bad name fails here, in this process
        number = self._asked
        self._asked += 1
        self._send({"call": target, "kwargs": kwargs})

        def result() -> Any:
            assert self.proc.stdout is not None
            while number not in self._answers:
                line = self.proc.stdout.readline()
                if not line:
                    raise self._died(f"before it answered {target}")
                self._answers[self._read] = json.loads(line)
                self._read += 1
            return _unpack(self._answers[number])

        return result

    def sharing_cores(self) -> contextlib.AbstractContextManager[Any]:
        """The step's compute pools (scikit-learn's OpenMP threads, numpy's BLAS) limited to the
        cores the helper leaves while it works. libgomp's threads spin between parallel regions:
        two of them on two cores took the core the helper was importing MLflow on, and
        `mlops evaluate` on the full year took ~1 s longer (8.5 s against 7.5 s;
        docs/performance.md). The results do not depend on the number of threads."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=max(1, cores() - 1))

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()  # the helper reads end-of-file and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _unpack(answer: dict[str, Any]) -> Any:
    if "ok" in answer:
        return answer["ok"]
    error = answer["error"]
    kind, message = error["kind"], error["message"]
    if kind == "config":
        from pipelines.config import ConfigError

        raise ConfigError(message)
    if kind == "skipped":
        raise Skipped(message)
    if kind == "step":
        exc = StepError(message)
        exc.exit_code = error.get("exit_code", 1)
        raise exc
    raise RuntimeError(f"the MLflow helper process failed:\n{message}")


def cores() -> int:
    """The cores this process may run on (all of the machine's where that cannot be asked)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def start(settings: Any, label: str) -> Helper:
    """A helper process where a second core is free, else calls in this process."""
    wanted = os.environ.get("MLOPS_TRACKING_HELPER", "auto").strip().lower()
    if wanted in ("0", "false", "no", "off"):
        return Helper(settings)
    if wanted == "auto" and cores() < 2:
        return Helper(settings)
    return ProcessHelper(settings, label)


def _error(settings: Any, exc: BaseException) -> dict[str, Any]:
    from pipelines.config import ConfigError

    if isinstance(exc, ConfigError):
        return {"kind": "config", "message": str(exc)}
    if isinstance(exc, Skipped):
        return {"kind": "skipped", "message": str(exc)}
    if isinstance(exc, StepError):
        return {"kind": "step", "message": str(exc), "exit_code": exc.exit_code}
    from pipelines.tracking import describe_tracking_error

    line = describe_tracking_error(settings, exc)
    if line is not None:
        return {"kind": "step", "message": line, "exit_code": 1}
    return {"kind": "bug", "message": "".join(traceback.format_exception(exc)).rstrip()}


def serve(calls: IO[str], answers: IO[str]) -> None:
    """The helper's loop: the settings, then one call per line, one answer per line, until
    end-of-file (the step closed the pipe, or died)."""
    from pipelines.config import Settings

    first = calls.readline()
    if not first:
        return
    settings = Settings(**json.loads(first)["settings"])
    for line in calls:
        message = json.loads(line)
        try:
            answer: dict[str, Any] = {"ok": _resolve(message["call"])(settings, **message["kwargs"])}
        except Exception as exc:
            answer = {"error": _error(settings, exc)}
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()


def main() -> None:
    import logging

    from pipelines import fastexit

    fastexit.arm()
    label = sys.argv[1] if len(sys.argv) > 1 else "helper"
    # answers go to the pipe on fd 1; anything a library prints goes to stderr, with the logs
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s step={label} (MLflow helper) %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "urllib3", "git", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    import mlflow  # noqa: F401  # the point of the helper: this import, while the step does its own

    logging.getLogger("pipelines.helper").info("MLflow imported in %.1f s", time.perf_counter() - started)
    serve(sys.stdin, answers)
    answers.close()
    # every call is answered, and so done (MLflow's runs ended, the store's writes committed):
    # end without the interpreter's teardown of MLflow, SQLAlchemy and pandas, which the step
    # would wait for (~1 s)
    fastexit.leave(0)


if __name__ == "__main__":
    main()
