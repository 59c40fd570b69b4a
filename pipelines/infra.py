"""Infra validation (TFX InfraValidator's idea): before ``champion`` moves to a version, that
version is loaded from the registry in a **fresh process**, exactly as serving and scoring
will load it, and must predict on its own input example within a time budget
(``promote.infra_timeout_s``). A truncated artifact, a missing dependency, a model that
needs more time or memory than it may take, or one whose answers are not probabilities
refuses the move with one line: it never reaches production.

    python -m pipelines.infra models:/flight-delay/3     # what the check runs (JSON on stdout)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from pipelines.config import Settings
from pipelines.errors import StepError


class InfraRefused(StepError):
    """The candidate did not load and predict."""


def check(settings: Settings, model_name: str, version: str, timeout_s: float) -> dict[str, Any]:
    """Load ``models:/<model_name>/<version>`` in a new process and predict on its input
    example. Returns what the child measured; raises :class:`InfraRefused`."""
    uri = f"models:/{model_name}/{version}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_uri, "MLFLOW_REGISTRY_URI": settings.mlflow_uri,
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pipelines.infra", uri], env=env, capture_output=True,
                              text=True, timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise InfraRefused(
            f"infra check refused v{version}: it did not load and predict within {timeout_s:.0f} s "
            "(promote.infra_timeout_s)"
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise InfraRefused(
            f"infra check refused v{version}: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _main(uri: str) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.monotonic()
    try:
        import mlflow
        import numpy as np

        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:
        print(f"cannot load {uri}: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 1
    loaded = time.monotonic()
    example = model.input_example
    if example is None or len(example) == 0:
        print(
            f"{uri} has no input example to predict on (log the model with input_example=...)",
            file=sys.stderr,
        )
        return 1
    try:
        output = model.predict(example)
    except Exception as exc:
        print(f"{uri} loaded but failed to predict on its input example: {type(exc).__name__}: {_first_line(exc)}",
              file=sys.stderr)  # fmt: skip
        return 1
    values = np.asarray(getattr(output, "values", output), dtype="float64").reshape(len(example), -1)[:, -1]
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        print(
            f"{uri} predicted values outside [0, 1] on its input example: {values.tolist()[:5]}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({"ok": True, "model": uri, "rows": len(example), "load_s": round(loaded - started, 2),
                      "predict_s": round(time.monotonic() - loaded, 3), "predictions": [round(float(v), 6) for v in values]}))  # fmt: skip
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
