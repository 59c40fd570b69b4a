"""The one step-operator factory, and what every DAG shares (defaults, alerts, dates).

``step_task("score", "--date", DATE)`` returns an Airflow task running ``mlops score
--date ...`` in the execution mode chosen by configuration (environment of the Airflow
scheduler/worker, never by editing DAG files):

- ``MLOPS_EXECUTION_MODE=local`` (default): a BashOperator running the command in this
  project's environment (a subprocess; the embedded default).
- ``docker``: a DockerOperator on the step image (``MLOPS_IMAGE``), via ``MLOPS_DOCKER_URL``
  (``MLOPS_DOCKER_NETWORK``, ``MLOPS_DOCKER_USER``, ``MLOPS_DOCKER_PROJECT_MOUNT``: a host
  folder mounted as the step's workspace).
- ``kubernetes``: a KubernetesPodOperator with the same image, namespace, resources and
  secrets from ``MLOPS_K8S_*`` (``MLOPS_K8S_POD_TEMPLATE``: a pod template, e.g.
  ``docker/kubernetes/pod-template.yaml``, for volumes and security context).

In every mode exit code 99 ("done, skip downstream") maps to *skipped*, and the step's
JSON result becomes the task's XCom (local: its last stdout line; docker and kubernetes:
a file the step writes, ``MLOPS_XCOM_FILE``, read back from the container). Manual-trigger Params reach
the step as JSON in ``MLOPS_SET`` (never through a shell), and are recorded by the step.

Kept cheap to import: no heavy imports at module level (DAG parsing imports this).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_SKIPPED = 99
DOCKER_XCOM_FILE = "/tmp/mlops-xcom.json"  # inside the step container
REPLAY_YEAR = 2013
# env passed through to the step in docker/kubernetes mode when set on the Airflow side
PASSTHROUGH = (
    "MLFLOW_TRACKING_URI", "MLOPS_TRACKING_URI", "MLOPS_EXPERIMENT", "MLOPS_ALERT_WEBHOOK",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLOPS_S3_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL", "MLOPS_STORE_URI", "MLOPS_DVC_REMOTE", "MLOPS_S3_MAX_ATTEMPTS",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLOPS_LOCK_URI", "MLOPS_AUDIT_URI", "MLOPS_REGISTRY_TIMEOUT_S", "MLOPS_LOCK_TIMEOUT_S",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLOPS_PROMETHEUS_URL",
    "OMP_NUM_THREADS",  # threads per step where a worker runs several at once (docs/scaled-out.md)
)  # fmt: skip

# The day a nightly run replays: the `date` Param when given (with `through`: the range
# date..through, each task one process for the range), a 2013 logical date (a backfill over
# 2013), else the replay clock's next day (`mlops ingest --date next`). The other tasks of the
# run use the day (or range) ingest landed (its result), never a date of their own.
INGEST_DATE = "{{ batch_date(dag_run, params) }}"
BATCH_DATE = "{{ step_result(ti.xcom_pull(task_ids='ingest')).get('date') or step_result(ti.xcom_pull(task_ids='ingest')).get('dates') }}"
OVERRIDES = "{{ overrides_json(params) }}"
# The MLflow run the train task of the same DAG run produced (register and promote take it)
TRAINED_RUN = "{{ step_result(ti.xcom_pull(task_ids='train')).get('run_id', '') }}"
# Who acts: the user who triggered the run (Airflow authenticated them), or the kind of run
# (scheduled, asset_triggered, backfill) when nobody did. Recorded in the registry's audit log.
ACTOR_ENV = {
    "MLOPS_ACTOR": "{{ dag_run.triggering_user_name or '' }}",
    "MLOPS_ACTOR_SOURCE": "airflow",
    "MLOPS_RUN_TYPE": "{{ dag_run.run_type }}",
}


def batch_date(dag_run: Any, params: dict[str, Any] | None = None) -> str:
    """What ingest lands: the `date` Param, or a 2013 logical date (backfills over 2013 replay
    history), or "next": the replay clock (the day after the newest landed day). A scheduled
    run today never maps today's calendar date onto 2013: unpausing, catching up or a backfill
    over other years cannot insert a far-away day into the history."""
    explicit = (params or {}).get("date")
    through = (params or {}).get("through")
    if through and not explicit:
        raise ValueError("the `through` Param needs a `date` (the first day of the range)")
    if explicit and through and str(through) != str(explicit):
        return f"{explicit}:{through}"  # a range run: each task takes the range in one process
    if explicit:
        return str(explicit)
    when = getattr(dag_run, "logical_date", None)
    if when is not None and when.year == REPLAY_YEAR:
        return when.date().isoformat()
    return "next"


def step_result(raw: Any) -> dict[str, Any]:
    """A step's XCom (JSON text in local/docker mode, already parsed in kubernetes mode)."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, bytes):
        raw = raw.decode()
    if not raw:
        return {}
    return dict(json.loads(str(raw).strip().splitlines()[-1]))


