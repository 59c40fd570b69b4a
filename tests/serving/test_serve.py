"""`mlops serve` for real: the FastAPI app on a real MLflow registry (SQLite) holding two
versions trained on January 2013 (v1 champion, v2 challenger trained with other
parameters), real flights as requests. In-process through Starlette's TestClient where the
HTTP server does not matter; a real uvicorn process for hot reload under load."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VENV_BIN, clone_workspace, train_champion
from tests.services import free_port, metric

pytestmark = pytest.mark.e2e
MODEL = "flight-delay"


@pytest.fixture(scope="session")
def two_versions(january_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """January with v1 (champion) and v2 (challenger, a smaller model: other predictions)."""
    from pipelines.config import Settings, load_params
    from pipelines.errors import Skipped
    from pipelines.registry import CHALLENGER, CHAMPION, Move, Registry
    from pipelines.steps.evaluate import evaluate
    from pipelines.steps.featurize import featurize
    from pipelines.steps.promote import promote_if_blessed
    from pipelines.steps.train import train

    root = tmp_path_factory.mktemp("serving") / "ws"
    shutil.copytree(january_template, root, symlinks=True)
    os.environ["MLOPS_PROJECT_DIR"] = str(root)
    try:
        train_champion(root)
        settings = Settings(project_dir=root)
        params = load_params(settings, ["train.max_iter=15", "train.max_leaf_nodes=7"])
        featurize(settings, params)
        train(settings, params)
        evaluate(settings, params)
        with contextlib.suppress(Skipped):  # refused: v2 stays challenger, as wanted
            promote_if_blessed(settings, params)
        registry = Registry(settings, MODEL)
        champion = registry.alias(CHAMPION)
        if champion is not None and champion.version == "2":  # blessed: put v1 back
            registry.move(Move("rollback", "1", "2", "test set-up"))
        assert registry.alias(CHAMPION).version == "1"  # type: ignore[union-attr]
        assert registry.alias(CHALLENGER).version == "2"  # type: ignore[union-attr]
    finally:
        os.environ.pop("MLOPS_PROJECT_DIR", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return root


@pytest.fixture
def served(two_versions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the two-version workspace (its MLflow state moved with it)."""
    monkeypatch.delenv("MLOPS_SERVE_API_KEY", raising=False)
    root = clone_workspace(two_versions, tmp_path / "ws")
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(root))
    monkeypatch.chdir(root)
    return root


def flights(root: Path, rows: int, day: str = "2013-01-31") -> list[dict[str, Any]]:
    import pandas as pd

    from pipelines.features import build_features

    features = build_features(pd.read_parquet(root / f"data/validated/{day}.parquet")).head(rows)
    return list(json.loads(features.to_json(orient="records")))


def direct(root: Path, version: str, instances: list[dict[str, Any]]) -> list[float]:
    """The version's predictions, loaded straight from the registry (not through the app)."""
    import mlflow
    import pandas as pd

    from pipelines import schema

    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    frame = pd.DataFrame(instances, columns=list(schema.FEATURES))
    frame[list(schema.NUMERIC_FEATURES)] = frame[list(schema.NUMERIC_FEATURES)].astype("float64")
    return [round(float(p), 6) for p in model.predict_proba(frame)[:, 1]]


def app_client(*overrides: str) -> Any:
    from fastapi.testclient import TestClient

    from pipelines.config import Settings, load_params
    from pipelines.serving import create_app

    settings = Settings()
    params = load_params(settings, ["serve.poll_interval_s=0.5", "serve.log_flush_s=0.5", *overrides])
    return TestClient(create_app(settings, params))


