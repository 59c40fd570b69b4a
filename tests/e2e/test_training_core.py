"""End to end on real data with the real CLI, DVC and MLflow (SQLite store + registry).

The story of the issue: ingest and validate 31+ real days; `dvc repro`; the first model
becomes champion; a better-or-equal model replaces it (the champion before is kept); a
deliberately crippled config is refused by the gate (champion unchanged, the report says
why); rollback restores the previous champion; `dvc repro` then runs nothing; a forced
promotion needs a reason and is recorded as forced.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, dvc, git, make_workspace

pytestmark = pytest.mark.e2e


def mlops(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(root), "MLOPS_ACTOR": "e2e-test"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded default: SQLite in the workspace
    return subprocess.run([str(VENV_BIN / "mlops"), *args], cwd=root, env=env, capture_output=True, text=True)


def repro(root: Path) -> str:
    proc = dvc(root, "repro")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def set_params(root: Path, **changes: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def client(root: Path):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion(root: Path) -> str:
    return str(client(root).get_model_version_by_alias("flight-delay", "champion").version)


def test_training_core_story(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")

    # -- 31 real days in, first model becomes champion ------------------------------------
    for step in ("ingest", "validate"):
        proc = mlops(root, step, "--dates", "2013-01-01:2013-01-31")
        assert proc.returncode == 0, proc.stderr
    assert len(list((root / "data/validated").glob("*.parquet"))) == 31
    out = repro(root)
    for stage in ("featurize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    window_md5 = next(o["md5"] for o in lock["stages"]["featurize"]["outs"] if o["path"] == "data/window")
    assert set(lock["stages"]) == {"featurize", "train", "evaluate"}
    first = mlops(root, "promote")
    assert first.returncode == 0, first.stderr
    assert champion(root) == "1"

    # lineage on the MLflow run: data version = DVC hash of the window in dvc.lock, git commit
    trained = json.loads((root / "reports/train.json").read_text())
    first_holdout = json.loads((root / "reports/gate.json").read_text())["holdout"]
    run = client(root).get_run(trained["run_id"])
    assert run.data.tags["mlops.data_version"] == window_md5
    assert run.data.tags["mlflow.source.git.commit"] == git(root, "rev-parse", "HEAD").strip()
    assert (
        run.data.tags["mlops.window_start"] == "2013-01-02"
        and run.data.tags["mlops.window_end"] == "2013-01-31"
    )
    assert run.data.params["train.learning_rate"] == "0.08" and run.data.params["data.window_days"] == "30"
    assert run.data.metrics["holdout_roc_auc"] > 0.6 and "train_rows" in run.data.metrics
    assert run.inputs.dataset_inputs, "the training dataset is logged as a run input"
    version = client(root).get_model_version("flight-delay", "1")
    assert version.tags["mlops.data_version"] == window_md5
    from mlflow.models import Model

    # the MLmodel at the version's artifact location: "models:/..." would resolve against
    # whatever tracking URI this process last set (MLflow keeps it in a module global)
    location = client(root).get_model_version_download_uri("flight-delay", "1")
    info = Model.load(location.removeprefix("file://"))
    assert info.signature is not None and info.saved_input_example_info is not None
    assert set(info.signature.inputs.input_names()) >= {"carrier", "origin", "precip", "visib"}

    # -- a second model on the same window (another seed): within the allowed margin -------
    set_params(root, train__random_state=7, evaluate__max_auc_drop=0.02)
    out = repro(root)
    assert "Stage 'featurize' didn't change" in out
    gate = json.loads((root / "reports/gate.json").read_text())
    assert gate["champion_version"] == "1", "the gate compared with the champion"
    assert gate["champion"]["metrics"]["roc_auc"] == pytest.approx(run.data.metrics["holdout_roc_auc"])
    assert gate["holdout"] == first_holdout, "same fresh holdout for challenger and champion"
    second = mlops(root, "promote")
    assert second.returncode == 0, second.stderr + (root / "reports/gate.md").read_text()
    assert champion(root) == "2"
    assert client(root).get_model_version("flight-delay", "2").tags["mlops.previous_champion"] == "1"

    # -- a crippled config is refused: exit 99, champion unchanged, the report says why ---
    set_params(root, train__max_iter=1, train__max_leaf_nodes=2, train__learning_rate=0.01)
    out = repro(root)
    assert "Stage 'featurize' didn't change" in out and "Running stage 'train'" in out
    refused = mlops(root, "promote")
    assert refused.returncode == 99, refused.stderr
    assert "gate refused v3" in refused.stderr and "champion stays v2" in refused.stderr
    assert champion(root) == "2"
    assert str(client(root).get_model_version_by_alias("flight-delay", "challenger").version) == "3"
    gate = json.loads((root / "reports/gate.json").read_text())
    failed = {c["name"] for c in gate["checks"] if c["verdict"] == "fail"}
    assert "roc_auc vs champion" in failed and "roc_auc floor" in failed
    report = (root / "reports/gate.md").read_text()
    assert "REFUSED" in report and "| roc_auc vs champion | champion |" in report and "**FAIL**" in report

    stale_gate = (root / "reports/gate.json").read_text()

    # -- rollback restores the previous champion, audited ----------------------------------
    no_reason = mlops(root, "rollback", "--expect", "2")
    assert no_reason.returncode == 2 and "needs a reason" in no_reason.stderr
    no_expect = mlops(root, "rollback", "--reason", "v2 misbehaves on Mondays")
    assert no_expect.returncode == 2 and "needs --expect VERSION" in no_expect.stderr
    rolled = mlops(root, "rollback", "--expect", "2", "--reason", "v2 misbehaves on Mondays")
    assert rolled.returncode == 0, rolled.stderr
    assert champion(root) == "1"
    status = json.loads(mlops(root, "status", "--json").stdout)
    actions = [e["action"] for e in status["audit"]]
    assert actions == ["register", "promote", "register", "promote", "register", "refuse", "rollback"]
    rollback_event = status["audit"][-1]
    assert (
        rollback_event["actor"]["name"] == "e2e-test"
        and rollback_event["reason"] == "v2 misbehaves on Mondays"
    )
    assert rollback_event["from"] == "2" and rollback_event["to"] == "1"
    assert status["audit_check"]["ok"], status["audit_check"]
    assert status["champion"]["version"] == "1" and status["challenger"]["version"] == "3"
    assert status["validated_data"]["days"] == 31 and status["last_gate"]["verdict"] == "refused"

    # -- nothing changed: dvc repro runs nothing ------------------------------------------
    out = repro(root)
    assert "Running stage" not in out

    # -- outside DVC, evaluate itself exits 99 on a refusal (the Airflow/DESIGN contract) --
    evaluate_again = mlops(root, "evaluate")
    assert evaluate_again.returncode == 99 and "gate: refused" in evaluate_again.stdout

    # -- forcing needs a reason, and is recorded as forced --------------------------------
    bare = mlops(root, "promote", "--force")
    assert bare.returncode == 2 and "promote.force = true needs promote.reason" in bare.stderr
    assert champion(root) == "1"
    # a gate report older than the last champion move cannot promote (compare-and-set)
    (root / "reports/gate.json").write_text(stale_gate)
    forced = mlops(root, "promote", "--force", "--reason", "hotfix approved by on-call")
    assert forced.returncode == 3, "the gate compared with v2; the champion is now v1: CAS refuses"
    assert "the champion is v1, not v2 as expected" in forced.stderr and champion(root) == "1"
    assert mlops(root, "evaluate").returncode == 99  # re-evaluate against the current champion
    forced = mlops(root, "promote", "--force", "--reason", "hotfix approved by on-call")
    assert forced.returncode == 0, forced.stderr
    v3 = client(root).get_model_version("flight-delay", "3")
    assert champion(root) == "3" and v3.tags["mlops.forced"] == "true"
    assert v3.tags["mlops.promotion_reason"] == "hotfix approved by on-call"
    assert v3.tags["mlops.previous_champion"] == "1" and v3.tags["mlops.gate_verdict"] == "refused"
