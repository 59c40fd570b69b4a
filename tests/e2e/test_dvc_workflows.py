"""DVC used as its own users use it, on the project's pipeline: experiments with `dvc exp run
-S` (in the workspace, and queued), compared with `dvc exp show`, `dvc metrics diff` and
`dvc plots diff`; a queued experiment logs to the project's MLflow store and is gated against
the project's champion (not a throw-away copy's); a fresh clone + `dvc pull` is clean."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, clone_workspace, dvc, git

pytestmark = pytest.mark.e2e

SMALL = {"data": {"window_days": 10, "holdout_days": 3}, "train": {"max_iter": 40},
         "evaluate": {"min_roc_auc": 0.5, "max_brier": 0.5, "min_brier_skill": -1.0, "max_auc_drop": 1.0,
                      "max_brier_rise": 1.0, "slice_min_roc_auc": 0.0}}  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def mlops(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_TRACKING"))}
    return ok(
        subprocess.run([str(VENV_BIN / "mlops"), *args], cwd=root, env=env, capture_output=True, text=True)
    )


def experiments(root: Path) -> dict[str, dict[str, object]]:
    """`dvc exp show --json`: experiment name -> its metrics and params."""
    shown = json.loads(ok(dvc(root, "exp", "show", "--json")))
    found = {}
    for baseline in shown:
        for exp in [baseline, *(e for run in baseline.get("experiments") or [] for e in run.get("revs", []))]:
            data = exp.get("data") or {}
            name = exp.get("name") or data.get("name") or exp.get("rev")
            found[str(name)] = {
                "metrics": (data.get("metrics") or {}).get("metrics.json", {}).get("data", {}),
                "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
            }
    return found


def test_experiments_metrics_plots_and_a_fresh_clone(january_template: Path, tmp_path: Path) -> None:
    os.environ.pop("MLOPS_PROJECT_DIR", None)
    root = clone_workspace(january_template, tmp_path / "ws")
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    remote = tmp_path / "remote"
    ok(dvc(root, "remote", "add", "-d", "local", str(remote)))
    ok(dvc(root, "repro"))
    mlops(root, "promote")  # v1, the champion experiments are gated against
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline: January, first champion")
    assert (root / "metrics.json").exists() and not git(root, "status", "--porcelain"), (
        "metrics are versioned"
    )

    # an experiment in the workspace, compared with `dvc exp show`
    ok(dvc(root, "exp", "run", "-n", "lr005", "-S", "train.learning_rate=0.05"))
    shown = experiments(root)
    assert shown["lr005"]["params"]["train"]["learning_rate"] == 0.05, shown["lr005"]
    auc = shown["lr005"]["metrics"]["holdout"]["roc_auc"]
    assert 0.5 < auc < 1, shown["lr005"]
    baseline_auc = json.loads(git(root, "show", "HEAD:metrics.json"))["holdout"]["roc_auc"]
    diff = json.loads(ok(dvc(root, "metrics", "diff", "HEAD", "--json")))
    assert diff["metrics.json"]["holdout.roc_auc"]["old"] == baseline_auc
    assert diff["metrics.json"]["holdout.roc_auc"]["new"] == auc
    plots = json.loads(ok(dvc(root, "plots", "diff", "HEAD", "--json", "--split")))["data"]
    assert sorted(plots) == [
        "Calibration on the holdout",
        "Precision-recall on the holdout",
        "ROC on the holdout",
    ]
    for title, (plot,) in plots.items():  # each drawn once, both revisions in it
        assert plot["revisions"] == ["workspace", "HEAD"], (title, plot["revisions"])
    assert not (root / "dvc_plots").exists() or "dvc_plots" in (root / ".gitignore").read_text()
    git(root, "checkout", "--", ".")  # back to the baseline's workspace

    # a queued experiment runs in DVC's temp copy: it logs to the project's store and the
    # gate compares it with the project's champion
    ok(dvc(root, "exp", "run", "--queue", "-n", "queued", "-S", "train.learning_rate=0.03"))
    ok(dvc(root, "queue", "start", "-j", "1"))
    deadline = time.monotonic() + 600
    while "queued" not in experiments(root) or not experiments(root)["queued"]["metrics"]:
        status = dvc(root, "queue", "status").stdout
        assert "Failed" not in status, status + dvc(root, "queue", "logs", "queued").stdout[-3000:]
        assert time.monotonic() < deadline, status
        time.sleep(3)
    ok(dvc(root, "queue", "stop"))
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("flight-delay")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="params.`train.learning_rate` = '0.03'"
    )
    assert len(runs) == 1, "the queued experiment's run is in the project's store"
    assert runs[0].data.tags["mlops.gate_champion"] == "1", "gated against the project's champion"
    assert not list((root / ".dvc/tmp/exps").rglob("mlflow.db")), "no throw-away tracking store in DVC's copy"

    # a fresh clone + `dvc pull` is clean: nothing to reproduce, nothing missing
    ok(dvc(root, "push"))
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(root), str(fresh))
    assert (fresh / "data").is_dir(), "the data/ folder of the layout exists in a clone"
    ok(dvc(fresh, "pull"))
    status = ok(dvc(fresh, "status"))
    assert "Data and pipelines are up to date" in status, status
    dry = ok(dvc(fresh, "repro", "--dry"))
    assert "Running stage" not in dry, dry