def test_predict_and_schema_errors_name_the_field(served: Path) -> None:
    one, many = flights(served, 1), flights(served, 100)
    with app_client("serve.max_instances=200") as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json()["version"] == "1"
        response = client.post("/predict", json={"instances": one})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1" and body["predictions"] == direct(served, "1", one)
        response = client.post("/predict", json={"instances": many})
        assert response.status_code == 200 and response.json()["predictions"] == direct(served, "1", many)
        # a missing weather reading is allowed (the model takes NaN)
        assert client.post("/predict", json={"instances": [{**one[0], "wind_gust": None}]}).status_code == 200

        good = one[0]
        without_distance = {k: v for k, v in good.items() if k != "distance"}
        cases: list[tuple[Any, str, str]] = [
            ({"instances": [without_distance]}, "instances[0].distance", "Field required"),
            ({"instances": [{**good, "month": 13}]}, "instances[0].month", "less than or equal to 12"),
            ({"instances": [good, {**good, "temp": -80}]}, "instances[1].temp", "greater than or equal to -40"),
            ({"instances": [{**good, "carrier": "ZZ"}]}, "instances[0].carrier", "Input should be"),
            ({"instances": [{**good, "dest": "XXX"}]}, "instances[0].dest", "'XXX' is not a known dest code"),
            ({"instances": [{**good, "distance": "far"}]}, "instances[0].distance", "valid number"),
            ({"instances": [{**good, "distance": None}]}, "instances[0].distance", "valid number"),
            ({"instances": [{**good, "month": 1.5}]}, "instances[0].month", "1.5 is not a whole number"),
            ({"instances": [{**good, "sched_dep_hour": 5.7}]}, "instances[0].sched_dep_hour", "not a whole number"),
            ({"instances": [{**good, "seats": 180}]}, "instances[0].seats", "Extra inputs are not permitted"),
            ({"instances": []}, "instances", "at least 1 item"),
            ({"instances": [good] * 201}, "instances", "at most 200 items"),
            ({"rows": [good]}, "instances", "Field required"),
            ([good], "body", "Input should be an object"),
        ]  # fmt: skip
        for payload, field, message in cases:
            response = client.post("/predict", json=payload)
            assert response.status_code == 422, (field, response.status_code, response.text)
            error = response.json()["error"]
            assert error.startswith(f"{field}: ") and message in error, (field, error)
        for raw in (b"{not json", b"", b"null", b'{"instances": [1]}'):
            response = client.post("/predict", content=raw)
            assert response.status_code == 422, (raw, response.text)
        dest_error = client.post("/predict", json={"instances": [{**good, "dest": "XXX"}]}).json()["error"]
        assert len(dest_error) < 200, dest_error  # names the field, does not list 1,462 airports

        metrics = client.get("/metrics").text
        champion = {"model_version": "1", "role": "champion"}
        assert metric(metrics, "mlops_serve_requests_total", **champion, outcome="ok") == 3
        assert metric(metrics, "mlops_serve_requests_total", **champion, outcome="invalid") == len(cases) + 5
        assert metric(metrics, "mlops_serve_model_info", alias="champion", model=MODEL, version="1") == 1
        assert metric(metrics, "mlops_serve_request_latency_seconds_count", **champion, outcome="ok") == 3
        assert (
            metric(metrics, "mlops_serve_request_latency_seconds_bucket", **champion, outcome="ok", le="+Inf")
            == 3
        )


def test_docs_work_offline_and_openapi_has_the_request_schema(served: Path) -> None:
    """Swagger UI and ReDoc load their assets from the server itself (no CDN: blank pages
    offline otherwise); openapi.json describes the body /predict takes, for the champion served."""
    import re

    with app_client() as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
            assert assets, (page, html[:500])
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                assert client.get(asset).status_code == 200, asset
        spec = client.get("/openapi.json").json()
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/PredictRequest"}
        flight = spec["components"]["schemas"]["Flight"]
        assert flight["additionalProperties"] is False and "carrier" in flight["required"]
        assert flight["properties"]["month"]["maximum"] == 12
        assert spec["paths"]["/predict"]["post"]["responses"]["422"]["description"].startswith(
            "a field is wrong"
        )


