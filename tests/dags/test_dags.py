"""DAG tests: the real DagBag, the step-operator factory in every mode, and `dag.test()` runs
of `nightly` and `retrain` on the embedded default (real steps, real data)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN
from tests.dags.conftest import DAGS


def test_dagbag_loads_every_dag_without_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"nightly", "retrain", "rollback"}
    for dag in dagbag.dags.values():
        assert dag.owner == "mlops" and "mlops" in dag.tags and dag.doc_md
        assert dag.max_active_runs == 1
        for task in dag.tasks:
            assert task.retries >= (0 if dag.dag_id == "rollback" else 2)
            assert task.on_failure_callback, f"{dag.dag_id}.{task.task_id} has no failure alert"
    nightly = dagbag.dags["nightly"]
    assert [t.task_id for t in nightly.topological_sort()][:4] == ["ingest", "validate", "score", "monitor"]
    assert nightly.get_task("monitor").downstream_task_ids == {"signal_retraining", "decide"}
    assert "canary decide --date" in nightly.get_task("decide").bash_command
    assert [o.name for o in nightly.get_task("signal_retraining").outlets] == ["flight_delay_drift"]
    retrain = dagbag.dags["retrain"]
    assert "flight_delay_drift" in str(retrain.timetable.asset_condition)
    # the lifecycle, one task per stage; a refusal at the gate skips promote, not register
    assert [t.task_id for t in retrain.topological_sort()] == [
        "featurize", "train", "evaluate", "register", "promote", "announce",
    ]  # fmt: skip
    assert retrain.get_task("promote").upstream_task_ids == {"evaluate", "register"}
    assert retrain.get_task("register").trigger_rule == "none_failed"
    assert retrain.get_task("evaluate").bash_command.endswith("retrain --stage evaluate")
    # a form whose every field is optional (submitting the defaults works)
    for name in retrain.params:
        schema = retrain.params.get_param(name).schema
        assert "null" in schema["type"], (name, schema)
    assert retrain.params.get_param("max_iter").schema["type"] == ["null", "integer"]
    assert retrain.params.get_param("promote_to").schema["enum"] == [None, "champion", "canary"]
    assert nightly.params.get_param("date").schema["type"] == ["null", "string"]


def test_retries_back_off_exponentially(dagbag) -> None:  # type: ignore[no-untyped-def]
    """Airflow's own retry clock (the scheduler's TaskInstance.next_retry_datetime) on a step
    task: each retry waits about twice as long as the one before (Airflow 3 reads
    ``retry_exponential_backoff`` as a multiplier: ``True`` would be 1.0, a constant delay)."""
    import datetime as dt
    import uuid

    from airflow.models.taskinstance import TaskInstance

    task = dagbag.dags["nightly"].get_task("validate")
    delay = task.retry_delay.total_seconds()
    ti = TaskInstance(task, run_id="retry-clock", dag_version_id=uuid.uuid4())
    ended = dt.datetime(2013, 1, 2, 3, 0, tzinfo=dt.UTC)
    waits = []
    for try_number in (1, 2, 3):
        ti.try_number, ti.end_date, ti.logical_date = try_number, ended, ended
        waits.append((ti.next_retry_datetime() - ended).total_seconds())
    for n, wait in enumerate(waits):  # [d, 2d), [2d, 4d), [4d, 8d): the deterministic jitter
        assert delay * 2**n <= wait < delay * 2 ** (n + 1), (n, wait, waits)


def test_airflow_dags_show_draws_the_lifecycle(airflow_db) -> None:  # type: ignore[no-untyped-def]
    """Airflow's own command: `airflow dags show` prints the DOT graph of a processed DAG."""
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(REPO)}
    airflow = str(VENV_BIN / "airflow")
    proc = subprocess.run([airflow, "dags", "reserialize"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([airflow, "dags", "show", "retrain"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    edges = set(re.findall(r"(\w+) -> (\w+)", proc.stdout))
    assert {("featurize", "train"), ("train", "evaluate"), ("evaluate", "register"), ("register", "promote"),
            ("evaluate", "promote"), ("promote", "announce")} == edges, proc.stdout  # fmt: skip


def test_trigger_forms_are_the_settings_schema(dagbag) -> None:  # type: ignore[no-untyped-def]
    """Each form field carries the schema's type, range, choices and description for its
    params.yaml key, so the form and `--set` accept and refuse the same values."""
    from step_operator import PARAM_KEYS

    from pipelines import params_schema

    for dag_id in ("retrain", "rollback"):
        for name in dagbag.dags[dag_id].params:
            if name not in PARAM_KEYS:
                continue
            expected = params_schema.form_param(PARAM_KEYS[name])
            param = dagbag.dags[dag_id].params.get_param(name)
            schema = param.schema
            for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "pattern"):
                assert schema.get(keyword) == expected.get(keyword), (dag_id, name, keyword, schema, expected)
            assert param.description, (dag_id, name, "every field says what it is")
            kind = expected["type"] if isinstance(expected["type"], str) else expected["type"][-1]
            assert kind in (schema["type"] if isinstance(schema["type"], list) else [schema["type"]]), (
                name,
                schema,
            )
    retrain = dagbag.dags["retrain"].params
    assert retrain.get_param("learning_rate").schema["exclusiveMinimum"] == 0
    assert retrain.get_param("min_roc_auc").schema["maximum"] == 1, (
        "the form refuses the floor 2, as --set does"
    )


def test_dag_files_import_nothing_heavy() -> None:
    """Parsing a DAG file must not import the ML stack (seconds each)."""
    import subprocess
    import sys

    code = (
        f"import sys, runpy; sys.path.insert(0, {str(DAGS)!r})\n"
        f"for f in ('nightly', 'retrain', 'rollback'): runpy.run_path({str(DAGS)!r} + '/' + f + '.py')\n"
        "heavy = [m for m in ('sklearn', 'mlflow', 'great_expectations', 'evidently', 'pandas', 'dvc') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_batch_date_is_a_2013_date_or_the_replay_clock() -> None:
    import datetime as dt
    from types import SimpleNamespace

    from step_operator import batch_date  # type: ignore[import-not-found]

    def run(when):  # type: ignore[no-untyped-def]
        return SimpleNamespace(logical_date=when, run_after=when)

    assert batch_date(run(dt.datetime(2013, 7, 15, 3, tzinfo=dt.UTC))) == "2013-07-15", "a backfill over 2013"
    # today's scheduled run (or an unpause, or a catch-up) never maps today onto 2013
    assert batch_date(run(dt.datetime(2026, 11, 24, 3, tzinfo=dt.UTC))) == "next"
    assert batch_date(run(dt.datetime(2028, 2, 29, 3, tzinfo=dt.UTC))) == "next"
    assert batch_date(SimpleNamespace(logical_date=None, run_after=dt.datetime(2026, 3, 1)), {}) == "next"
    assert batch_date(run(dt.datetime(2026, 1, 1)), {"date": "2013-05-05"}) == "2013-05-05"
    # a range run: every task takes FIRST:LAST (one process for the range)
    range_params = {"date": "2013-02-01", "through": "2013-02-28"}
    assert batch_date(run(dt.datetime(2026, 1, 1)), range_params) == "2013-02-01:2013-02-28"
    assert batch_date(run(None), {"date": "2013-02-01", "through": "2013-02-01"}) == "2013-02-01"
    with pytest.raises(ValueError, match="needs a `date`"):
        batch_date(run(None), {"date": None, "through": "2013-02-28"})


def test_params_become_json_overrides_never_shell_words() -> None:
    from step_operator import overrides_json  # type: ignore[import-not-found]

    chosen = json.loads(overrides_json({"max_iter": 50, "learning_rate": None, "window_end": "",
                                        "force_reason": "it's `rm -rf` \"safe\""}))  # fmt: skip
    assert chosen == {"train.max_iter": 50, "promote.force": True, "promote.reason": 'it\'s `rm -rf` "safe"'}
    assert json.loads(overrides_json({"force_reason": ""})) == {}
    assert json.loads(overrides_json({"promote_to": "canary", "canary_share": 0.3})) == {
        "promote.to": "canary", "canary.share": 0.3}  # fmt: skip
    assert json.loads(overrides_json({"force_reason": None})) == {}


@pytest.mark.parametrize("mode", ["local", "docker", "kubernetes"])
def test_every_mode_maps_exit_99_to_skipped(
    mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from step_operator import BATCH_DATE, step_task  # type: ignore[import-not-found]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    monkeypatch.setenv("MLOPS_K8S_CONFIG_FILE", str(kubeconfig))
    monkeypatch.setenv("MLOPS_IMAGE", "registry.example/mlops-flights:1.2")
    from airflow.sdk import DAG

    with DAG("t", schedule=None):
        op = step_task("score", "--date", BATCH_DATE, mode=mode)
    assert op.skip_on_exit_code == 99 or op.skip_on_exit_code == {99} or 99 in op.skip_on_exit_code


def test_docker_mode_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from step_operator import BATCH_DATE, step_task  # type: ignore[import-not-found]

    monkeypatch.setenv("MLOPS_IMAGE", "localhost/mlops-flights:dev")
    monkeypatch.setenv("MLOPS_DOCKER_URL", "unix:///run/podman/podman.sock")
    monkeypatch.setenv("MLOPS_DOCKER_NETWORK", "host")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.sdk import DAG

    with DAG("t", schedule=None):
        op = step_task("monitor", "--date", BATCH_DATE, mode="docker")
    assert isinstance(op, DockerOperator)
    assert op.image == "localhost/mlops-flights:dev" and op.command == ["monitor", "--date", BATCH_DATE]
    assert op.docker_url == "unix:///run/podman/podman.sock" and op.network_mode == "host"
    assert op.environment["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert op.environment["AWS_ACCESS_KEY_ID"] == "test-key"
    assert "MLOPS_SET" in op.environment and op.do_xcom_push
    # the result is the JSON file the step writes, read back from the stopped container
    # (the log's last line is unreliable: stdout and stderr interleave); run for real in
    # tests/profile/test_scaled_out.py::test_docker_mode_through_podman
    assert op.retrieve_output and op.retrieve_output_path == op.environment["MLOPS_XCOM_FILE"]
    assert op.pickling_library.loads('{"a": 1}') == {"a": 1}


def test_kubernetes_mode_renders_the_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No cluster here: the pod is built, not run (a loopback kubeconfig is never contacted)."""
    from step_operator import step_task  # type: ignore[import-not-found]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    for key, value in {"MLOPS_K8S_CONFIG_FILE": str(kubeconfig), "MLOPS_IMAGE": "ghcr.io/acme/mlops-flights:3",
                       "MLOPS_K8S_NAMESPACE": "ml-prod", "MLOPS_K8S_CPU": "1", "MLOPS_K8S_MEMORY": "2Gi",
                       "MLOPS_K8S_SECRETS": "mlflow-creds, s3-creds",
                       "MLFLOW_TRACKING_URI": "http://mlflow.ml-prod:5000"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    from airflow.sdk import DAG

    with DAG("t", schedule=None):
        op = step_task("ingest", "--date", "2013-07-15", mode="kubernetes")
    pod = op.build_pod_request_obj()
    container = pod.spec.containers[0]
    assert container.image == "ghcr.io/acme/mlops-flights:3"
    assert container.command == ["mlops"] and container.args == ["ingest", "--date", "2013-07-15"]
    assert pod.metadata.namespace == "ml-prod"
    assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
    env = {e.name: e.value for e in container.env}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml-prod:5000"
    assert env["MLOPS_XCOM_FILE"] == "/airflow/xcom/return.json"
    assert [s.secret_ref.name for s in container.env_from] == ["mlflow-creds", "s3-creds"]
    assert op.skip_on_exit_code == 99 or 99 in op.skip_on_exit_code


def test_failure_alert_posts_to_the_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("MLOPS_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    from types import SimpleNamespace

    from step_operator import alert_on_failure  # type: ignore[import-not-found]

    ti = SimpleNamespace(dag_id="nightly", task_id="validate", run_id="r1", try_number=3)
    alert_on_failure({"task_instance": ti, "exception": RuntimeError("batch 2013-02-05 failed validation")})
    server.server_close()
    assert received and received[0]["text"] == "mlops task failed: nightly.validate"
    assert received[0]["error"] == "batch 2013-02-05 failed validation" and received[0]["try_number"] == 3


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: "x"}}]
contexts: [{name: c, context: {cluster: local, user: u}}]
current-context: c
"""


@pytest.mark.e2e
def test_dag_test_retrain_then_nightly(january: Path, airflow_db, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`dag.test()`: retrain end to end (first model promoted), then nightly for a real day."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.syspath_prepend(str(DAGS))
    bag = DagBag(dag_folder=str(DAGS))
    params_before = (january / "params.yaml").read_bytes()
    run = bag.dags["retrain"].test(run_conf={"max_iter": 200, "reason": "first model"})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states == dict.fromkeys(
        ("featurize", "train", "evaluate", "register", "promote", "announce"), "success"
    )
    assert (january / "params.yaml").read_bytes() == params_before, "the shared params.yaml is never edited"
    (copy,) = (january / ".mlops/runs").iterdir()  # the run's private copy, named after the DAG run
    assert copy.name.startswith("retrain_manual__")
    assert "max_iter: 200" in (copy / "dvc.lock").read_text(), "the run's Params reached its dvc.lock"
    assert not (january / "dvc.lock").exists(), "the project's own pipeline state is untouched"

    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry

    registry = Registry(Settings(project_dir=january), "flight-delay")
    champion = registry.alias(CHAMPION)
    assert champion is not None and champion.version == "1"
    run_tags = registry.client.get_run(champion.run_id).data.tags
    assert json.loads(run_tags["mlops.overrides"])["train.max_iter"] == 200
    assert run_tags["mlops.orchestrator_run"].startswith("retrain/")
    promoted = registry.audit_records()[-1]
    assert promoted["gate"]["run_id"] == champion.run_id, "promote consumed the gate of this run"
    assert promoted["actor"]["source"] == "airflow" and promoted["actor"]["run"].startswith("retrain/")

    # yesterday's predictions (made by the previous night's run) so today's labels can meet them
    import datetime as dt

    from pipelines.config import load_params
    from pipelines.steps.score import score

    score(Settings(project_dir=january), load_params(Settings(project_dir=january)), dt.date(2013, 1, 31))
    run = bag.dags["nightly"].test(run_conf={"date": "2013-02-01"})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert {k: v for k, v in states.items() if k != "signal_retraining"} == {
        "ingest": "success", "validate": "success", "score": "success", "monitor": "success",
        "decide": "skipped",  # no canary: the deploy loop has nothing to decide
    }  # fmt: skip
    summary = json.loads((january / "reports/monitor/2013-02-01/summary.json").read_text())
    assert states["signal_retraining"] == ("success" if summary["breach"] else "skipped")
    assert (january / "data/predictions/2013-02-01.parquet").exists()
    assert (january / "reports/monitor/2013-02-01/drift.html").stat().st_size > 100_000
    assert summary["live"]["date"] == "2013-01-31", "yesterday's predictions met their labels"


def test_kubernetes_manifest_example_and_pod_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """docker/kubernetes/: the example manifest is coherent, and the pod template merges with
    what the factory sets (volumes and security context from the template; image, command,
    resources and secrets from the configuration)."""
    import yaml
    from step_operator import step_task  # type: ignore[import-not-found]

    folder = Path(__file__).resolve().parents[2] / "docker" / "kubernetes"
    docs = [d for d in yaml.safe_load_all((folder / "mlops.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
    }
    namespace = kinds["Namespace"]["metadata"]["name"]
    assert all(d["metadata"].get("namespace", namespace) == namespace for d in docs)
    assert "Secret" not in kinds, "secrets are created with kubectl, never kept in the repository"
    assert {"create", "delete", "watch"} <= set(kinds["Role"]["rules"][0]["verbs"])

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    for key, value in {"MLOPS_K8S_CONFIG_FILE": str(kubeconfig), "MLOPS_IMAGE": "registry.example.com/mlops:1",
                       "MLOPS_K8S_NAMESPACE": namespace, "MLOPS_K8S_SECRETS": "mlops-s3",
                       "MLOPS_K8S_POD_TEMPLATE": str(folder / "pod-template.yaml")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    from airflow.sdk import DAG

    with DAG("t", schedule=None):
        op = step_task("validate", "--date", "2013-07-15", mode="kubernetes")
    pod = op.build_pod_request_obj()
    container = pod.spec.containers[0]
    assert container.image == "registry.example.com/mlops:1" and container.args == [
        "validate",
        "--date",
        "2013-07-15",
    ]
    assert pod.spec.service_account_name == kinds["ServiceAccount"]["metadata"]["name"]
    assert pod.spec.security_context.run_as_non_root and pod.spec.security_context.run_as_user == 10001
    assert [(m.name, m.mount_path) for m in container.volume_mounts if m.name == "workspace"] == [
        ("workspace", "/project")
    ]
    claim = next(v for v in pod.spec.volumes if v.name == "workspace").persistent_volume_claim.claim_name
    assert claim == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    sources = {(s.config_map_ref.name if s.config_map_ref else None, s.secret_ref.name if s.secret_ref else None)
               for s in container.env_from}  # fmt: skip
    assert (kinds["ConfigMap"]["metadata"]["name"], None) in sources and (None, "mlops-s3") in sources
    assert container.resources.requests == {"cpu": "500m", "memory": "1Gi"}
