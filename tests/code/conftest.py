"""Shared state for the protocol tests: a small project (10-day window, an always-blessing
gate) with a champion, and the state before each command the crash and protocol tests run
(built once per session, copied per test with its MLflow state)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import VENV_BIN, clone_workspace, git

FEB = "2013-02-01:2013-02-02"
NAME = "flight-delay"
TO_CANARY = ("promote", "--set", "promote.to=canary", "--run")  # + the run id
AIRFLOW_RUN = "retrain/manual__2026-11-30T00:00:00+00:00"
# a small, always-blessing training core: the gate's own logic is tested elsewhere
PARAMS = {
    "data": {"window_days": 10, "holdout_days": 3},
    "train": {"max_iter": 40},
    "evaluate": {"min_roc_auc": 0.5, "max_brier": 0.5, "min_brier_skill": -1.0, "max_auc_drop": 1.0,
                 "max_brier_rise": 1.0, "slice_min_roc_auc": 0.0},
}  # fmt: skip


def environment(ws: Path, command: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_TRACKING"))}
    env.update(MLOPS_PROJECT_DIR=str(ws), MLOPS_ACTOR="crash-test", PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    if command == "retrain-overrides":  # as Airflow runs it: a retry resumes the run's private copy
        env.update(MLOPS_RUN=AIRFLOW_RUN, MLOPS_ACTOR_SOURCE="airflow")
    return env


def mlops(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "mlops"), *args], cwd=ws, env=env or environment(ws, ""),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1])) if proc.stdout.strip() else {}


@pytest.fixture(scope="session")
def states(
    january_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, list[str]]]:
    """The state before each command (built once), and the command."""
    root = tmp_path_factory.mktemp("crash")
    base = root / "base"
    shutil.copytree(january_template, base, symlinks=True)
    params = yaml.safe_load((base / "params.yaml").read_text())
    for section, values in PARAMS.items():
        params[section].update(values)
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(base, "commit", "-qam", "small training core")
    ok(mlops(base, "retrain"))
    ok(mlops(base, "promote"))  # v1, the champion
    validate = clone_workspace(base, root / "validate")
    ok(mlops(validate, "ingest", "--dates", FEB))
    plain = clone_workspace(validate, root / "retrain")
    ok(mlops(plain, "validate", "--dates", FEB))  # new days: the whole core has work to do
    promote = clone_workspace(base, root / "promote")
    run_id = ok(mlops(promote, "retrain", "--set", "train.random_state=7"))["run_id"]
    rollback = clone_workspace(promote, root / "rollback")
    assert ok(mlops(rollback, "promote", "--run", run_id))["champion"] == "2"
    canary = clone_workspace(promote, root / "canary")
    assert ok(mlops(canary, *TO_CANARY, run_id))["canary"] == "2"
    return {
        "validate": (validate, ["validate", "--dates", FEB]),
        "retrain": (plain, ["retrain"]),
        "retrain-overrides": (base, ["retrain", "--set", "train.learning_rate=0.2"]),
        "promote": (promote, ["promote", "--run", run_id]),
        "rollback": (rollback, ["rollback", "--expect", "2", "--reason", "crash drill"]),
        "canary": (promote, [*TO_CANARY, run_id]),
        "canary-promote": (canary, ["canary", "promote", "--expect", "2", "--reason", "crash drill"]),
        "canary-rollback": (canary, ["canary", "rollback", "--expect", "2", "--reason", "crash drill"]),
    }