# Manual-trigger Params -> `section.key` of params.yaml. A Param left empty (None / "")
# keeps the params.yaml value.
PARAM_KEYS = {
    "window_days": "data.window_days", "window_end": "data.window_end",
    "learning_rate": "train.learning_rate", "max_iter": "train.max_iter",
    "max_leaf_nodes": "train.max_leaf_nodes", "min_roc_auc": "evaluate.min_roc_auc",
    "max_auc_drop": "evaluate.max_auc_drop", "force_reason": "promote.reason",
    "promote_to": "promote.to", "canary_share": "canary.share",
    "rollback_to": "rollback.to", "rollback_reason": "rollback.reason",
    "expected_champion": "rollback.expect",
}  # fmt: skip


def overrides_json(params: dict[str, Any] | None) -> str:
    """A run's Params as ``section.key`` overrides; empty fields keep params.yaml's values, and
    a forcing reason also sets ``promote.force``."""
    chosen = {PARAM_KEYS[name]: value for name, value in (params or {}).items()
              if name in PARAM_KEYS and value not in (None, "")}  # fmt: skip
    if chosen.get("promote.reason"):
        chosen["promote.force"] = True
    return json.dumps(chosen)


def alert_on_failure(context: dict[str, Any]) -> None:
    """Failure callback: through the pluggable notifier (logs; webhook if configured)."""
    from pipelines.notify import make_notifier

    ti = context.get("task_instance")
    make_notifier().notify(
        f"mlops task failed: {getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}",
        {
            "dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None),
            "run_id": getattr(ti, "run_id", None), "try_number": getattr(ti, "try_number", None),
            "logical_date": str(context.get("logical_date")), "error": str(context.get("exception"))[:500],
        },
    )  # fmt: skip


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "mlops",
    # transient outages (S3, the MLflow server) are retried by Airflow on top of the
    # clients' own retries; both are configuration (MLOPS_TASK_RETRIES, ..._RETRY_DELAY_S)
    "retries": int(os.environ.get("MLOPS_TASK_RETRIES", "2")),
    "retry_delay": dt.timedelta(seconds=float(os.environ.get("MLOPS_TASK_RETRY_DELAY_S", "30"))),
    # a multiplier in Airflow 3 (True is 1.0: a constant delay): each retry waits twice as long
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    "on_failure_callback": alert_on_failure,
}
MACROS = {
    "batch_date": batch_date,
    "overrides_json": overrides_json,
    "step_result": lambda raw: step_result(raw),
}
# what every DAG of the project shares: replayed 2013 calendar, no catch-up storms, one run
# at a time (runs of one DAG touch the same day's files and the same DVC workspace)
DAG_KWARGS: dict[str, Any] = {
    "start_date": dt.datetime(REPLAY_YEAR, 1, 1, tzinfo=dt.UTC),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
    "user_defined_macros": MACROS,
}


def schedule_from_env(name: str, default: str) -> str | None:
    """A cron from the environment (``none`` disables it): schedules are configuration too."""
    value = os.environ.get(name, default).strip()
    return None if value.lower() in ("", "none", "off") else value


def execution_mode() -> str:
    mode = os.environ.get("MLOPS_EXECUTION_MODE", "local")
    if mode not in ("local", "docker", "kubernetes"):
        raise ValueError(f"MLOPS_EXECUTION_MODE={mode!r}: expected local, docker or kubernetes")
    return mode


