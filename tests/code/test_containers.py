"""The container artefacts: docker/compose.yaml against the Compose Specification's JSON
schema (the copy check-jsonschema ships, so no network is needed), plus what the schema
cannot say; docker/Dockerfile's layer order and runtime contract."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN

COMPOSE = REPO / "docker" / "compose.yaml"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    proc = validate(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_a_broken_compose_file(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["redis"]["healthcheck"] = ["redis-cli", "ping"]  # must be a mapping
    broken["services"]["mlflow"]["restart_policy"] = "always"  # not a service key
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = validate(path)
    assert proc.returncode == 1
    assert "$.services.redis.healthcheck" in proc.stdout, proc.stdout
    assert "restart_policy" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_the_mlflow_server_requires_a_login_and_keeps_passwords_off_command_lines(compose: dict) -> None:  # type: ignore[type-arg]
    mlflow = compose["services"]["mlflow"]
    script = " ".join(mlflow["command"])
    assert "--app-name=basic-auth" in script and "MLFLOW_AUTH_CONFIG_PATH=" in script
    assert "POSTGRES_PASSWORD}" not in script, "no password expanded into the command line"
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    example = (REPO / "docker/env.example").read_text()
    assert "MLFLOW_ADMIN_PASSWORD=" in example and "MLFLOW_SECRET_KEY=" in example
    assert "mlflow_auth" in (REPO / "docker/postgres-init.sql").read_text()


def test_compose_topology(compose: dict) -> None:  # type: ignore[type-arg]
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "mlflow", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "step-image"):  # fmt: skip
        assert name in services, name
    worker = services["airflow-worker"]
    assert worker["command"] == ["celery", "worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    env = worker["environment"]
    assert env["MLOPS_LOCK_URI"].startswith("postgresql://"), "moves are serialised across hosts"
    assert env["MLFLOW_TRACKING_USERNAME"] and env["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["MLOPS_EXECUTION_MODE"] == "docker" and env["MLOPS_IMAGE"] == services["step-image"]["image"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    # the MLflow server: Postgres backend, S3 artifacts
    command = " ".join(services["mlflow"]["command"])
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "--artifacts-destination=s3://" in command and "--serve-artifacts" in command
    # the serving API: the step image, `mlops serve`, the MLflow server's registry
    serve = services["serve"]
    assert serve["image"] == services["step-image"]["image"] and serve["command"][0] == "serve"
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "8000/health" in " ".join(serve["healthcheck"]["test"])


def test_compose_services_are_supervised_like_the_official_airflow_compose(compose: dict) -> None:  # type: ignore[type-arg]
    """Every long-running service has a health check and a restart policy; the one-shots do
    not restart; third-party images are pinned; start order follows health."""
    services = compose["services"]
    one_shots = {"airflow-init", "minio-setup", "step-image"}
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart", "no") == "no", name
            continue
        assert service.get("restart") == "always", f"{name}: no restart policy"
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
    checks = {
        name: " ".join(services[name]["healthcheck"]["test"]) for name in services if name not in one_shots
    }
    assert "8974/health" in checks["airflow-scheduler"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert (
        "DagProcessorJob" in checks["airflow-dag-processor"] and "TriggererJob" in checks["airflow-triggerer"]
    )
    assert "inspect ping" in checks["airflow-worker"]
    for name in ("airflow-worker", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert services[name]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}, name
    built = {s["image"] for s in services.values() if "build" in s}  # our own images, built here
    for name, service in services.items():
        image = service["image"]
        if image in built or image.startswith("${AIRFLOW_IMAGE"):
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image else "latest"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"
    assert compose["x-airflow"]["image"].endswith(":3.3.2-python3.11}")


def test_compose_publishes_on_loopback_only_and_holds_no_secret(compose: dict) -> None:  # type: ignore[type-arg]
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    text = COMPOSE.read_text()
    for key in (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
    ):
        for value in re.findall(rf"{key}: (\S+)", text):
            assert value.startswith("${"), f"{key} must come from the environment, not the file: {value}"
    assert ":${POSTGRES_PASSWORD" in text  # connection strings interpolate the password too


def test_every_variable_the_steps_need_is_passed_through_to_the_containers(compose: dict) -> None:  # type: ignore[type-arg]
    import sys

    sys.path.insert(0, str(REPO / "dags"))
    from step_operator import PASSTHROUGH

    env = compose["services"]["airflow-worker"]["environment"]
    needed = {k for k in env if k.startswith(("AWS_", "MLFLOW_", "MLOPS_STORE", "MLOPS_DVC", "MLOPS_ALERT"))}
    assert needed, env
    assert needed <= set(PASSTHROUGH), needed - set(PASSTHROUGH)


def test_dockerfile_layers_deps_before_code_and_runs_unprivileged() -> None:
    lines = [
        line.strip()
        for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines)

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    assert lines[0].startswith("ARG BASE_IMAGE=") and lines[1] == "FROM ${BASE_IMAGE}"
    assert first(r"^COPY pyproject.toml uv.lock") < first(r"--no-install-project") < first(r"^COPY pipelines")
    assert first(r"^COPY pipelines") > first(r"--no-install-project")
    assert "USER mlops" in lines and "useradd" in text and "--uid 10001" in text
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert 'ENTRYPOINT ["mlops"]' in lines
    ignored = [x for x in (REPO / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert ignored[0] == "*" and "!pipelines/" in ignored  # the build context is the package only


def test_grafana_dashboard_is_generated_provisioned_and_reads_real_series(compose: dict) -> None:  # type: ignore[type-arg]
    """The dashboard JSON is what scripts/grafana_dashboard.py (Grafana's Foundation SDK)
    writes; the compose stack provisions it with the datasource it names; every series its
    queries read is one `mlops serve` exports (the queries themselves run on a real
    Prometheus in tests/profile/test_scaled_out.py)."""
    from pipelines.serving.metrics import Metrics
    from scripts.grafana_dashboard import DATASOURCE_UID, OUT, queries

    check = subprocess.run([str(VENV_BIN / "python"), str(REPO / "scripts/grafana_dashboard.py"), "--check"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert check.returncode == 0, check.stderr
    dashboard = json.loads(OUT.read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} == {DATASOURCE_UID}
    provisioned = yaml.safe_load(
        (REPO / "docker/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert [d["uid"] for d in provisioned["datasources"]] == [DATASOURCE_UID]
    grafana, prometheus = compose["services"]["grafana"], compose["services"]["prometheus"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "serve:8000" in (REPO / "docker/prometheus/prometheus.yml").read_text()
    assert prometheus["depends_on"] == {"serve": {"condition": "service_started"}}

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    exported = {family.name + suffix for family in Metrics("m").registry.collect()
                for suffix in suffixes[family.type]}  # fmt: skip
    read = {name for expr in queries(dashboard) for name in re.findall(r"\bmlops_[a-z_]+", expr)}
    assert read and read <= exported, f"the dashboard reads series nobody exports: {sorted(read - exported)}"
    assert {"mlops_serve_shadow_gap_bucket", "mlops_monitor_live", "mlops_monitor_drift_share"} <= read