def test_mlflow_models_serve_answers_the_same_probabilities(served: Path, tmp_path: Path) -> None:
    """The registered model's own server (`mlflow models serve`) and `mlops serve` give the
    same delay probabilities for 20 real flights: the pyfunc flavour predicts P(late)."""
    import urllib.request

    from pipelines.config import Settings, load_params
    from pipelines.steps.evaluate import evaluate
    from pipelines.steps.featurize import featurize
    from pipelines.steps.promote import promote_if_blessed
    from pipelines.steps.train import train

    settings = Settings()
    params = load_params(settings, ["promote.force=true", "promote.reason=a model with the pyfunc convention",
                                    "promote.expect=1", "train.random_state=5"])  # fmt: skip
    featurize(settings, params)
    train(settings, params)
    evaluate(settings, params)
    champion = promote_if_blessed(settings, params)["champion"]
    rows = flights(served, 20, day="2013-01-30")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_uri}
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    proc.stderr.read() if proc.stderr else ""
                )
                time.sleep(1)
        columns = list(rows[0])
        payload = {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as answer:
            theirs = json.loads(answer.read())["predictions"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    with app_client() as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").json()["loaded"] != champion:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ours = client.post("/predict", json={"instances": rows}).json()["predictions"]
    assert all(isinstance(p, float) and 0 <= p <= 1 for p in theirs), theirs[:5]
    assert [round(p, 6) for p in theirs] == ours


def test_direct_path_gives_the_pipelines_answers(served: Path) -> None:
    """The serving fast path (fitted encoder categories as lookups, then the classifier)
    against the scikit-learn pipeline itself, on real days, unknown codes and missing values."""
    import numpy as np
    import pandas as pd

    from pipelines.config import Settings
    from pipelines.features import build_features
    from pipelines.registry import Registry
    from pipelines.serving import load_version

    loaded = load_version(Registry(Settings(), MODEL), "1", 1000)
    assert loaded.fast is not None
    for day in ("2013-01-02", "2013-01-17", "2013-01-31"):
        features = build_features(pd.read_parquet(served / f"data/validated/{day}.parquet"))
        records = json.loads(features.to_json(orient="records"))
        frame = loaded.frame(records)
        assert np.array_equal(loaded.fast(frame), loaded.model.predict_proba(features)[:, 1]), day
    odd = [{**records[0], "dest": "ZZZ", "temp": None, "wind_gust": None}, {**records[1], "carrier": "XX"}]
    frame = loaded.frame(odd)
    assert np.array_equal(loaded.fast(frame), loaded.model.predict_proba(frame)[:, 1])


def test_explanations_add_up_to_the_models_log_odds(served: Path) -> None:
    """ "explain": true: per flight, the base plus every input's contribution is the model's own
    log-odds (scikit-learn's decision_function) on real days, unknown codes and missing values;
    the top features are the largest contributions; a request without it is answered as before."""
    import numpy as np
    import pandas as pd

    from pipelines.config import Settings
    from pipelines.features import build_features
    from pipelines.registry import Registry
    from pipelines.serving import load_version

    for version in ("1", "2"):  # two shapes of trees (v2: 7 leaves, 15 iterations)
        loaded = load_version(Registry(Settings(), MODEL), version, 1000)
        assert loaded.explainer is not None
        classifier = loaded.model.steps[-1][1]
        for day in ("2013-01-02", "2013-01-31"):
            features = build_features(pd.read_parquet(served / f"data/validated/{day}.parquet"))
            records = json.loads(features.to_json(orient="records"))
            odd = [
                {**records[0], "dest": "ZZZ", "temp": None, "wind_gust": None},
                {**records[1], "carrier": "XX"},
            ]
            frame = loaded.frame(records + odd)
            X = loaded.fast.encode(frame)
            contributions = loaded.explainer.contributions(X)
            log_odds = classifier.decision_function(X)
            assert np.abs(contributions.sum(axis=1) + loaded.explainer.base - log_odds).max() < 1e-9, (
                version,
                day,
            )
            assert (np.abs(contributions) > 0).sum(axis=1).mean() > 3, "credit spread over several inputs"
    one = flights(served, 3)
    with app_client() as client:
        plain = client.post("/predict", json={"instances": one}).json()
        assert "explanations" not in plain
        body = client.post("/predict", json={"instances": one, "explain": True}).json()
        assert body["predictions"] == plain["predictions"]
        for p, explained, flight in zip(body["predictions"], body["explanations"], one, strict=True):
            assert abs(1 / (1 + np.exp(-explained["log_odds"])) - p) < 1e-5
            top = explained["top"]
            assert len(top) == 5 and all(item["value"] == flight[item["feature"]] for item in top)
            sizes = [abs(item["contribution"]) for item in top]
            assert sizes == sorted(sizes, reverse=True)
        bad = client.post("/predict", json={"instances": one, "explain": "yes"})
        assert bad.status_code == 422 and bad.json()["error"].startswith(
            "explain: Input should be a valid boolean"
        )
        assert metric(client.get("/metrics").text, "mlops_serve_explained_total") == 3


def test_not_ready_until_a_champion_exists(served: Path) -> None:
    """Started before any promotion: alive, not ready, 503 on predict, nothing shadowed;
    ready as soon as the poller sees a champion."""
    from mlflow import MlflowClient

    from pipelines.config import Settings

    registry = MlflowClient(tracking_uri=Settings().mlflow_uri, registry_uri=Settings().mlflow_uri)
    registry.delete_registered_model_alias(MODEL, "champion")
    payload = {"instances": flights(served, 1)}
    with app_client() as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        body = ready.json()
        assert ready.status_code == 503 and body["reason"] == "no champion in the registry yet", body
        assert body["state"] == "starting" and body["wanted"] is None and body["loaded"] is None
        assert client.post("/predict", json=payload).status_code == 503
        registry.set_registered_model_alias(MODEL, "champion", "1")
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.get("/ready").json()["version"] == "1"
        while client.get("/ready").json()["shadow"] != "2":  # loaded after the champion, same poll
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.post("/predict", json=payload).json()["model_version"] == "1"
        assert metric(client.get("/metrics").text, "mlops_serve_requests_total", outcome="unavailable") == 1


def test_api_key_guards_predict_only(served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_SERVE_API_KEY", "s3cret-key")
    payload = {"instances": flights(served, 2)}
    with app_client() as client:
        assert client.post("/predict", json=payload).status_code == 401
        assert client.post("/predict", json=payload, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/predict", json=payload, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        bearer = {"Authorization": "Bearer s3cret-key"}
        assert client.post("/predict", json=payload, headers=bearer).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert metric(client.get("/metrics").text, "mlops_serve_requests_total", outcome="unauthorized") == 2


def read_log(root: Path) -> Any:
    import pandas as pd

    files = sorted((root / "data/predictions/served").glob("*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_shadow_scores_in_background_without_changing_responses(served: Path) -> None:
    batches = [
        flights(served, n, day) for n, day in ((1, "2013-01-30"), (25, "2013-01-31"), (7, "2013-01-29"))
    ]
    responses: dict[bool, list[Any]] = {}
    for shadow in (False, True):
        shutil.rmtree(served / "data/predictions/served", ignore_errors=True)
        with app_client(f"serve.shadow={str(shadow).lower()}") as client:
            assert client.get("/ready").json()["shadow"] == ("2" if shadow else None)
            answers = []
            for i, batch in enumerate(batches):
                response = client.post(
                    "/predict", json={"instances": batch}, headers={"X-Request-Id": f"r{i}"}
                )
                assert response.status_code == 200
                answers.append(response.json())
            responses[shadow] = answers
        log = read_log(served)  # flushed on shutdown
        champion_rows = log[log["role"] == "champion"]
        assert len(champion_rows) == sum(map(len, batches))
        assert set(champion_rows["model_version"]) == {"1"}
        shadow_rows = log[log["role"] == "shadow"]
        if not shadow:
            assert shadow_rows.empty
            continue
        # the challenger scored the same requests, logged with their ids, never answered
        assert len(shadow_rows) == len(champion_rows) and set(shadow_rows["model_version"]) == {"2"}
        for i, batch in enumerate(batches):
            mine = shadow_rows[shadow_rows["request_id"] == f"r{i}"]
            assert [round(float(p), 6) for p in mine["prediction"]] == direct(served, "2", batch)
    assert responses[True] == responses[False]  # same predictions, same version, same ids
    assert direct(served, "2", batches[1]) != direct(served, "1", batches[1])  # a real second opinion


def test_prediction_log_is_what_monitor_reads(served: Path, run_cli: Any) -> None:
    # no gust reported in any request: a column without values is left out of drift, listed
    batch = [
        {**r, "wind_gust": None}
        for r in flights(served, 300, "2013-01-31") + flights(served, 200, "2013-01-30")
    ]
    with app_client("serve.shadow=true") as client:
        for start in range(0, len(batch), 50):
            assert client.post("/predict", json={"instances": batch[start : start + 50]}).status_code == 200
    log = read_log(served)
    assert len(log) == 2 * len(batch)  # champion + shadow rows
    assert {"f_carrier", "f_distance", "prediction", "model_version", "served_at", "batch_date"} <= set(log)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    code, _, err = run_cli("monitor", "--date", today, "--set", "monitor.traffic=served")
    assert code in (0, 99), err
    summary = json.loads((served / f"reports/monitor/{today}/summary.json").read_text())
    assert summary["traffic"] == "served" and summary["current_rows"] == len(batch)  # the champion's rows
    assert summary["champion_version"] == "1" and summary["unmeasured_features"] == ["wind_gust"]
    assert "wind_gust" not in summary["drifted_features"]
    served_mean = float(log[log["role"] == "champion"]["prediction"].mean())
    assert summary["mean_prediction"] == pytest.approx(served_mean, abs=1e-4)
    code, _, err = run_cli("monitor", "--date", today, "--set", "monitor.traffic=bogus")
    assert (
        code == 2 and "monitor.traffic = 'bogus' is not allowed: input should be 'scored' or 'served'" in err
    )


def test_hot_reload_and_rollback_under_concurrent_requests(served: Path) -> None:
    """A real uvicorn process; four clients post without pause while the champion moves
    1 -> 2 (a promotion) and back (a rollback): no request fails, and each client's
    responses switch version once per move."""
    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Move, Registry

    with serve_process(served, "--set", "serve.poll_interval_s=0.5") as port:
        body = json.dumps({"instances": flights(served, 3)}).encode()
        stop = threading.Event()
        seen: list[list[str]] = [[] for _ in range(4)]
        failures: list[str] = []
        answers: dict[str, set[tuple[float, ...]]] = {"1": set(), "2": set()}

        def client(mine: list[str]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while not stop.is_set():
                try:
                    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                except OSError as exc:
                    failures.append(repr(exc))
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                if response.status != 200:
                    failures.append(f"{response.status} {payload[:200]!r}")
                else:
                    answer = json.loads(payload)
                    mine.append(answer["model_version"])
                    answers[answer["model_version"]].add(tuple(answer["predictions"]))

        threads = [threading.Thread(target=client, args=(s,)) for s in seen]
        for t in threads:
            t.start()
        registry = Registry(Settings(project_dir=served), MODEL)

        def wait_all_on(version: str) -> None:
            marks = [len(s) for s in seen]
            deadline = time.monotonic() + 60
            while not all(len(s) > m and s[-1] == version for s, m in zip(seen, marks, strict=True)):
                assert time.monotonic() < deadline, [s[-3:] for s in seen]
                time.sleep(0.2)

        time.sleep(1)
        registry.move(Move("promote", "2", "1", "promotion under load (test)", forced=True))
        wait_all_on("2")
        time.sleep(1)
        registry.move(Move("rollback", "1", "2", "rollback under load (test)"))
        assert registry.alias(CHAMPION).version == "1"  # type: ignore[union-attr]
        wait_all_on("1")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:5]
        # requests batched together (and across a swap) got their own version's answer
        instances = json.loads(body)["instances"]
        assert answers == {v: {tuple(direct(served, v, instances))} for v in ("1", "2")}
        for versions in seen:
            runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
            assert runs == ["1", "2", "1"], runs  # switched once per move, never back and forth
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        assert (
            metric(metrics, "mlops_serve_reloads_total", alias="champion", outcome="swapped") == 3
        )  # load, 2, 1
        assert metric(metrics, "mlops_serve_requests_total", model_version="2", role="champion", outcome="ok")
    # the log was flushed on shutdown, versions as answered
    log = read_log(served)
    assert set(log[log["role"] == "champion"]["model_version"]) == {"1", "2"}
    assert len(log[log["role"] == "champion"]) == 3 * sum(map(len, seen))


def test_schemathesis_finds_no_5xx_and_every_4xx_names_the_field(
    served: Path, run_cli: Any, tmp_path: Path
) -> None:
    """`schemathesis run` (its CLI, every check it has, stateless: coverage and fuzzing
    phases) against a real `mlops serve` with a canary live on half the flights, so both
    the champion's path and the split are fuzzed. Custom checks in schemathesis_hooks.py:
    every 4xx names the field (a path into the body that was sent), and valid requests are
    answered. The report is read back: no failure, no 5xx, both 200s and 422s seen."""
    from pipelines.config import Settings
    from pipelines.registry import Registry

    challenger = Registry(Settings(project_dir=served), MODEL).get("2")
    assert challenger is not None
    code, out, err = run_cli("promote", "--run", challenger.run_id, "--force", "--reason", "schemathesis",
                             "--set", "promote.to=canary", "--set", "canary.share=0.5")  # fmt: skip
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["canary"] == "2", err[-2000:]
    with serve_process(served) as port:
        repo = Path(__file__).resolve().parents[2]
        st_env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.serving.schemathesis_hooks",
                  "PYTHONPATH": str(repo), "NO_COLOR": "1"}  # fmt: skip
        st = subprocess.run(
            [str(VENV_BIN / "schemathesis"), "run", f"http://127.0.0.1:{port}/openapi.json",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",  # replaced by a custom check
             "--phases", "examples,coverage,fuzzing", "--max-examples", "60", "--seed", "13", "--workers", "2",
             "--report", "ndjson", "--report-dir", str(tmp_path / "st")],
            cwd=repo, env=st_env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    assert st.returncode == 0, st.stdout[-6000:] + st.stderr[-2000:]
    statuses: dict[str, set[int]] = {}
    checks: dict[str, set[str]] = {}
    for line in next((tmp_path / "st").glob("*.ndjson")).read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event is None:
            continue
        recorder = event["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            if interaction.get("response"):
                statuses.setdefault(recorder["label"], set()).add(interaction["response"]["status_code"])
        for results in recorder.get("checks", {}).values():
            for result in results:
                checks.setdefault(result["name"], set()).add(result["status"])
    assert set(statuses) == {"GET /health", "GET /ready", "GET /metrics", "GET /schema", "POST /predict"}
    assert not any(code >= 500 for codes in statuses.values() for code in codes), statuses
    assert {200, 422} <= statuses["POST /predict"], statuses
    assert checks["four_xx_names_the_field"] == {"success"} and checks["valid_requests_are_answered"] == {
        "success"
    }
    # the split answered: the canary served some of the fuzzed flights (its log says so)
    assert {"champion", "canary"} <= set(read_log(served)["role"])


def test_serving_guardrail_reads_latency_and_errors_by_role_from_prometheus(
    served: Path, run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deploy loop's serving guardrail on real parts: `mlops serve` with a canary on half
    the flights, Debian's Prometheus scraping it every second, a few hundred one-flight
    requests; the guardrail reads requests, errors and p99 latency by role back with PromQL,
    finds no breach within generous limits and a latency breach when the canary may not be
    slower than 1% of the champion; an unreachable Prometheus is an error, not a pass."""
    from pipelines.config import Settings, load_params
    from pipelines.registry import Registry
    from pipelines.steps.deploy import _serving_guardrail, serving_breaches, serving_metrics

    challenger = Registry(Settings(project_dir=served), MODEL).get("2")
    assert challenger is not None
    code, _, err = run_cli("promote", "--run", challenger.run_id, "--force", "--reason", "guardrail",
                           "--set", "promote.to=canary", "--set", "canary.share=0.5")  # fmt: skip
    assert code == 0, err[-2000:]
    installed = subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts/prometheus.sh")],
                               capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    instances = flights(served, 300)
    with serve_process(served) as port:
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: mlops-serve\n"
                          f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")  # fmt: skip
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{prom_port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # a scrape has seen both roles' series (at 0: the server creates them at load)
                try:
                    measured = serving_metrics(url, "10m")
                except OSError:
                    measured = {}
                if {"champion", "canary"} <= set(measured):
                    break
                assert time.monotonic() < deadline, f"Prometheus did not scrape the server: {measured}"
                time.sleep(1)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for index, instance in enumerate(instances):
                body = json.dumps({"instances": [instance], "keys": [f"2013-01-31/flight-{index}"]})
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                assert response.status == 200, response.read()[:300]
                response.read()
            deadline = time.monotonic() + 120
            while True:  # until a scrape after the last request is in
                try:
                    measured = serving_metrics(url, "10m")
                except OSError:
                    measured = {}
                if sum(measured.get(role, {}).get("requests", 0) for role in ("champion", "canary")) >= 299.5:
                    break
                assert time.monotonic() < deadline, f"Prometheus did not scrape the requests: {measured}"
                time.sleep(1)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
    print("\nserving metrics by role:", measured)
    canary, champion = measured["canary"], measured["champion"]
    assert canary["requests"] >= 100 and champion["requests"] >= 100, measured  # about half each
    assert canary["errors"] == 0 and champion["errors"] == 0
    assert 0 < canary["p99_s"] < 1 and 0 < champion["p99_s"] < 1
    cfg = {**load_params(Settings(project_dir=served)).section("canary"), "max_latency_ratio": 100.0}
    assert serving_breaches(cfg, measured) == []
    slow = serving_breaches({**cfg, "max_latency_ratio": 0.01}, measured)
    assert len(slow) == 1 and "p99 latency" in slow[0], slow
    assert serving_breaches({**cfg, "max_latency_ratio": 0.01, "min_requests": 10_000}, measured) == []
    # the decide step's reading of it: evidence when reachable, an error (promotion held) when not
    monkeypatch.setenv("MLOPS_PROMETHEUS_URL", f"http://127.0.0.1:{free_port()}")
    unreachable = _serving_guardrail(cfg)
    assert unreachable["checked"] is False and "Connection refused" in unreachable["error"], unreachable


@contextlib.contextmanager
def serve_process(root: Path, *args: str) -> Iterator[int]:
    """A real `mlops serve` (uvicorn) on a free port, ready; stopped (SIGTERM) on exit."""
    port = free_port()
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(root), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen([str(VENV_BIN / "mlops"), "serve", "--port", str(port), *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _ready(port):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read() if proc.stdout else ""
            )
            time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
