"""Infra validation (TFX InfraValidator's idea): before ``champion`` moves to a version, that
version's model is loaded in a **fresh process** with MLflow's own loader, as serving and
scoring will load it, and must predict on its own input example within a time budget
(``promote.infra_timeout_s``). A truncated artifact, a missing dependency, a model that
needs more time or memory than it may take, or one whose answers are not probabilities
refuses the move with one line: it never reaches production. A model that loads and predicts
but was logged against other package versions (or another Python) passes; the check names
each difference (``mismatched``, in MLflow's words), which goes into the move's audit record
and a warning.

The promoting process resolves the version to its artifact's location through the registry
it already has open (``get_model_version_download_uri``, what MLflow's ``models:/`` loader
asks the registry); the child loads that artifact without opening the tracking store again
(which cost ~1.1 s of CPU of each check's ~4.4 s).

    python -m pipelines.infra models:/flight-delay/3 LOCATION   # what the check runs (JSON on stdout)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import StepError

if TYPE_CHECKING:
    from pipelines.registry import Registry


log = logging.getLogger(__name__)


class InfraRefused(StepError):
    """The candidate did not load and predict."""


def check(registry: Registry, version: str, timeout_s: float) -> dict[str, Any]:
    """Load ``models:/<name>/<version>`` in a new process and predict on its input example.
    Returns what the child measured; raises :class:`InfraRefused`."""
    uri = f"models:/{registry.name}/{version}"
    location = registry.download_uri(version)
    settings = registry.settings
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_uri, "MLFLOW_REGISTRY_URI": settings.mlflow_uri,
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.infra", uri, location],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise InfraRefused(
            f"infra check refused v{version}: it did not load and predict within {timeout_s:g} s "
            "(promote.infra_timeout_s)"
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise InfraRefused(
            f"infra check refused v{version}: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    result["seconds"] = round(time.monotonic() - started, 2)
    if result.get("mismatched"):
        log.warning(
            "infra check: v%s loaded and predicted, in an environment that differs from the one it was "
            "logged with: %s",
            version,
            "; ".join(result["mismatched"]),
        )
    return result


def admitted(
    registry: Registry,
    version: str,
    timeout_s: float,
    champion: str | None,
    wanted: str,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """:func:`check` for a move of ``champion`` to ``version``: what the move's record keeps of
    it, or the refusal recorded in the audit log (under the lock when the caller holds it and
    passes :meth:`Registry.recover`'s ``records``) and raised."""
    try:
        return recorded(check(registry, version, timeout_s))
    except InfraRefused as exc:
        if records is None:
            registry.refuse_infra(version, champion, wanted, str(exc))
        else:
            registry.refuse_infra_locked(records, version, champion, wanted, str(exc))
        raise


def recorded(result: dict[str, Any]) -> dict[str, Any]:
    """What a move's audit record keeps of a check: its timings, not the predictions nor the
    artifact's location (a path on this machine: the version names the artifact, and the
    hash-chained record must verify wherever the project folder is copied)."""
    return {k: v for k, v in result.items() if k not in ("predictions", "artifact")}


def _main(uri: str, location: str | None = None) -> int:
    """Load ``location`` (the artifact ``uri`` resolves to; ``uri`` itself when not given) and
    predict on its input example; ``uri`` names the model in every message."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.monotonic()
    try:
        import mlflow
        import numpy as np

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location or uri))
        # MLflow's own comparison of the model's requirements with this environment (skipped
        # here) maps every installed distribution to its modules (~0.3 s of a check's ~3.4 s)
        # and only warns on stderr, which a passing check discards: the same comparison is made
        # by name and goes into the result (and the move's audit record)
        mismatched = _mismatched(local)
        model = mlflow.pyfunc.load_model(str(local), suppress_warnings=True)
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
    result = {
        "ok": True,
        "model": uri,
        "artifact": location or uri,
        "rows": len(example),
        "load_s": round(loaded - started, 2),
        "predict_s": round(time.monotonic() - loaded, 3),
        "predictions": [round(float(v), 6) for v in values],
        "mismatched": mismatched,
    }
    print(json.dumps(result))
    return 0


def _mismatched(model_dir: Path) -> list[str]:
    """The model's requirements (``requirements.txt``) and Python version (``MLmodel``) that this
    environment does not satisfy, as MLflow words them when it loads a model
    (``package (current: X, required: package==Y)``); empty when everything matches."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import yaml
    from packaging.requirements import InvalidRequirement, Requirement

    found = []
    listed = model_dir / "requirements.txt"
    for line in listed.read_text().splitlines() if listed.exists() else []:
        try:
            requirement = Requirement(line.strip())
        except InvalidRequirement:  # blank, a comment, a path or an option: not checked (nor by MLflow)
            continue
        if requirement.marker and not requirement.marker.evaluate():
            continue
        try:
            installed: str | None = version(requirement.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            found.append(
                f"{requirement.name} (current: {installed or 'uninstalled'}, required: {line.strip()})"
            )
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text()).get("flavors", {}).get("python_function", {})
    logged, running = str(flavor.get("python_version", "")), platform.python_version()
    if logged and logged.split(".")[:2] != running.split(".")[:2]:
        found.append(f"python (current: {running}, required: {logged})")
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:3]))
