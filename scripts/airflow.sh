#!/usr/bin/env bash
# `make airflow`: Airflow 3 on the embedded default (SQLite + LocalExecutor) with this
# project's DAGs, every component bound to 127.0.0.1. `airflow standalone` would start log
# servers on all interfaces, so the components are started one by one instead.
# Stop with Ctrl-C (or `make airflow-stop` from another shell).
#
# The scaled-out profile (scripts/profile.sh) runs the same script with
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONN on Postgres and AIRFLOW__CORE__EXECUTOR=CeleryExecutor:
# then a Celery worker is started too (queue AIRFLOW__OPERATORS__DEFAULT_QUEUE).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH=$root/.venv/bin:$PATH
export AIRFLOW_HOME=${AIRFLOW_HOME:-$root/airflow-home}
export AIRFLOW__CORE__DAGS_FOLDER=$root/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}   # 2 cores: a few task processes at once
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=${AIRFLOW_PORT:-8080}
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$AIRFLOW__API__PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$AIRFLOW__API__BASE_URL/execution/
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=${AIRFLOW_USERS:-admin:admin}
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}
export MLOPS_PROJECT_DIR=${MLOPS_PROJECT_DIR:-$root}
# the generated admin password, the component logs (which can print it) and the metadata DB
# are readable by their owner only (task processes keep the caller's umask for the data)
mkdir -p "$AIRFLOW_HOME/logs"
chmod 700 "$AIRFLOW_HOME" "$AIRFLOW_HOME/logs"
chmod -R go-rwx "$AIRFLOW_HOME"/*.json* "$AIRFLOW_HOME"/*.db "$AIRFLOW_HOME"/*.cfg "$AIRFLOW_HOME"/logs/*.log 2>/dev/null || true

(umask 077; airflow db migrate > "$AIRFLOW_HOME/logs/migrate.log" 2>&1)
pids=() names=()
start() {  # a component, its log private to the owner
  name=$1; shift
  (umask 077; : >> "$AIRFLOW_HOME/logs/$name.log")
  "$@" > "$AIRFLOW_HOME/logs/$name.log" 2>&1 & pids+=($!); names+=("$name")
}
start scheduler airflow scheduler --skip-serve-logs
start dag-processor airflow dag-processor
start triggerer airflow triggerer --skip-serve-logs
# the api-server generates the admin password file: under umask 077 it is created 0600
start api-server bash -c 'umask 077; exec airflow api-server --host 127.0.0.1 --port "$AIRFLOW__API__PORT"'
if [ "$AIRFLOW__CORE__EXECUTOR" = CeleryExecutor ]; then
  # task logs are written to $AIRFLOW_HOME/logs, which the api-server reads on this host:
  # no log server is needed (and none listens on other interfaces)
  start celery-worker airflow celery worker --skip-serve-logs --without-gossip --without-mingle \
    --concurrency "${AIRFLOW__CELERY__WORKER_CONCURRENCY:-2}" -q "${AIRFLOW__OPERATORS__DEFAULT_QUEUE:-default}"
fi
echo "${pids[*]}" > "$AIRFLOW_HOME/pids"
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$AIRFLOW_HOME/pids"; }
trap stop EXIT INT TERM

url=$AIRFLOW__API__BASE_URL
for _ in $(seq 1 120); do
  curl -fsS "$url/api/v2/monitor/health" > /dev/null 2>&1 && break
  sleep 2
done
for i in "${!pids[@]}"; do  # a component that died at start-up fails the whole start
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "airflow: ${names[$i]} exited at start-up; last lines of $AIRFLOW_HOME/logs/${names[$i]}.log:" >&2
    tail -n 15 "$AIRFLOW_HOME/logs/${names[$i]}.log" >&2
    exit 1
  fi
done
passwords=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
login=$(python -c 'import json, sys; print(", ".join(f"{u} / {p}" for u, p in json.load(open(sys.argv[1])).items()))' \
  "$passwords" 2>/dev/null || echo "see $passwords")
cat <<TXT

Airflow is up on $url (bound to 127.0.0.1 only; $AIRFLOW__CORE__EXECUTOR)
  log in:     $login   (generated; kept in $passwords)
  DAGs:       nightly (03:00 UTC, one 2013 day per run), retrain (on drift, Sundays, manual),
              rollback (manual); new DAGs start paused: unpause them in the UI
  backfill:   AIRFLOW_HOME=$AIRFLOW_HOME .venv/bin/airflow backfill create --dag-id nightly \\
                --from-date 2013-02-01 --to-date 2013-02-07
  logs:       $AIRFLOW_HOME/logs/   (components), task logs under the same folder
Stop with Ctrl-C.
TXT
wait
