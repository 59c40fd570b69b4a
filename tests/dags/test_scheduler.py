"""A real Airflow: scheduler, dag-processor, triggerer and api-server started by
`scripts/airflow.sh` (what `make airflow` runs) on a temporary AIRFLOW_HOME, driven only
through the REST API.

Scenario: the champion was trained on January 2013; July batches arrive. `nightly` for
2013-07-15 finds the data drifted against the champion's reference, emits the drift Asset
event, which starts `retrain`; retrain runs to success and either promotes or is refused
with a gate report. Then `rollback` is triggered with Params (bad Params first: 400).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import train_champion
from tests.dags.airflow_server import Api, browser_page, running_airflow, screenshot

pytestmark = pytest.mark.e2e


@pytest.fixture
def drifted_workspace(january: Path) -> Path:
    """Champion trained on January; July 1-14 validated (a contiguous training window ending
    on the nightly's day), July 9-14 scored (the monitor's week)."""
    from pipelines.config import Settings, load_params
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.score import score
    from pipelines.steps.validate import validate

    train_champion(january)
    settings = Settings(project_dir=january)
    params = load_params(settings)
    july = parse_days(None, "2013-07-01:2013-07-14")
    ingest(settings, params, july)
    validate(settings, params, july)
    assert len(list((january / "data/validated").glob("2013-07-*.parquet"))) == 14
    for day in july[8:]:
        score(settings, params, day)
    return january


@pytest.fixture
def airflow(drifted_workspace: Path, tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    # A yearly cron: unpausing nightly starts exactly one scheduled run (this year's 1 January
    # slot, catchup off), which the replay clock maps to the day after the newest landed day
    # (2013-07-15); backfills over 2013 need the periodic schedule. No weekly safety-net
    # retrain while the test drives the DAGs. Retries come quickly.
    with running_airflow(drifted_workspace, tmp_path, MLOPS_NIGHTLY_CRON="0 3 1 1 *",
                         MLOPS_TASK_RETRY_DELAY_S="3", MLOPS_RETRAIN_CRON="none") as (api, home):  # fmt: skip
        yield api, home


def test_scheduled_nightly_drift_retrain_refusal_kill_rollback_backfill(
    airflow, drifted_workspace: Path
) -> None:  # type: ignore[no-untyped-def]
    api, home = airflow
    deadline = time.monotonic() + 180
    while api.call("GET", "/api/v2/dags/rollback")[0] != 200:  # parsed by the dag-processor
        assert time.monotonic() < deadline, "DAGs were not parsed in 180s"
        time.sleep(1)
    for dag_id in ("retrain", "rollback", "nightly"):
        status, body = api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False

    # 1. the scheduler's own nightly run (no date given): the replay clock lands 2013-07-15,
    #    the day after the newest landed day, and finds it drifted against a January champion
    deadline = time.monotonic() + 180
    while not (scheduled := [r for r in api.get("/api/v2/dags/nightly/dagRuns")["dag_runs"]
                             if r["run_type"] == "scheduled"]):  # fmt: skip
        assert time.monotonic() < deadline, "unpausing nightly started no scheduled run"
        time.sleep(1)
    run = api.wait_run("nightly", scheduled[0]["dag_run_id"])
    states = api.task_states("nightly", run["dag_run_id"])
    assert run["state"] == "success", (states, _logs(home))
    assert not run["logical_date"].startswith("2013")  # a date of this year, not replayed as itself
    assert xcom(api, "nightly", run["dag_run_id"], "ingest")["date"] == "2013-07-15"
    assert states == {"ingest": "success", "validate": "success", "score": "success", "monitor": "success",
                      "signal_retraining": "success", "decide": "skipped"}  # fmt: skip
    summary = json.loads((drifted_workspace / "reports/monitor/2013-07-15/summary.json").read_text())
    assert summary["breach"] and "month" in summary["drifted_features"]
    assert "breach on 2013-07-15 (champion v1)" in task_log(
        home, "nightly", run["dag_run_id"], "signal_retraining"
    )
    # the run's logs link the GX Data Docs of the batch and the Evidently report
    docs = (drifted_workspace / "reports/validation/docs/2013-07-15.html").resolve()
    assert f"GX Data Docs: {docs.as_uri()}" in task_log(home, "nightly", run["dag_run_id"], "validate")
    assert docs.exists()
    report = (drifted_workspace / "reports/monitor/2013-07-15/drift.html").resolve()
    assert f"Evidently report: {report.as_uri()}" in task_log(home, "nightly", run["dag_run_id"], "monitor")

    events = api.get("/api/v2/assets/events?source_dag_id=nightly")
    assert events["total_entries"] == 1, "only the July day breached"
    event = events["asset_events"][0]
    assert event["extra"]["date"] == "2013-07-15" and event["extra"]["reasons"]

    # 2. the asset event started retrain: one task per stage, the gate, registration, promotion
    deadline = time.monotonic() + 120
    while True:
        runs = api.get("/api/v2/dags/retrain/dagRuns")
        triggered = [r for r in runs["dag_runs"] if r["run_type"] == "asset_triggered"]
        if triggered:
            break
        assert time.monotonic() < deadline, "no asset-triggered retrain run"
        time.sleep(1)
    retrain = api.wait_run("retrain", triggered[0]["dag_run_id"])
    states = api.task_states("retrain", retrain["dag_run_id"])
    assert retrain["state"] == "success", (states, _logs(home))
    gate = json.loads((drifted_workspace / "reports/gate.json").read_text())
    assert gate["champion_version"] == "1"
    assert (gate["window"]["start"], gate["window"]["end"]) == ("2013-07-01", "2013-07-15")  # contiguous
    stages = {"featurize": "success", "train": "success", "register": "success"}
    if gate["blessed"]:
        assert states == {**stages, "evaluate": "success", "promote": "success", "announce": "success"}
    else:
        assert states == {**stages, "evaluate": "skipped", "promote": "skipped", "announce": "skipped"}

    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry

    registry = Registry(Settings(project_dir=drifted_workspace), "flight-delay")
    before = registry.alias(CHAMPION)
    assert before is not None and before.version == ("2" if gate["blessed"] else "1")

    # 3. a manual retrain with Params, killed (SIGKILL, the whole process tree) in the middle of
    #    its train stage: Airflow retries the task, the gate refuses the model (evaluate is
    #    skipped, with the failed check in its log), the model is registered as the challenger
    #    with the refusal in the audit log, and params.yaml is never touched
    params_yaml = (drifted_workspace / "params.yaml").read_bytes()
    status, body = api.call(
        "POST", "/api/v2/dags/retrain/dagRuns", {"logical_date": None, "conf": {"force_reason": "x"}}
    )
    assert status == 400 and "force_reason" in json.dumps(body), body  # a reason needs 3 characters
    conf = {"max_iter": 60, "min_roc_auc": 0.99}
    status, manual = api.call("POST", "/api/v2/dags/retrain/dagRuns", {"logical_date": None, "conf": conf})
    assert status == 200, manual
    killed = kill_stage(drifted_workspace, "train", timeout=300)
    manual = api.wait_run("retrain", manual["dag_run_id"])
    tis = {
        ti["task_id"]: ti
        for ti in api.get(f"/api/v2/dags/retrain/dagRuns/{manual['dag_run_id']}/taskInstances")[
            "task_instances"
        ]
    }
    assert manual["state"] == "success", ({t: ti["state"] for t, ti in tis.items()}, _logs(home))
    assert {t: ti["state"] for t, ti in tis.items()} == {
        "featurize": "success", "train": "success", "evaluate": "skipped", "register": "success",
        "promote": "skipped", "announce": "skipped"}  # fmt: skip
    assert tis["train"]["try_number"] == 2, f"the killed train (pids {killed}) was retried"
    assert "roc_auc" in task_log(home, "retrain", manual["dag_run_id"], "evaluate")
    assert (drifted_workspace / "params.yaml").read_bytes() == params_yaml
    challenger = xcom(api, "retrain", manual["dag_run_id"], "register")
    assert challenger["verdict"] == "refused" and challenger["failed_checks"]
    records = registry.audit_records()
    assert records[-1]["action"] == "refuse" and records[-1]["version"] == challenger["version"]
    assert records[-1]["actor"]["name"] == "admin"
    assert registry.alias(CHAMPION).version == before.version  # type: ignore[union-attr]
    assert (drifted_workspace / "reports/gate.json").exists()
    assert json.loads((drifted_workspace / "reports/gate.json").read_text()) == gate  # the run's own copy

    # 4. rollback with Params: a missing reason (or expected champion) is refused by the form's schema
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

    # 5. a backfill over 2013 dates replays them (this test's yearly cron has one slot in range)
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
        time.sleep(1)
    assert [r["logical_date"][:10] for r in replayed] == ["2013-01-01"]
    assert replayed[0]["state"] == "success", _logs(home)
    states = api.task_states("nightly", replayed[0]["dag_run_id"])
    assert states["score"] == "success" and states["monitor"] == "success"
    assert (
        json.loads((drifted_workspace / "reports/monitor/2013-01-01/summary.json").read_text())["date"]
        == "2013-01-01"
    )

    # 6. a manual nightly without a date continues the replay where it stopped (the backfill
    #    of a January day does not move the clock back); retrain paused: the breach's event
    #    starts no run
    assert api.call("PATCH", "/api/v2/dags/retrain", {"is_paused": True})[0] == 200
    status, run = api.call("POST", "/api/v2/dags/nightly/dagRuns", {"logical_date": None, "conf": {}})
    assert status == 200, run
    run = api.wait_run("nightly", run["dag_run_id"])
    assert run["state"] == "success", _logs(home)
    assert xcom(api, "nightly", run["dag_run_id"], "ingest")["date"] == "2013-07-16"
    assert (drifted_workspace / "reports/monitor/2013-07-16/summary.json").exists()


@contextlib.contextmanager
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP endpoint standing in for the team's Slack/Teams webhook (MLOPS_ALERT_WEBHOOK):
    it keeps every JSON body posted to it."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def test_deploy_loop_through_the_scheduler(loop_base: tuple[Path, str, str, str], tmp_path: Path) -> None:
    """The deploy loop as it runs in production: the nightly DAG's runs, one per replayed day,
    executed by the real scheduler (manual runs with the date Param, one after the other).
    A crippled candidate (a constant model: no leaf may hold fewer than 100,000 flights;
    forced past the gate) goes to canary on 30% of the flights and the `decide` task rolls
    it back at the first breach, within the baking period; then a genuinely better one
    (trained on more than twice the champion's days) bakes two labelled days
    (canary.baking_days=2 here, to keep CI short; tests/model/test_deploy_loop.py runs the
    default 3 through the commands) and `decide` promotes it. Both audited with their
    evidence; every decision reaches the webhook."""
    import yaml

    from tests.code.conftest import mlops, ok
    from tests.conftest import clone_workspace, git

    base, crippled, _, better = loop_base  # the constant model: it cannot rank flights at all
    ws = clone_workspace(base, tmp_path / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["canary"]["baking_days"] = 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(ws, "commit", "-qam", "deploy loop drill: two baking days")
    started = ok(mlops(ws, "promote", "--run", crippled, "--force", "--reason", "drill: a crippled model",
                       "--set", "promote.to=canary", "--set", "canary.share=0.3"))  # fmt: skip
    assert (started["canary"], started["champion"]) == ("2", "1")
    with webhook() as (url, received), running_airflow(
        ws, tmp_path, MLOPS_NIGHTLY_CRON="none", MLOPS_RETRAIN_CRON="none", MLOPS_TASK_RETRY_DELAY_S="3",
        MLOPS_ALERT_WEBHOOK=url,
    ) as (api, home):  # fmt: skip
        deadline = time.monotonic() + 180
        while api.call("GET", "/api/v2/dags/nightly")[0] != 200:
            assert time.monotonic() < deadline, "DAGs were not parsed in 180s"
            time.sleep(1)
        status, body = api.call("PATCH", "/api/v2/dags/nightly", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False  # retrain stays paused: no drift retraining

        def night(day: str) -> dict[str, Any]:
            status, run = api.call("POST", "/api/v2/dags/nightly/dagRuns",
                                   {"logical_date": None, "conf": {"date": day}})  # fmt: skip
            assert status == 200, run
            run = api.wait_run("nightly", run["dag_run_id"])
            states = api.task_states("nightly", run["dag_run_id"])
            assert run["state"] == "success" and states["decide"] == "success", (states, _logs(home))
            return xcom(api, "nightly", run["dag_run_id"], "decide") | {"run": run["dag_run_id"]}

        first = [night("2013-01-11"), night("2013-01-12")]
        timeline = [(d["date"], d["decision"], d["labelled_days"], d.get("auc_difference")) for d in first]
        print("\ncrippled canary:", *timeline, sep="\n  ")
        assert [d["decision"] for d in first] == ["baking", "rollback"], timeline
        assert first[-1]["labelled_days"] == ["2013-01-11"] and "breach" in first[-1]["why"]
        assert first[-1]["changed"] is True
        # the decision in the task's log, and as the UI shows it: the decide task's XCom tab
        assert "rollback" in task_log(home, "nightly", first[-1]["run"], "decide")
        with browser_page(api) as page:
            page.goto(f"{api.base}/dags/nightly/runs/{quote(first[-1]['run'], safe='')}/tasks/decide/xcom")
            # the tab lists the value collapsed ("{ ... }"): expanded, as a person opens it
            page.get_by_role("button", name="Expand all extra JSON").click()
            row = page.locator("tbody tr").filter(has_text="return_value").first
            row.get_by_text('"rollback"').wait_for()  # visible, in the Value cell
            shown = row.inner_text().replace("\xa0", " ")  # the JSON view indents with no-break spaces
            assert '"decision": "rollback"' in shown and "breach" in shown, shown
            screenshot(page, "nightly-decide-rollback-xcom")

        ok(mlops(ws, "promote", "--run", better, "--set", "promote.to=canary", "--set", "canary.share=0.3"))
        second = [night(f"2013-01-{day}") for day in (13, 14, 15)]
        timeline = [(d["date"], d["decision"], d["labelled_days"], d.get("auc_difference")) for d in second]
        print("better canary:", *timeline, sep="\n  ")
        assert [d["decision"] for d in second] == ["baking", "baking", "promote"], timeline
        assert second[-1]["labelled_days"] == ["2013-01-13", "2013-01-14"]

    status = json.loads(mlops(ws, "status", "--json").stdout)
    assert status["champion"]["version"] == "3" and status["canary"] is None and status["audit_check"]["ok"]
    records = json.loads(mlops(ws, "audit", "log", "--json").stdout)
    moves = [
        (r["action"], r["from"], r["to"])
        for r in records
        if r["action"] in ("canary", "canary-rollback", "promote")
    ]
    assert moves[-4:] == [("canary", None, "2"), ("canary-rollback", "2", None), ("canary", None, "3"),
                          ("promote", "1", "3")], moves  # fmt: skip
    rollback = next(r for r in reversed(records) if r["action"] == "canary-rollback")
    promotion = records[-1]
    assert rollback["evidence"]["decision"] == "rollback" and rollback["evidence"]["date"] == "2013-01-12"
    assert promotion["evidence"]["decision"] == "promote" and promotion["infra"]["ok"]
    assert promotion["actor"]["source"] == "airflow", promotion["actor"]
    # every decision went to the webhook: three baking days, the rollback and the promotion
    texts = [m["text"] for m in received]
    assert sum("baking on" in t for t in texts) == 3, texts
    assert any("v2 rolled back" in t for t in texts) and any("v3" in t and "promot" in t for t in texts), (
        texts
    )


def xcom(api: Api, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """A task's result (the last line `mlops` printed, pushed as its XCom)."""
    from step_operator import step_result

    body = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
    return step_result(body["value"])


def task_log(home: Path, dag_id: str, run_id: str, task_id: str) -> str:
    folder = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("attempt=*.log")))


