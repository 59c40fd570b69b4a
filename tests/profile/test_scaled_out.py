"""The scaled-out profile for real: `scripts/profile.sh` starts Postgres-backed Airflow with
the CeleryExecutor (Redis broker, one Celery worker), a Postgres-backed MLflow server with
S3 artifacts, and an S3 endpoint (moto's server mode). Every client talks to them over
HTTP/TCP on loopback; nothing is patched.

Two fault proxies (tests/services.py) sit between the clients and the S3 endpoint / the
MLflow server, so a test can stop either in the middle of a run and start it again.

- local mode: steps run by the Celery worker as subprocesses (the profile's default);
- docker mode: every step a container started by Airflow's DockerOperator through
  Podman's Docker-compatible API (scripts/podman.sh), talking to the same servers.

Postgres and Redis are this machine's services; with CI=true a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, VENV_BIN, git, make_workspace
from tests.dags.test_scheduler import Api
from tests.services import FaultProxy, free_port, s3_client

pytestmark = pytest.mark.e2e

PG = os.environ.get("MLOPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RETRAIN_TASKS = ("featurize", "train", "evaluate", "register", "promote", "announce")
MODEL = "flight-delay"
SEED = "2013-01-01:2013-01-28"  # validated before the DAGs run: the first training window
# cross-host promotion races: each trial is two `mlops promote` processes that load and
# check their model (the infra check) before they meet at the registry lock (~10 s a trial)
TRIALS = 6


def lap(label: str, _start: list[float] = []) -> None:  # noqa: B006 - the scenario's clock
    """Print how far a long scenario has come (shown with -s, and in a failing test's report)."""
    now = time.monotonic()
    if not _start:
        _start.append(now)
    print(f"[{now - _start[0]:7.1f} s] {label}", flush=True)


def require_services() -> None:
    """Postgres and Redis must answer: a failure under CI=true, a skip on a laptop without them."""
    import socket

    missing = []
    if subprocess.run(["pg_isready", "-d", f"{PG}/postgres", "-q"], capture_output=True).returncode != 0:
        missing.append(f"Postgres at {PG}")
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                missing.append("Redis (no PONG)")
    except OSError:
        missing.append(f"Redis at {REDIS_HOST}:{REDIS_PORT}")
    if missing:
        message = f"the scaled-out profile needs {', '.join(missing)} (see scripts/profile.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class Profile:
    """One running profile: its workspace, its servers behind fault proxies, its REST API."""

    def __init__(self, tmp: Path, mode: str, extra_env: dict[str, str]) -> None:
        self.name = f"mlops_t{uuid.uuid4().hex[:8]}"
        self.state = tmp / "profile"
        self.workspace = make_workspace(tmp / "ws")
        self.bucket = "mlops"
        s3_port, mlflow_port, self.airflow_port, self.serve_port, self.prometheus_port = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        )
        self.s3 = FaultProxy(s3_port)  # clients reach S3 and MLflow through these
        self.mlflow = FaultProxy(mlflow_port)
        self.mlflow_direct = f"http://127.0.0.1:{mlflow_port}"
        self.s3_direct = f"http://127.0.0.1:{s3_port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "MLOPS_"))}
        self.env = {
            **base, "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "MLOPS_PROFILE_DIR": str(self.state), "MLOPS_PROFILE_NAME": self.name, "MLOPS_PG": PG,
            "MLOPS_REDIS": f"redis://{REDIS_HOST}:{REDIS_PORT}/0", "MLOPS_BUCKET": self.bucket,
            "MLOPS_S3_PORT": str(s3_port), "MLOPS_MLFLOW_PORT": str(mlflow_port),
            "AIRFLOW_PORT": str(self.airflow_port), "MLOPS_SERVE_PORT": str(self.serve_port), "MLOPS_SERVE_POLL_S": "1.0",
            "MLOPS_PROMETHEUS_PORT": str(self.prometheus_port), "MLOPS_SCRAPE_S": "1",
            "MLOPS_S3_URL": self.s3.url,
            "MLOPS_MLFLOW_URL": self.mlflow.url, "MLOPS_PROJECT_DIR": str(self.workspace),
            "MLOPS_EXECUTION_MODE": mode, "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # the test drives the DAGs: no clock-driven runs
            "MLOPS_NIGHTLY_CRON": "none", "MLOPS_RETRAIN_CRON": "none",
            "MLOPS_S3_MAX_ATTEMPTS": "4", **extra_env,
        }  # fmt: skip
        if mode == "docker":  # the workspace is bind-mounted as the containers' /project
            self.env["MLOPS_DOCKER_PROJECT_MOUNT"] = str(self.workspace)
        self.api = Api(f"http://127.0.0.1:{self.airflow_port}")

    # -- life cycle ------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        proc = subprocess.run(["bash", str(REPO / "scripts/profile.sh"), "up"], env=self.env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"profile.sh up failed:\n{proc.stdout}\n{proc.stderr}\n{self.logs()}"
        print(f"\nprofile up in {time.monotonic() - started:.0f} s\n{proc.stdout}")
        for line in (self.state / "profile.env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value
        passwords = json.loads(
            (self.state / "airflow/simple_auth_manager_passwords.json.generated").read_text()
        )
        status, body = self.api.call(
            "POST", "/auth/token", {"username": "admin", "password": passwords["admin"]}
        )
        assert status in (200, 201), body
        self.api.token = body["access_token"]
        deadline = time.monotonic() + 240
        while any(self.api.call("GET", f"/api/v2/dags/{d}")[0] != 200 for d in ("nightly", "retrain")):
            assert time.monotonic() < deadline, f"DAGs not parsed in 240 s\n{self.logs()}"
            time.sleep(1)
        for dag_id in ("nightly", "retrain"):
            status, body = self.api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
            assert status == 200, body

    def down(self) -> None:
        proc = subprocess.run(["bash", str(REPO / "scripts/profile.sh"), "down"], env=self.env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        status = subprocess.run(["bash", str(REPO / "scripts/profile.sh"), "status"], env=self.env,
                                capture_output=True, text=True)  # fmt: skip
        assert "running" not in status.stdout, status.stdout  # stopped cleanly, nothing left behind
        for proxy in (self.s3, self.mlflow):
            proxy.close()
        for db in ("airflow", "mlflow"):
            subprocess.run(["dropdb", "--if-exists", "-d", f"{PG}/postgres", f"{self.name}_{db}"],
                           capture_output=True)  # fmt: skip

    def logs(self) -> str:
        parts = []
        for log in sorted(self.state.glob("**/logs/*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)

    # -- driving it ------------------------------------------------------------------------
    def mlops(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The step command exactly as a task runs it, with the profile's environment."""
        return subprocess.run([str(VENV_BIN / "mlops"), *args], cwd=cwd or self.workspace,
                              env={**self.env, **(env or {})}, capture_output=True, text=True)  # fmt: skip

    def race(
        self,
        first: tuple[Path, list[str], str],
        second: tuple[Path, list[str], str],
        barrier: Path,
        head_start: float = 0.0,
    ) -> list[subprocess.CompletedProcess[str]]:
        """Two commands, each from its own project folder (host), released together at the
        point (their last step before the registry lock) where both have done everything else
        (``head_start``: the first is released that many seconds before the second)."""
        procs = []
        for index, (folder, args, point) in enumerate((first, second)):
            gate = barrier.with_name(f"{barrier.name}-first") if head_start and index == 0 else barrier
            env = {**self.env, "MLOPS_PROJECT_DIR": str(folder), "MLOPS_TEST_PAUSE_AT": f"{point}={gate}"}
            procs.append(subprocess.Popen([str(VENV_BIN / "mlops"), *args], cwd=folder, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
        deadline = time.monotonic() + 300
        while len(list(barrier.parent.glob(f"{barrier.name}*.ready.*"))) < 2:
            ended = [proc for proc in procs if proc.poll() is not None]
            if ended or time.monotonic() > deadline:
                barrier.touch()
                barrier.with_name(f"{barrier.name}-first").touch()
                raise AssertionError(
                    f"a racer did not reach {barrier.name}: {[p.communicate()[1][-2000:] for p in procs]}"
                )
            time.sleep(0.05)
        if head_start:
            barrier.with_name(f"{barrier.name}-first").touch()
            time.sleep(head_start)
        barrier.touch()
        results = []
        for proc, (_, args, _) in zip(procs, (first, second), strict=True):
            out, err = proc.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
        return results

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        status, run = self.api.call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        assert status == 200, run
        return str(run["dag_run_id"])

    def finished(
        self, dag_id: str, run_id: str, timeout: float = 900
    ) -> tuple[str, dict[str, dict[str, Any]]]:
        run = self.api.wait_run(dag_id, run_id, timeout=timeout)
        body = self.api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return run["state"], {ti["task_id"]: ti for ti in body["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        folder = self.state / "airflow/logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("attempt=*.log")))

    def keys(self, prefix: str) -> list[str]:
        listed = s3_client(self.s3_direct).list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def registry(self):  # type: ignore[no-untyped-def]
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_direct, registry_uri=self.mlflow_direct)

    def settle(self) -> None:
        """Wait for `retrain` runs started by an Asset event (a drift breach on a nightly
        run) to finish, so that nothing else moves dvc.lock or the alias during a check.
        Only a nightly run whose `signal_retraining` task succeeded emitted the event (it is
        skipped when monitor found no breach): without one there is nothing to wait for."""
        emitted = False
        for run in self.api.get("/api/v2/dags/nightly/dagRuns")["dag_runs"]:
            _, tis = self.finished("nightly", run["dag_run_id"])
            emitted |= tis.get("signal_retraining", {}).get("state") == "success"
        if emitted:
            time.sleep(10)  # the scheduler creates an asset-triggered run within a few heartbeats
        for run in self.api.get("/api/v2/dags/retrain/dagRuns")["dag_runs"]:
            self.api.wait_run("retrain", run["dag_run_id"], timeout=900)

    def seed(self) -> None:
        """The first training window, validated (published to S3, pushed to the DVC remote)."""
        for step in ("ingest", "validate"):
            proc = self.mlops(step, "--dates", SEED)
            assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def profile_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    require_services()
    started: list[Profile] = []

    def start(mode: str = "local", **extra_env: str) -> Profile:
        profile = Profile(tmp_path / mode, mode, extra_env)
        started.append(profile)
        lap(f"{mode} profile: starting")
        profile.up()
        lap(f"{mode} profile: up")
        # this test's own MLflow clients log in as the profile's clients do (basic-auth)
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(key, profile.env[key])
        return profile

    yield start
    for profile in started:
        for log in profile.state.glob("**/logs/*.log"):  # kept for a failing run's report
            shutil.copy(log, tmp_path / f"{profile.name}-{log.name}")
        profile.down()


def promql(prometheus: str, query: str) -> list[dict[str, Any]]:
    """An instant query's result vector (Prometheus's HTTP API); fails on an error status."""
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(
        f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    ) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", (query, body)
    return list(body["data"]["result"])


@pytest.mark.timeout(2400)  # a long scenario: Celery runs, two outages, 9 cross-host race trials
def test_celery_profile_nightly_retrain_s3_and_mlflow_faults(profile_factory: Any) -> None:
    # a failed task is retried once, after 10-20 s (exponential back-off's jitter): time
    # enough to see the failure and start the S3 endpoint again
    p = profile_factory("local", MLOPS_TASK_RETRIES="1", MLOPS_TASK_RETRY_DELAY_S="10")
    # no drift-triggered retrain in the middle of the scenario (it would add a ~3 min run and
    # move the alias between the checks; the real scheduler test covers that path)
    params = p.workspace / "params.yaml"
    params.write_text(params.read_text().replace("drift_share: 0.15", "drift_share: 1.0", 1))
    git(p.workspace, "commit", "-qam", "drift never breaches in this scenario")
    lap("seeding")
    p.seed()

    lap("1. retrain through the Celery worker: ")
    # 1. retrain through the Celery worker: the first champion, registered on the MLflow server
    run_id = p.trigger("retrain", {})
    state, tis = p.finished("retrain", run_id)
    assert state == "success", {t: ti["state"] for t, ti in tis.items()}
    assert {t: ti["state"] for t, ti in tis.items()} == dict.fromkeys(RETRAIN_TASKS, "success")
    for ti in tis.values():  # executed by the Celery worker, on this profile's queue
        assert ti["queue"] == p.name and ti["hostname"], ti
    client = p.registry()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    # the registry is not open to whoever reaches the port (MLflow's basic-auth app)
    from mlflow.exceptions import MlflowException

    with pytest.MonkeyPatch.context() as without_login:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            without_login.delenv(key)
        with pytest.raises(MlflowException, match="401"):
            p.registry().set_registered_model_alias(MODEL, "champion", "1")
    # the server runs without MLflow's job runner (its huey consumers were eight more
    # processes, ~2 GB of memory): its session holds the CLI and the uvicorn worker only
    server = int((p.state / "mlflow.pid").read_text())
    ps = subprocess.run(["ps", "-eo", "sid=,args="], capture_output=True, text=True, check=True).stdout
    session = [line.split(None, 1)[1] for line in ps.splitlines() if int(line.split()[0]) == server]
    assert session and not [a for a in session if "mlflow.server.jobs" in a], session

    # the serving API of the profile picks the champion up from the server's registry and
    # logs what it serves to the bucket
    import datetime as dt
    import urllib.error
    import urllib.request

    import pandas as pd

    from pipelines.features import build_features

    rows = build_features(pd.read_parquet(p.workspace / "data/validated/2013-01-28.parquet")).head(20)
    request = urllib.request.Request(
        f"http://127.0.0.1:{p.serve_port}/predict", data=json.dumps({"instances": json.loads(
            rows.to_json(orient="records"))}).encode(), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    deadline = time.monotonic() + 300  # a busy MLflow server serves the model's files slowly
    while True:
        try:  # 503 until the poller has loaded the champion
            with urllib.request.urlopen(f"http://127.0.0.1:{p.serve_port}/ready") as ready_check:
                if ready_check.status == 200:
                    break
        except urllib.error.HTTPError as exc:
            assert exc.code == 503, exc
        assert time.monotonic() < deadline, "the serving API did not load the champion"
        time.sleep(1)
    with urllib.request.urlopen(request) as answer:
        served = json.loads(answer.read())
    assert served["model_version"] == "1" and len(served["predictions"]) == 20
    today = dt.datetime.now(dt.UTC).date().isoformat()
    deadline = time.monotonic() + 60
    while not p.keys(f"store/predictions/served/{today}/"):
        assert time.monotonic() < deadline, "the prediction log never reached the bucket"
        time.sleep(1)
    # monitor on another host (no local copy of the log) reads the served traffic from S3
    shutil.rmtree(p.workspace / "data/predictions/served")
    monitored = p.mlops("monitor", "--date", today, "--set", "monitor.traffic=served")
    assert monitored.returncode == 0, monitored.stderr[-3000:]
    summary = json.loads(s3_client(p.s3_direct).get_object(
        Bucket=p.bucket, Key=f"store/reports/monitor/{today}/summary.json")["Body"].read())  # fmt: skip
    assert summary["traffic"] == "served" and summary["current_rows"] == 20
    # the profile's Prometheus scrapes the serving API: the 20 flights and the monitor's drift
    # share (the serving API reads the newest summary at its next registry poll; until then the
    # gauge reads 0) come back from PromQL; every panel of the generated Grafana dashboard is
    # a query this Prometheus runs without error
    prometheus = f"http://127.0.0.1:{p.prometheus_port}"
    deadline = time.monotonic() + 120
    while True:
        flights = promql(prometheus, 'sum(mlops_serve_predictions_total{role="champion"})')
        drift = promql(prometheus, "mlops_monitor_drift_share")
        if (
            flights
            and float(flights[0]["value"][1]) == 20
            and drift
            and abs(float(drift[0]["value"][1]) - summary["drift_share"]) < 1e-9
        ):
            break
        assert time.monotonic() < deadline, (
            f"Prometheus did not scrape the flights and the summary's drift share "
            f"{summary['drift_share']}: {flights} {drift}"
        )
        time.sleep(1)
    assert summary["drift_share"] > 0  # the gauge's value came from the summary, not its default
    assert (
        promql(prometheus, 'sum(mlops_serve_requests_total{role="champion",outcome="ok"})')[0]["value"][1]
        == "1"
    )
    from scripts.grafana_dashboard import OUT, queries

    for expr in queries(json.loads(OUT.read_text())):
        promql(prometheus, expr.replace("$__rate_interval", "1m"))  # raises on a query Prometheus refuses

    lap("2. nightly for two more days")
    # 2. nightly for two more days (queued together; one run at a time)
    days = ["2013-01-29", "2013-01-30"]
    runs = [p.trigger("nightly", {"date": day}) for day in days]
    for day, run in zip(days, runs, strict=True):
        state, tis = p.finished("nightly", run)
        states = {t: ti["state"] for t, ti in tis.items()}
        assert state == "success", (day, states, p.task_log("nightly", run, "validate")[-3000:])
        assert all(states[t] == "success" for t in ("ingest", "validate", "score", "monitor")), states
        assert all(tis[t]["queue"] == p.name for t in ("ingest", "validate", "score", "monitor"))

    # what other hosts read: objects in the bucket
    for day in days:
        assert f"store/validated/{day}.parquet" in p.keys("store/validated/")
        assert f"store/reports/validation/{day}.json" in p.keys("store/reports/validation/")
        assert f"store/predictions/{day}.parquet" in p.keys("store/predictions/")
        assert any(k.endswith("summary.json") for k in p.keys(f"store/reports/monitor/{day}/"))
    assert len(p.keys("store/validated/")) == 30
    assert p.keys("store/reports/gate/"), "the gate report of the retrain is published"

    # the registry lives in Postgres ...
    aliases = subprocess.run(
        ["psql", f"{PG}/{p.name}_mlflow", "-Atc", "select name, alias, version from registered_model_aliases"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert f"{MODEL}|champion|1" in aliases
    # ... and the champion's artifacts are read back from S3 through the server
    from mlflow.artifacts import download_artifacts

    source = client.get_model_version_download_uri(MODEL, champion.version)
    local = Path(download_artifacts(artifact_uri=source, tracking_uri=p.mlflow_direct,
                                    dst_path=str(p.state / "champion")))  # fmt: skip
    stored = [k for k in p.keys("mlflow/") if k.endswith("/MLmodel")]
    assert stored, p.keys("mlflow/")[:20]
    body = s3_client(p.s3_direct).get_object(Bucket=p.bucket, Key=stored[0])["Body"].read()
    assert (local / "MLmodel").read_bytes() == body

    lap("3. dvc pull from the S3 remote in a fr")
    # 3. dvc pull from the S3 remote in a fresh clone restores the window of dvc.lock
    #    (of the manual retrain, or of one a drift breach started meanwhile)
    p.settle()
    ws = p.workspace
    trained_window = sorted(f.name for f in (ws / "data/window").iterdir())
    assert len(trained_window) >= 28, trained_window
    git(ws, "add", "dvc.lock", "data/validated.dvc")
    git(ws, "commit", "-qm", "retrain + two nightly days")
    fresh = p.state / "fresh"
    git(ws.parent, "clone", "-q", str(ws), str(fresh))
    dvc = str(VENV_BIN / "dvc")
    env = {**p.env, "AWS_ENDPOINT_URL": p.s3_direct}
    subprocess.run([dvc, "remote", "add", "--local", "-d", "mlops", f"s3://{p.bucket}/dvc"], cwd=fresh,
                   check=True, env=env, capture_output=True)  # fmt: skip
    pulled = subprocess.run([dvc, "pull"], cwd=fresh, env=env, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    lock = (fresh / "dvc.lock").read_text()
    window = sorted(f.name for f in (fresh / "data/window").iterdir())
    assert window == trained_window
    from pipelines.versioning import dvc_hash

    assert f"md5: {dvc_hash(fresh / 'data/window')}" in lock
    assert f"md5: {dvc_hash(fresh / 'models/model.joblib')}" in lock
    status = subprocess.run([dvc, "status", "featurize", "train", "--json"], cwd=fresh, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert status.returncode == 0, status.stderr

    lap("4. the S3 endpoint stops in the middle")
    # 4. the S3 endpoint stops in the middle of a nightly run: ingest (local) succeeds, validate
    #    fails after its retries with one clear line; nothing of the day is published or
    #    versioned; the endpoint comes back and Airflow's retry completes the run
    tracked = (ws / "data/validated.dvc").read_text()
    remote_before = p.keys("dvc/")
    p.s3.down()
    run = p.trigger("nightly", {"date": "2013-01-31"})
    deadline = time.monotonic() + 600
    while True:
        tis = {
            ti["task_id"]: ti
            for ti in p.api.get(f"/api/v2/dags/nightly/dagRuns/{run}/taskInstances")["task_instances"]
        }
        if tis.get("validate", {}).get("state") in ("up_for_retry", "failed"):
            break
        assert time.monotonic() < deadline, tis
        time.sleep(1)
    assert tis["ingest"]["state"] == "success"
    log = p.task_log("nightly", run, "validate")
    assert "mlops validate: failed: pushing data versions to DVC remote 'mlops' failed" in log, log[-3000:]
    assert p.s3.dropped >= 2, "the endpoint was retried"
    p.s3.up()
    assert "store/validated/2013-01-31.parquet" not in p.keys("store/validated/"), "no partial batch"
    assert p.keys("dvc/") == remote_before
    assert (ws / "data/validated.dvc").read_text() == tracked
    assert not (ws / "data/validated/2013-01-31.parquet").exists()
    state, tis = p.finished("nightly", run)
    assert state == "success" and tis["validate"]["try_number"] == 2, {
        t: ti["state"] for t, ti in tis.items()
    }
    assert "store/validated/2013-01-31.parquet" in p.keys("store/validated/")
    assert (ws / "data/validated.dvc").read_text() != tracked

    lap("5. the MLflow server is down at promot")
    # 5. the MLflow server is down at promotion time (the step the `promote` task runs):
    #    one clear line, no alias moved; the server is back and the retried promotion completes
    #    (a drift breach on a February day may have started `retrain` by its Asset event:
    #    let it finish first, so that nothing else moves the alias during the fault)
    p.settle()
    champion_before = client.get_model_version_by_alias(MODEL, "champion").version
    trained = p.mlops("retrain", "--set", "data.window_days=31")
    assert trained.returncode == 0, trained.stderr[-3000:]
    retrained = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    p.mlflow.down()
    refused = p.mlops("promote", "--run", retrained)
    p.mlflow.up()
    assert refused.returncode == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mlops promote: failed: MLflow tracking server {p.mlflow.url} unreachable"), line
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion_before
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
    retried = p.mlops("promote", "--run", retrained)
    assert retried.returncode in (0, 99), retried.stderr[-2000:]
    newest = str(versions_before + 1)
    alias = "champion" if retried.returncode == 0 else "challenger"
    assert client.get_model_version_by_alias(MODEL, alias).version == newest

    lap("6. two hosts, one registry: two promot")
    # 6. two hosts, one registry: two promotions at once from two project folders (this
    #    workspace, and the fresh clone of step 3, whose data came from the DVC remote),
    #    TRIALS times; then a rollback racing a promotion. The lock is a Postgres advisory
    #    lock (MLOPS_LOCK_URI), the audit log is in the bucket. Each host has two models of
    #    its own (this workspace: v1 and the retrain of step 5; the clone trains two) and
    #    forces the one that is not the champion, naming the champion it replaces, so every
    #    trial starts from the previous trial's winner.
    p.settle()
    host_b = {"MLOPS_PROJECT_DIR": str(fresh)}
    models: dict[Path, list[str]] = {ws: [client.get_model_version(MODEL, "1").run_id, retrained], fresh: []}
    for seed in (22, 24):
        trained = p.mlops("retrain", "--set", f"train.random_state={seed}", "--set", "train.max_iter=40",
                          env=host_b, cwd=fresh)  # fmt: skip
        assert trained.returncode == 0, trained.stderr[-3000:]
        models[fresh].append(json.loads(trained.stdout.splitlines()[-1])["run_id"])

    def version_of(run: str) -> str | None:
        found = client.search_model_versions(f"name='{MODEL}' and run_id='{run}'")
        return str(found[0].version) if found else None

    def promotion(folder: Path, champion: str, why: str) -> tuple[Path, list[str], str]:
        run = next(r for r in models[folder] if version_of(r) != champion)
        return (
            folder,
            ["promote", "--run", run, "--force", "--reason", why, "--expect", champion],
            "promote.infra-checked",
        )

    lap("6. the clone's two models trained; the race trials")
    winners = []
    for trial in range(TRIALS):
        champion_before = client.get_model_version_by_alias(MODEL, "champion").version
        results = p.race(promotion(ws, champion_before, f"race trial {trial}"),
                         promotion(fresh, champion_before, f"race trial {trial}"), p.state / f"race-{trial}")  # fmt: skip
        codes = [r.returncode for r in results]
        assert sorted(codes) == [0, 3], [(r.returncode, r.stderr[-1500:]) for r in results]
        loser = results[codes.index(3)].stderr.strip().splitlines()[-1]
        assert loser.startswith("mlops promote: failed: promote refused: the champion is v"), loser
        assert f"not v{champion_before} as expected" in loser, loser
        won = json.loads(results[codes.index(0)].stdout.splitlines()[-1])["champion"]
        assert client.get_model_version_by_alias(MODEL, "champion").version == won
        winners.append("a" if codes[0] == 0 else "b")
    print(f"\ncross-host promotion race: {TRIALS} trials, exactly one winner each (host a won {winners.count('a')}, "
          f"host b {winners.count('b')})")  # fmt: skip
    verified = p.mlops("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = json.loads(p.mlops("audit", "log", "--json").stdout)
    trials = [r for r in records if str(r.get("reason", "")).startswith("race trial")]
    assert sorted(r["reason"] for r in trials if r["action"] == "promote") == sorted(
        f"race trial {i}" for i in range(TRIALS)
    )
    assert len([r for r in trials if r["action"] == "conflict"]) == TRIALS, "each loser's refusal is recorded"
    # a rollback racing a promotion: the rollback applies to the champion it expected, or exits 3
    outcomes = []
    for trial in range(3):
        champion_before = client.get_model_version_by_alias(MODEL, "champion").version
        forced = promotion(fresh, champion_before, f"promotion race {trial}")
        target_of_promotion = version_of(forced[1][2])
        back_to = next(
            v for r in models[ws] if (v := version_of(r)) not in (champion_before, target_of_promotion, None)
        )
        rollback = (ws, ["rollback", "--expect", champion_before, "--to", back_to, "--reason", f"rollback race {trial}"],
                    "rollback.infra-checked")  # fmt: skip
        # the third trial gives the rollback a head start of 2 s (ample on a busy machine): both
        # outcomes of the race are exercised (the promotion then finds another champion)
        results = p.race(
            rollback, forced, p.state / f"rollback-race-{trial}", head_start=2.0 if trial == 2 else 0.0
        )
        codes = [r.returncode for r in results]
        assert sorted(codes) == [0, 3], [(r.returncode, r.stderr[-1500:]) for r in results]
        champion_now = client.get_model_version_by_alias(MODEL, "champion").version
        if codes[0] == 0:  # the rollback won: it replaced the champion it expected
            assert champion_now == back_to
            assert f"promote refused: the champion is v{back_to}, not v{champion_before}" in results[1].stderr
            outcomes.append("rollback")
        else:  # the promotion won: the rollback saw another champion and refused
            assert (
                f"rollback refused: the champion is v{champion_now}, not v{champion_before}"
                in results[0].stderr
            )
            outcomes.append("promotion")
    print(f"rollback vs promotion race: 3 trials, winners {outcomes}")
    assert outcomes[2] == "rollback", "released first, the rollback replaced the champion it expected"
    assert p.mlops("audit", "verify").returncode == 0
    lap("done")


@pytest.mark.timeout(2700)  # 13 step containers (six per retrain, each a fresh process), on 2 cores
def test_docker_mode_through_podman(profile_factory: Any) -> None:
    """Every step a container: DockerOperator -> Podman's Docker API -> the step image, on
    the host network, talking to the profile's MLflow server and S3 endpoint."""
    podman = subprocess.run(["bash", str(REPO / "scripts/podman.sh"), "all"], capture_output=True, text=True,
                            timeout=1800)  # fmt: skip
    assert podman.returncode == 0, f"{podman.stdout}\n{podman.stderr}"
    lap("podman ready, step image built")
    print(podman.stdout)
    podman_env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in subprocess.run(
            ["bash", str(REPO / "scripts/podman.sh"), "env"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    assert podman_env["MLOPS_EXECUTION_MODE"] == "docker"
    # the containers write the bind-mounted workspace as its owner
    p = profile_factory("docker", MLOPS_TASK_RETRIES="0", MLOPS_DOCKER_USER=str(os.getuid()), **podman_env)
    lap("seeding")
    p.seed()

    def check(dag_id: str, run: str, expected: dict[str, str]) -> dict[str, dict[str, Any]]:
        state, tis = p.finished(dag_id, run)
        states = {t: ti["state"] for t, ti in tis.items()}
        failed = [t for t, s in states.items() if s == "failed"]
        assert states == expected, (states, [p.task_log(dag_id, run, t)[-3000:] for t in failed])
        assert state == "success"
        for task_id in expected:
            if task_id not in ("announce", "signal_retraining"):
                assert tis[task_id]["operator"] == "DockerOperator", tis[task_id]
        return tis

    lap("retrain in containers: the first champ")
    # retrain in containers: the first champion, on the MLflow server
    run = p.trigger("retrain", {})
    check("retrain", run, dict.fromkeys(RETRAIN_TASKS, "success"))
    assert "promote: v1 is champion" in p.task_log("retrain", run, "promote")  # the container's output
    client = p.registry()
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"

    lap("nightly in containers")
    # nightly in containers
    run = p.trigger("nightly", {"date": "2013-01-29"})
    check("nightly", run, {"ingest": "success", "validate": "success", "score": "success",
                                 "monitor": "success", "signal_retraining": "skipped", "decide": "skipped"})  # fmt: skip
    assert "store/predictions/2013-01-29.parquet" in p.keys("store/predictions/")
    assert "store/validated/2013-01-29.parquet" in p.keys("store/validated/")

    lap("a challenger the gate refuses: the eva")
    # a challenger the gate refuses: the evaluate container exits 99 -> evaluate is skipped with
    # the refusal in its log, register still records v2 as the challenger, promote is skipped
    run = p.trigger("retrain", {"window_days": 29, "min_roc_auc": 0.99})
    check("retrain", run, {"featurize": "success", "train": "success", "evaluate": "skipped",
                           "register": "success", "promote": "skipped", "announce": "skipped"})  # fmt: skip
    assert "gate refused run" in p.task_log("retrain", run, "evaluate")
    assert "against v1: roc_auc floor" in p.task_log("retrain", run, "evaluate")
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
