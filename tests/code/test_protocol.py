"""The promotion protocol through the real commands: tampering is reported by `mlops audit
verify` and `mlops status`; a version whose artifact is broken never becomes the champion
and the serving API says what it wants vs what it serves; a rolled-back model stays rolled
back until a forced promotion with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.code.conftest import NAME, mlops, ok
from tests.conftest import clone_workspace

pytestmark = pytest.mark.e2e


def client(ws: Path):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def verify(ws: Path) -> tuple[int, str, str]:
    proc = mlops(ws, "audit", "verify")
    status = mlops(ws, "status")
    assert status.returncode == 0, status.stderr
    audit_line = next(line for line in status.stdout.splitlines() if line.startswith("audit "))
    print(
        f"\n$ mlops audit verify   (exit {proc.returncode})\n{proc.stdout.strip()}\n$ mlops status | grep ^audit\n{audit_line}"
    )
    return proc.returncode, proc.stdout, audit_line


def test_tampering_is_reported_by_audit_verify_and_status(states, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.audit import mirror_key

    ws = clone_workspace(states["rollback"][0], tmp_path / "ws")  # v1 then v2 promoted: 4 records
    code, out, line = verify(ws)
    assert code == 0 and "audit log verified: 4 record(s)" in out and "[ok]" in line
    mlflow = client(ws)
    original = mlflow.get_registered_model(NAME).tags[mirror_key(4)]

    # 1. an audit record deleted in the MLflow UI
    mlflow.delete_registered_model_tag(NAME, mirror_key(4))
    code, out, line = verify(ws)
    assert (
        code == 1 and "PROBLEM: record 4 (promote) is missing from MLflow (tag audit.000004 deleted)" in out
    )
    assert "[PROBLEM]" in line and "missing from MLflow" in line
    # 2. an audit record edited in the MLflow UI
    edited = json.loads(original)
    edited["reason"] = "approved by the CEO"
    mlflow.set_registered_model_tag(
        NAME, mirror_key(4), json.dumps(edited, sort_keys=True, separators=(",", ":"))
    )
    code, out, line = verify(ws)
    assert code == 1 and "PROBLEM: record 4 (promote) differs in MLflow (tag audit.000004 edited)" in out
    assert "[PROBLEM]" in line
    mlflow.set_registered_model_tag(NAME, mirror_key(4), original)
    assert verify(ws)[0] == 0

    # 3. the alias moved by hand: reported at once, recorded by the next mover
    mlflow.set_registered_model_alias(NAME, "champion", "1")
    code, out, line = verify(ws)
    assert code == 1 and "champion is v1 in the registry but the audit log's last move set v2" in out
    assert "the alias was moved outside mlops" in line
    refused = mlops(ws, "rollback", "--expect", "2", "--reason", "too late")
    assert refused.returncode == 3 and "the champion is v1, not v2 as expected" in refused.stderr
    code, out, line = verify(ws)
    assert code == 0 and "note: 1 alias move(s) made outside mlops were found and recorded" in out
    records = json.loads(mlops(ws, "audit", "log", "--json").stdout)
    assert [r["action"] for r in records[-2:]] == ["external", "conflict"]
    assert (records[-2]["from"], records[-2]["to"]) == ("2", "1")

    # 4. a record of the log itself edited, and 5. one removed
    log_dir = ws / ".mlops/audit" / NAME
    second = log_dir / "0000000002.json"
    record = json.loads(second.read_text())
    record["reason"] = "nothing happened here"
    second.write_text(json.dumps(record))
    code, out, _ = verify(ws)
    assert code == 1 and "PROBLEM: record 2 was edited: its hash does not match its content" in out
    (log_dir / "0000000003.json").unlink()
    code, out, _ = verify(ws)
    assert code == 1 and "record 3 is missing (the log jumps from 2 to 4)" in out
    assert "MLflow has audit.000003, which the audit log lacks" in out


def logged_model_dir(ws: Path, run_id: str) -> Path:
    """The folder of the model a training run logged (MLflow 3 logged models)."""
    from urllib.parse import urlparse

    mlflow = client(ws)
    local = mlflow.download_artifacts(run_id, "gate/train.json", str(ws.parent))
    train = json.loads(Path(local).read_text())
    model = mlflow.get_logged_model(train["model_uri"].removeprefix("models:/"))
    return Path(urlparse(model.artifact_location).path)


def test_a_broken_artifact_never_becomes_champion_and_serve_says_wanted_vs_loaded(
    states, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    template, argv = states["promote"]  # champion v1; run R2 evaluated and blessed against it
    ws = clone_workspace(template, tmp_path / "ws")
    run_id = argv[-1]
    folder = logged_model_dir(ws, run_id)
    payload = next(
        p for p in folder.iterdir() if p.name.startswith("model.") and p.suffix in (".skops", ".pkl")
    )
    payload.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])  # truncated upload

    refused = mlops(ws, "promote", "--run", run_id)
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "mlops promote: failed: infra check refused v2: cannot load models:/flight-delay/2"
    ), line
    status = json.loads(mlops(ws, "status", "--json").stdout)
    assert status["champion"]["version"] == "1" and status["challenger"]["version"] == "2"
    assert status["audit_check"]["ok"] and status["audit"][-1]["action"] == "infra-refused"

    # serving: the registry wants v2 (say someone moved the alias): v1 keeps answering, /ready is 503
    from fastapi.testclient import TestClient

    from pipelines.config import Settings, load_params
    from pipelines.serving import create_app

    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(ws))
    monkeypatch.chdir(ws)
    settings = Settings()
    app = create_app(settings, load_params(settings, ["serve.poll_interval_s=3600", "serve.shadow=false"]))
    server = app.state.server
    with TestClient(app) as http:
        ready = http.get("/ready")
        assert ready.status_code == 200 and ready.json()["wanted"] == ready.json()["loaded"] == "1"
        client(ws).set_registered_model_alias(NAME, "champion", "2")
        server.refresh()
        ready = http.get("/ready")
        body = ready.json()
        assert ready.status_code == 503 and body["state"] == "degraded", body
        assert (body["wanted"], body["loaded"]) == ("2", "1") and body["reason"].startswith(
            "cannot load v2"
        ), body
        example = json.loads((folder / "input_example.json").read_text())
        rows = [dict(zip(example["columns"], row, strict=True)) for row in example["data"]]
        answer = http.post("/predict", json={"instances": rows})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        assert "mlops_serve_wanted_loaded 0.0" in http.get("/metrics").text
        client(ws).set_registered_model_alias(NAME, "champion", "1")
        server.refresh()
        assert http.get("/ready").status_code == 200


def test_the_infra_check_loads_what_the_registry_resolves_without_the_store(states, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The promoting process resolves the version to its artifact; the fresh child loads that
    artifact and predicts what MLflow's own ``models:/`` loader predicts, without reaching the
    tracking store (here: a closed port), which it no longer opens (~1 s of each check)."""
    import os
    import subprocess
    import sys

    import mlflow
    import numpy as np

    from pipelines.config import Settings
    from pipelines.infra import check
    from pipelines.registry import Registry

    ws = clone_workspace(states["rollback"][0], tmp_path / "ws")  # v1 and v2
    registry = Registry(Settings(project_dir=ws), NAME)
    predicted = {}
    for version in ("1", "2"):
        result = check(registry, version, 300)
        predicted[version] = result["predictions"]
        assert result["ok"] and result["model"] == f"models:/{NAME}/{version}", result
        assert result["artifact"] == registry.download_uri(version), result  # loaded as resolved here
        assert result["mismatched"] == [], result  # logged in this environment
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
        expected = np.asarray(model.predict(model.input_example), dtype="float64")
        assert result["predictions"] == [
            round(float(v), 6) for v in expected.reshape(len(expected), -1)[:, -1]
        ]
    location = registry.download_uri("2")
    assert location.startswith("file://") and "mlartifacts" in location, location
    closed = {
        **os.environ,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_REGISTRY_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    child = subprocess.run(
        [sys.executable, "-m", "pipelines.infra", f"models:/{NAME}/2", location],
        env=closed,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.splitlines()[-1])["predictions"] == predicted["2"]
    # the models:/ URI alone needs the registry: the same child, unresolved, cannot load it
    unresolved = subprocess.run(
        [sys.executable, "-m", "pipelines.infra", f"models:/{NAME}/2"],
        env=closed,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unresolved.returncode == 1 and f"cannot load models:/{NAME}/2" in unresolved.stderr, (
        unresolved.stderr
    )


def test_the_infra_check_names_what_differs_from_the_environment_the_model_was_logged_in(
    states, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A model logged against other package versions (or another Python) still loads and
    predicts, so the check passes, but it names each difference, in MLflow's own words, where
    MLflow's loader would only have warned on the child's discarded stderr."""
    import shutil
    import subprocess
    import sys
    from urllib.parse import urlparse

    from mlflow.utils.requirements_utils import _check_requirement_satisfied

    from pipelines.config import Settings
    from pipelines.registry import Registry

    ws = clone_workspace(states["rollback"][0], tmp_path / "ws")
    registry = Registry(Settings(project_dir=ws), NAME)
    other = tmp_path / "logged-elsewhere"
    shutil.copytree(urlparse(registry.download_uri("2")).path, other)
    lines = (other / "requirements.txt").read_text().splitlines()
    edited = [line for line in lines if not line.startswith(("scikit-learn", "skops"))]
    edited += ["scikit-learn==0.1", "skops>=99,<100", "not-installed-anywhere==1.0"]
    edited += ['pandas<1; python_version < "3"']  # its marker excludes it: not checked
    (other / "requirements.txt").write_text("\n".join(edited) + "\n")
    meta = (other / "MLmodel").read_text()
    (other / "MLmodel").write_text(meta.replace("python_version: 3.", "python_version: 2."))
    child = subprocess.run(
        [sys.executable, "-m", "pipelines.infra", f"models:/{NAME}/2", str(other)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    mismatched = json.loads(child.stdout.splitlines()[-1])["mismatched"]
    mlflow_says = [str(m) for m in map(_check_requirement_satisfied, edited) if m is not None]
    assert len(mlflow_says) == 3 and mismatched[:-1] == mlflow_says, (mismatched, mlflow_says)
    assert mismatched[-1].startswith("python (current: 3.") and "required: 2." in mismatched[-1]


def test_a_rolled_back_model_stays_rolled_back_until_forced(states, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws = clone_workspace(states["rollback"][0], tmp_path / "ws")  # v2 (random_state=7) is champion
    ok(mlops(ws, "rollback", "--expect", "2", "--reason", "v2 sends everyone to the gate late"))
    # a drift-triggered retrain minutes later: same data version, parameters and code as v2
    rebuild = ok(mlops(ws, "retrain", "--set", "train.random_state=7"))
    assert rebuild["verdict"] == "refused"
    gate = json.loads((Path(rebuild["workspace"]) / "reports/gate.json").read_text())
    failed = [c for c in gate["checks"] if c["verdict"] == "fail"]
    assert [c["name"] for c in failed] == ["not a rolled-back model"], failed
    assert "same data, parameters and code as v2, rolled back by audit record 5" in failed[0]["detail"]
    refused = mlops(ws, "promote", "--run", rebuild["run_id"])
    assert refused.returncode == 99 and "gate refused v3 (not a rolled-back model)" in refused.stderr
    # an operator who fixed the cause forces it, with a reason: recorded as forced
    forced = ok(mlops(ws, "promote", "--run", rebuild["run_id"], "--force", "--reason", "upstream fixed"))
    assert forced["champion"] == "3" and forced["changed"]
    # the bar is lifted for that model: the next identical rebuild passes the gate
    again = ok(mlops(ws, "retrain", "--set", "train.random_state=7"))
    assert again["verdict"] == "blessed", again
    records = json.loads(mlops(ws, "audit", "log", "--json").stdout)
    moves = [
        (r["action"], r["from"], r["to"], r.get("forced"))
        for r in records
        if r["action"] in ("promote", "rollback")
    ]
    assert moves[-2:] == [("rollback", "2", "1", False), ("promote", "1", "3", True)]
