"""A real Airflow: scheduler, dag-processor, triggerer and api-server started by
`scripts/airflow.sh` (what `make airflow` runs) on a temporary AIRFLOW_HOME, driven only
through the REST API.

Scenario: the champion was trained on January 2013; July batches arrive. `nightly` for
2013-07-15 finds the data drifted against the champion's reference, emits the drift Asset
event, which starts `retrain`; retrain runs to success and either promotes or is refused
with a gate report. Then `rollback` is triggered with Params (bad Params first: 400).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VENV_BIN, train_champion

pytestmark = pytest.mark.e2e


class Api:
    def __init__(self, base: str) -> None:
        self.base, self.token = base, ""

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One REST call; a GET that meets a server error (the embedded SQLite metadata DB
        can be briefly locked while scheduler, dag-processor and tasks all write) is retried."""
        for attempt in range(5):
            status, answer = self._call(method, path, body)
            if method != "GET" or status < 500:
                break
            time.sleep(1 + attempt)
        return status, answer

    def get(self, path: str) -> Any:
        status, answer = self.call("GET", path)
        assert status == 200, f"GET {path}: {status} {answer}"
        return answer

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, run = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if status == 200 and run["state"] in ("success", "failed"):
                return run
            time.sleep(3)
        raise AssertionError(f"{dag_id} run {run_id} did not finish in {timeout}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def drifted_workspace(january: Path) -> Path:
    """Champion trained on January; July 9-14 validated and scored (the monitor's week)."""
    from pipelines.config import Settings, load_params
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.score import score
    from pipelines.steps.validate import validate

    train_champion(january)
    settings = Settings(project_dir=january)
    params = load_params(settings)
    july = parse_days(None, "2013-07-09:2013-07-14")
    ingest(settings, params, july)
    validate(settings, params, july)
    for day in july:
        score(settings, params, day)
    return january


@pytest.fixture
def airflow(drifted_workspace: Path, tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    home = tmp_path / "airflow-home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW_PORT=str(port), MLOPS_PROJECT_DIR=str(drifted_workspace),
               AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5", AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
               PATH=f"{VENV_BIN}:{os.environ['PATH']}",
               # no clock-driven runs while the test drives the DAGs: unpausing a daily nightly
               # would start today's run (today mapped to 2013), and the weekly safety-net
               # retrain would start too. A yearly cron keeps nightly periodic (backfills need
               # that) with its latest slot on 1 January, a day the champion was trained on.
               MLOPS_NIGHTLY_CRON="0 3 1 1 *", MLOPS_RETRAIN_CRON="none")  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(["bash", str(REPO / "scripts/airflow.sh")], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    api = Api(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if api.call("GET", "/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"airflow.sh exited: {proc.stdout.read() if proc.stdout else ''}"
            time.sleep(3)
        else:
            raise AssertionError("the api-server did not answer /api/v2/monitor/health in 300s")
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        status, body = api.call("POST", "/auth/token", {"username": "admin", "password": passwords["admin"]})
        assert status in (200, 201), body
        api.token = body["access_token"]
        yield api, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        for log in sorted((home / "logs").glob("*.log")):
            shutil.copy(log, tmp_path / log.name)  # kept for a failing run's report


def test_drift_triggers_retrain_and_rollback_through_the_rest_api(airflow, drifted_workspace: Path) -> None:  # type: ignore[no-untyped-def]
    api, home = airflow
    deadline = time.monotonic() + 180
    while api.call("GET", "/api/v2/dags/rollback")[0] != 200:  # parsed by the dag-processor
        assert time.monotonic() < deadline, "DAGs were not parsed in 180s"
        time.sleep(3)
    for dag_id in ("nightly", "retrain", "rollback"):
        status, body = api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False

    # nightly for a July day, against a January champion
    status, run = api.call(
        "POST", "/api/v2/dags/nightly/dagRuns", {"logical_date": None, "conf": {"date": "2013-07-15"}}
    )
    assert status == 200, run
    run = api.wait_run("nightly", run["dag_run_id"])
    runs = api.get("/api/v2/dags/nightly/dagRuns")
    for other in runs["dag_runs"]:  # the yearly slot that unpausing may have started
        if other["dag_run_id"] != run["dag_run_id"]:
            assert api.wait_run("nightly", other["dag_run_id"])["state"] == "success"
    states = api.task_states("nightly", run["dag_run_id"])
    assert run["state"] == "success", (states, _logs(home))
    assert states == {"ingest": "success", "validate": "success", "score": "success", "monitor": "success",
                      "signal_retraining": "success"}  # fmt: skip
    summary = json.loads((drifted_workspace / "reports/monitor/2013-07-15/summary.json").read_text())
    assert summary["breach"] and "month" in summary["drifted_features"]

    events = api.get("/api/v2/assets/events?source_dag_id=nightly")
    assert events["total_entries"] == 1, "only the July day breached"
    event = events["asset_events"][0]
    assert event["extra"]["date"] == "2013-07-15" and event["extra"]["reasons"]

    # the asset event started retrain
    deadline = time.monotonic() + 120
    while True:
        runs = api.get("/api/v2/dags/retrain/dagRuns")
        triggered = [r for r in runs["dag_runs"] if r["run_type"] == "asset_triggered"]
        if triggered:
            break
        assert time.monotonic() < deadline, "no asset-triggered retrain run"
        time.sleep(3)
    retrain = api.wait_run("retrain", triggered[0]["dag_run_id"])
    states = api.task_states("retrain", retrain["dag_run_id"])
    assert retrain["state"] == "success", (states, _logs(home))
    gate = json.loads((drifted_workspace / "reports/gate.json").read_text())
    assert gate["champion_version"] == "1" and gate["window"]["end"] == "2013-07-15"
    if gate["blessed"]:
        assert states == {"retrain": "success", "promote": "success", "announce": "success"}
    else:
        assert states == {"retrain": "success", "promote": "skipped", "announce": "skipped"}

    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry

    registry = Registry(Settings(project_dir=drifted_workspace), "flight-delay")
    before = registry.alias(CHAMPION)
    assert before is not None and before.version == ("2" if gate["blessed"] else "1")

    # rollback with Params: a missing reason (or expected champion) is refused by the form's schema
    status, body = api.call(
        "POST", "/api/v2/dags/rollback/dagRuns",
        {"logical_date": None, "conf": {"rollback_to": "previous", "expected_champion": before.version}},
    )  # fmt: skip
    assert status == 400 and "rollback_reason" in json.dumps(body)
    target = "previous" if gate["blessed"] else "2"
    conf = {
        "rollback_to": target,
        "rollback_reason": "REST API rollback drill",
        "expected_champion": before.version,
    }
    status, run = api.call("POST", "/api/v2/dags/rollback/dagRuns", {"logical_date": None, "conf": conf})
    assert status == 200, run
    run = api.wait_run("rollback", run["dag_run_id"], timeout=300)
    assert run["state"] == "success", _logs(home)
    after = registry.alias(CHAMPION)
    assert after is not None and after.version == ("1" if gate["blessed"] else "2")
    last = registry.audit_records()[-1]
    assert last["action"] == "rollback" and last["reason"] == "REST API rollback drill"
    assert dt.datetime.fromisoformat(last["at"].replace("Z", "+00:00")).year >= 2026
    # the actor is the Airflow user who triggered the run, as Airflow authenticated them
    assert last["actor"]["name"] == "admin" and last["actor"]["source"] == "airflow", last["actor"]
    assert last["actor"]["authenticated"] is True and last["actor"]["run"].startswith("rollback/manual__")
    # the generated admin password and the component logs are the owner's only
    for private in [
        home / "simple_auth_manager_passwords.json.generated",
        *sorted((home / "logs").glob("*.log")),
    ]:
        assert private.stat().st_mode & 0o077 == 0, f"{private} is readable by others"

    # a backfill over 2013 dates replays them (this test's yearly cron has one slot in range)
    body = {"dag_id": "nightly", "from_date": "2012-12-31T00:00:00Z", "to_date": "2013-01-02T00:00:00Z",
            "max_active_runs": 1, "reprocess_behavior": "none", "dag_run_conf": {}}  # fmt: skip
    status, backfill = api.call("POST", "/api/v2/backfills", body)
    assert status == 200, backfill
    deadline = time.monotonic() + 600
    while True:
        runs = api.get("/api/v2/dags/nightly/dagRuns")
        replayed = [r for r in runs["dag_runs"] if r["run_type"] == "backfill"]
        if replayed and all(r["state"] in ("success", "failed") for r in replayed):
            break
        assert time.monotonic() < deadline, f"backfill runs did not finish: {replayed}"
        time.sleep(5)
    assert [r["logical_date"][:10] for r in replayed] == ["2013-01-01"]
    assert replayed[0]["state"] == "success", _logs(home)
    states = api.task_states("nightly", replayed[0]["dag_run_id"])
    assert states["score"] == "success" and states["monitor"] == "success"
    assert (
        json.loads((drifted_workspace / "reports/monitor/2013-01-01/summary.json").read_text())["date"]
        == "2013-01-01"
    )


def _logs(home: Path) -> str:
    parts = []
    for log in sorted((home / "logs").glob("*.log")):
        parts.append(f"--- {log.name}\n{log.read_text()[-3000:]}")
    return "\n".join(parts)
