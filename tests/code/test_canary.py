"""A canary through the real commands, the real registry and the real serving app: a blessed
version goes to ``canary`` on a share of the traffic; batch scoring and the REST API split
flights the same sticky way, and the logs say who answered; the canary ends by graduating
(a recorded promotion) or by a rollback that bars it; every move verifies in the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.code.conftest import NAME, TO_CANARY, mlops, ok
from tests.conftest import clone_workspace
from tests.services import metric

pytestmark = pytest.mark.e2e

DAY = "2013-01-31"  # validated in the template, outside the models' training windows' ends


def audit_ok(ws: Path) -> str:
    proc = mlops(ws, "audit", "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_canary_splits_batch_and_served_traffic_by_flight_and_is_rolled_back(
    states: dict[str, tuple[Path, list[str]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    from pipelines.features import build_features
    from pipelines.serving import split

    template, argv = states["promote"]  # champion v1; run R2 evaluated and blessed against it
    ws = clone_workspace(template, tmp_path / "ws")
    run_id = argv[-1]
    started = ok(mlops(ws, *TO_CANARY, run_id, "--set", "canary.share=0.3"))
    assert (started["canary"], started["share"], started["champion"], started["changed"]) == (
        "2",
        0.3,
        "1",
        True,
    )
    assert "champion v1, canary v2 as recorded" in audit_ok(ws)
    status = mlops(ws, "status")
    assert (
        "on 30% of traffic" in status.stdout and "mlops canary promote|rollback --expect 2" in status.stdout
    )

    # batch scoring: each flight to one model by its key, the same way twice
    scored = ok(mlops(ws, "score", "--date", DAY))
    log = pd.read_parquet(ws / f"data/predictions/{DAY}.parquet")
    batch = pd.read_parquet(ws / f"data/validated/{DAY}.parquet")
    keys = split.frame_keys(batch)
    expected = np.array(split.to_canary(keys, 0.3, "2"))
    assert list(log["role"]) == ["canary" if m else "champion" for m in expected]
    assert list(log["model_version"]) == ["2" if m else "1" for m in expected]
    assert 0.2 < expected.mean() < 0.4 and scored["canary_rows"] == int(expected.sum())
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{ws / 'mlflow.db'}")  # not one an earlier test in this worker set
    v1, v2 = (mlflow.sklearn.load_model(f"models:/{NAME}/{v}") for v in ("1", "2"))
    features = build_features(batch)
    canary_answers = v2.predict_proba(features[expected])[:, 1]
    assert np.allclose(log["prediction"][expected], canary_answers, atol=1e-12), (
        log["prediction"][expected].to_numpy()[:5],
        canary_answers[:5],
        v1.predict_proba(features[expected])[:5, 1],
        log["champion_prediction"][expected].to_numpy()[:5],
    )
    assert np.allclose(log["prediction"][~expected], v1.predict_proba(features[~expected])[:, 1], atol=1e-12)
    ok(mlops(ws, "score", "--date", DAY))
    assert pd.read_parquet(ws / f"data/predictions/{DAY}.parquet")["role"].tolist() == log["role"].tolist()
    assert np.allclose(log["champion_prediction"], v1.predict_proba(features)[:, 1], atol=1e-12)
    # monitor the next day: live metrics of each side on yesterday's labels, the champion's decide
    ok(mlops(ws, "score", "--date", "2013-01-30"))
    live = ok(mlops(ws, "monitor", "--date", DAY))["live"]
    roles = live["by_role"]
    assert (roles["canary"]["model_version"], roles["champion"]["model_version"]) == ("2", "1")
    assert live["rows"] == roles["champion"]["rows"] and roles["canary"]["rows"] > 100

    # serving: the same flights get the same models, whatever the request they come in
    from fastapi.testclient import TestClient

    from pipelines.config import Settings, load_params
    from pipelines.serving import create_app

    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(ws))
    monkeypatch.chdir(ws)
    settings = Settings()
    app = create_app(settings, load_params(settings, ["serve.poll_interval_s=3600", "serve.shadow=false"]))
    server = app.state.server
    instances: list[dict[str, Any]] = json.loads(features.head(200).to_json(orient="records"))
    with TestClient(app) as http:
        ready = http.get("/ready").json()
        assert (ready["loaded"], ready["canary"], ready["canary_share"]) == ("1", "2", 0.3)
        body = http.post("/predict", json={"instances": instances, "keys": keys[:200]}).json()
        assert body["roles"] == log["role"].tolist()[:200]
        assert body["model_versions"] == log["model_version"].tolist()[:200]
        assert np.allclose(body["predictions"], log["prediction"][:200], atol=1e-6)  # the batch's answers
        order = list(range(199, -1, -1))  # the same flights in another order and request
        again = http.post("/predict", json={"instances": [instances[i] for i in order],
                                            "keys": [keys[i] for i in order]}).json()  # fmt: skip
        assert again["roles"] == [body["roles"][i] for i in order]
        whole = http.post(
            "/predict", json={"instances": instances[:5]}, headers={"X-Routing-Key": "user-7"}
        ).json()
        assert len(set(whole["roles"])) == 1, "a request routed by its header goes to one model"
        assert whole["model_version"] == whole["model_versions"][0]
        bad = http.post("/predict", json={"instances": instances[:3], "keys": keys[:2]})
        assert bad.status_code == 422 and bad.json()["error"].startswith("keys: 2 key(s) for 3 instance(s)")
        server.log.flush()
        served = pd.concat(pd.read_parquet(p) for p in (ws / "data/predictions/served").rglob("*.parquet"))
        assert set(zip(served["role"], served["model_version"], strict=True)) == {
            ("champion", "1"),
            ("canary", "2"),
        }
        assert (served["role"] == "canary").sum() == 2 * body["roles"].count("canary") + (
            5 if whole["roles"][0] == "canary" else 0
        )
        metrics = http.get("/metrics").text
        assert (
            metric(metrics, "mlops_serve_model_info", alias="canary", model="flight-delay", version="2") == 1
        )
        assert metric(metrics, "mlops_serve_predictions_total", model_version="2", role="canary")

        # the canary rolled back: barred, the champion answers everything again
        rolled = ok(
            mlops(ws, "canary", "rollback", "--expect", "2", "--reason", "canary worse on live labels")
        )
        assert (rolled["rolled_back"], rolled["champion"], rolled["changed"]) == ("2", "1", True)
        assert ok(mlops(ws, "canary", "rollback", "--expect", "2", "--reason", "again"))["changed"] is False
        assert "champion v1 as recorded" in audit_ok(ws)
        server.refresh()
        assert http.get("/ready").json()["canary"] is None
        plain = http.post("/predict", json={"instances": instances[:3], "keys": keys[:3]}).json()
        assert plain["model_version"] == "1" and "roles" not in plain
    barred = mlops(ws, *TO_CANARY, run_id)
    assert barred.returncode == 99 and "rolled back" in barred.stderr, barred.stderr[-2000:]
    ok(mlops(ws, "score", "--date", DAY))
    assert set(pd.read_parquet(ws / f"data/predictions/{DAY}.parquet")["role"]) == {"champion"}


def test_a_canary_graduates_through_the_promotion_protocol(
    states: dict[str, tuple[Path, list[str]]], tmp_path: Path
) -> None:
    ws = clone_workspace(states["canary-promote"][0], tmp_path / "ws")  # champion v1, canary v2 on 10%
    wrong = mlops(ws, "canary", "promote", "--expect", "5", "--reason", "baked")
    assert wrong.returncode == 1 and "the canary is v2, not v5 as expected" in wrong.stderr
    no_reason = mlops(ws, "canary", "promote", "--expect", "2")
    assert no_reason.returncode == 2 and "needs a reason" in no_reason.stderr
    done = ok(mlops(ws, "canary", "promote", "--expect", "2", "--reason", "baked 7 days"))
    assert (done["champion"], done["previous"], done["changed"]) == ("2", "1", True)
    assert ok(mlops(ws, "canary", "promote", "--expect", "2", "--reason", "again"))["changed"] is False
    assert ok(mlops(ws, "canary", "promote", "--reason", "again, without --expect"))["changed"] is False
    assert "champion v2 as recorded" in audit_ok(ws)
    records = json.loads(mlops(ws, "audit", "log", "--json").stdout)
    move = records[-1]
    assert (move["action"], move["from"], move["to"], move["canary"]) == ("promote", "1", "2", "2")
    assert move["gate"]["verdict"] == "blessed" and move["infra"]["ok"] and move["evidence"] == {}
    nothing = mlops(ws, "canary", "rollback", "--expect", "2", "--reason", "too late")
    assert nothing.returncode == 1 and "the canary is none, not v2" in nothing.stderr
    # the previous champion is one rollback away, as after any promotion
    back = ok(mlops(ws, "rollback", "--expect", "2", "--reason", "drill"))
    assert back["to"] == "1"