def kill_stage(workspace: Path, stage: str, timeout: float) -> list[int]:
    """SIGKILL the process tree of this workspace's `mlops retrain --stage <stage>` while DVC
    runs the stage's own command (as when its host or pod is lost): no handler, no `finally`."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "retrain" not in cmd or "--stage" not in cmd or cmd[cmd.index("--stage") + 1 :][:1] != [stage]:
                continue
            try:
                if proc.environ().get("MLOPS_PROJECT_DIR") != str(workspace):
                    continue
                while time.monotonic() < deadline:  # until `dvc repro` runs `mlops <stage>`
                    tree = [*proc.children(recursive=True), proc]
                    if any(
                        stage in member.cmdline() and "retrain" not in member.cmdline() for member in tree
                    ):
                        break
                    time.sleep(0.1)
                time.sleep(1.0)  # into the stage's work
                tree = [*proc.children(recursive=True), proc]
                for member in tree:
                    member.kill()
                return [member.pid for member in tree]
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no `mlops retrain --stage {stage}` process for {workspace} in {timeout}s")


def _logs(home: Path) -> str:
    parts = []
    for log in sorted((home / "logs").glob("*.log")):
        parts.append(f"--- {log.name}\n{log.read_text()[-3000:]}")
    return "\n".join(parts)