def step_task(
    step: str, *args: str, task_id: str | None = None, mode: str | None = None, **kwargs: Any
) -> Any:
    """An Airflow task that runs ``mlops <step> <args>``; ``args`` may be Jinja templates."""
    mode = mode or execution_mode()
    env = {"MLOPS_SET": OVERRIDES, "MLOPS_RUN": "{{ dag_run.dag_id }}/{{ dag_run.run_id }}", **ACTOR_ENV}
    task_id = task_id or step
    if mode == "local":
        from airflow.providers.standard.operators.bash import BashOperator

        project_dir = os.environ.get("MLOPS_PROJECT_DIR") or str(Path(__file__).resolve().parents[1])
        mlops = os.environ.get("MLOPS_BIN") or str(Path(sys.executable).with_name("mlops"))
        command = " ".join([mlops, step, *args])
        return BashOperator(
            task_id=task_id, bash_command=command, env={**env, "MLOPS_PROJECT_DIR": project_dir},
            append_env=True, cwd=project_dir, skip_on_exit_code=EXIT_SKIPPED, **kwargs,
        )  # fmt: skip
    image = os.environ.get("MLOPS_IMAGE", "mlops-flights:latest")
    env.update({k: os.environ[k] for k in PASSTHROUGH if k in os.environ})
    if mode == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import Mount

        mounts = []
        if os.environ.get("MLOPS_DOCKER_PROJECT_MOUNT"):  # embedded data on a shared folder
            mounts.append(
                Mount(target="/project", source=os.environ["MLOPS_DOCKER_PROJECT_MOUNT"], type="bind")
            )
            env["MLOPS_PROJECT_DIR"] = "/project"
        # the step's result comes back as a file read from the stopped container, not as
        # the last log line: the Docker API interleaves stdout and stderr in no fixed order
        env["MLOPS_XCOM_FILE"] = DOCKER_XCOM_FILE
        operator = DockerOperator(
            task_id=task_id, image=image, command=[step, *args], environment=env,
            docker_url=os.environ.get("MLOPS_DOCKER_URL", "unix://var/run/docker.sock"),
            network_mode=os.environ.get("MLOPS_DOCKER_NETWORK", "bridge"), mounts=mounts,
            user=os.environ.get("MLOPS_DOCKER_USER") or None,  # e.g. the owner of a bind-mounted workspace
            mount_tmp_dir=False, auto_remove="success", skip_on_exit_code=EXIT_SKIPPED,
            do_xcom_push=True, retrieve_output=True, retrieve_output_path=DOCKER_XCOM_FILE, **kwargs,
        )  # fmt: skip
        operator.pickling_library = json  # the file is JSON (the provider would unpickle it)
        return operator
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    resources = k8s.V1ResourceRequirements(
        requests={"cpu": os.environ.get("MLOPS_K8S_CPU", "500m"), "memory": os.environ.get("MLOPS_K8S_MEMORY", "1Gi")},
        limits={"cpu": os.environ.get("MLOPS_K8S_CPU_LIMIT", "2"),
                "memory": os.environ.get("MLOPS_K8S_MEMORY_LIMIT", "4Gi")},
    )  # fmt: skip
    env_from = [
        k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name.strip()))
        for name in os.environ.get("MLOPS_K8S_SECRETS", "").split(",")
        if name.strip()
    ]
    config_file = os.environ.get("MLOPS_K8S_CONFIG_FILE")
    return KubernetesPodOperator(
        task_id=task_id, name=f"mlops-{step}", image=image, cmds=["mlops"], arguments=[step, *args],
        env_vars={**env, "MLOPS_XCOM_FILE": "/airflow/xcom/return.json"}, env_from=env_from,
        namespace=os.environ.get("MLOPS_K8S_NAMESPACE", "mlops"), container_resources=resources,
        service_account_name=os.environ.get("MLOPS_K8S_SERVICE_ACCOUNT") or None,
        config_file=config_file, in_cluster=not config_file, get_logs=True, do_xcom_push=True,
        pod_template_file=os.environ.get("MLOPS_K8S_POD_TEMPLATE") or None,  # docker/kubernetes/
        on_finish_action="delete_pod", skip_on_exit_code=EXIT_SKIPPED, **kwargs,
    )  # fmt: skip
