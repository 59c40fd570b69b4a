#!/usr/bin/env bash
# The scaled-out profile without containers: the topology of docker/compose.yaml started as
# processes on loopback, on the engines it uses in production.
#
#   scripts/profile.sh up      start it (prints the URLs; writes $MLOPS_PROFILE_DIR/profile.env)
#   scripts/profile.sh down    stop every process it started, cleanly (SIGTERM, then SIGKILL)
#   scripts/profile.sh env     print the variables a shell needs to run `mlops` against it
#   scripts/profile.sh status  which of its processes are alive
#
# What runs (every listener on 127.0.0.1):
#   Postgres (already running here)  databases <prefix>_airflow and <prefix>_mlflow; the registry
#                                    lock every host takes to move an alias (an advisory lock)
#   Redis (already running here)     the Celery broker
#   moto server                      the S3 endpoint (bucket $MLOPS_BUCKET): store, DVC remote, MLflow artifacts
#   mlflow server                    tracking + registry on Postgres, artifacts proxied to S3,
#                                    basic-auth (user admin, generated password in $state/secrets)
#   Airflow                          api-server, scheduler, dag-processor, triggerer, Celery worker,
#                                    metadata on Postgres, CeleryExecutor (scripts/airflow.sh)
#   mlops serve                      the champion behind the REST API (ready once a champion exists)
#   Prometheus (Debian's package)    scrapes mlops serve's /metrics (scripts/prometheus.sh installs it);
#                                    the Grafana dashboard of docker/grafana reads the same series
#
# Configuration (environment; defaults in brackets):
#   MLOPS_PROFILE_DIR [.profile]  state: logs, pids, AIRFLOW_HOME, profile.env
#   MLOPS_PROFILE_NAME [mlops]     prefix of the databases and the Celery queue
#   MLOPS_PG [postgresql://postgres@127.0.0.1:5432]   MLOPS_REDIS [redis://127.0.0.1:6379/0]
#   MLOPS_S3_PORT [9100]  MLOPS_MLFLOW_PORT [5500]  AIRFLOW_PORT [8280]  MLOPS_SERVE_PORT [8300]
#   MLOPS_BUCKET [mlops]
#   MLOPS_S3_URL / MLOPS_MLFLOW_URL  the URLs clients use, when something sits in between
#   MLOPS_EXECUTION_MODE [local]     docker: every step a container (scripts/podman.sh env)
#   MLOPS_PROJECT_DIR [this checkout] the workspace the steps run in
# The S3 keys default to throw-away values for the local moto endpoint; against real S3,
# export AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead. Nothing is
# written to the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH=$root/.venv/bin:$PATH
state=$(mkdir -p "${MLOPS_PROFILE_DIR:-$root/.profile}" && cd "${MLOPS_PROFILE_DIR:-$root/.profile}" && pwd)
name=${MLOPS_PROFILE_NAME:-mlops}
pg=${MLOPS_PG:-postgresql://postgres@127.0.0.1:5432}
redis=${MLOPS_REDIS:-redis://127.0.0.1:6379/0}
s3_port=${MLOPS_S3_PORT:-9100}
mlflow_port=${MLOPS_MLFLOW_PORT:-5500}
airflow_port=${AIRFLOW_PORT:-8280}
serve_port=${MLOPS_SERVE_PORT:-8300}
prometheus_port=${MLOPS_PROMETHEUS_PORT:-9190}
bucket=${MLOPS_BUCKET:-mlops}
s3_url=${MLOPS_S3_URL:-http://127.0.0.1:$s3_port}
mlflow_url=${MLOPS_MLFLOW_URL:-http://127.0.0.1:$mlflow_port}
mkdir -p "$state/logs"
chmod 700 "$state"
# the MLflow admin password and the server's CSRF key: generated once, readable by the owner only
if [ ! -s "$state/secrets" ]; then
  token() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
  (umask 077; printf 'MLFLOW_ADMIN_PASSWORD=%s\nMLFLOW_FLASK_SERVER_SECRET_KEY=%s\n' "$(token)" "$(token)" > "$state/secrets")
fi
mlflow_password=$(sed -n 's/^MLFLOW_ADMIN_PASSWORD=//p' "$state/secrets")
mlflow_secret_key=$(sed -n 's/^MLFLOW_FLASK_SERVER_SECRET_KEY=//p' "$state/secrets")

env_lines() {
  cat <<ENV
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-profile-key}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-profile-secret}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export AWS_ENDPOINT_URL=$s3_url
export MLFLOW_S3_ENDPOINT_URL=$s3_url
export MLFLOW_TRACKING_URI=$mlflow_url
export MLFLOW_TRACKING_USERNAME=admin
export MLFLOW_TRACKING_PASSWORD=$mlflow_password
export MLOPS_LOCK_URI=$pg/${name}_mlflow
export MLOPS_STORE_URI=s3://$bucket/store
export MLOPS_DVC_REMOTE=s3://$bucket/dvc
export MLOPS_PROJECT_DIR=${MLOPS_PROJECT_DIR:-$root}
export MLOPS_PROMETHEUS_URL=http://127.0.0.1:$prometheus_port
ENV
}

wait_http() {  # url, seconds, what, process
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ! alive "$4"; then
      echo "profile: $3 exited; last lines of $state/logs/$4.log:" >&2
      tail -n 20 "$state/logs/$4.log" "$state"/airflow/logs/migrate.log 2>/dev/null >&2; return 1
    fi
    if [ $SECONDS -ge $deadline ]; then echo "profile: $3 did not answer $1 in $2 s (logs: $state/logs)" >&2; return 1; fi
    sleep 1
  done
}

launch() {  # name, command... : a process group of its own, pid recorded
  local what=$1; shift
  setsid "$@" > "$state/logs/$what.log" 2>&1 < /dev/null &
  echo $! > "$state/$what.pid"
}

alive() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

createdb_once() {
  psql "$pg/postgres" -Atqc "select 1 from pg_database where datname = '$1'" | grep -q 1 \
    || psql "$pg/postgres" -qc "create database \"$1\"" > /dev/null
}

up() {
  pg_isready -d "$pg/postgres" -q || { echo "profile: Postgres is not answering at $pg" >&2; exit 1; }
  redis-cli -u "$redis" ping > /dev/null || { echo "profile: Redis is not answering at $redis" >&2; exit 1; }
  createdb_once "${name}_airflow"
  createdb_once "${name}_mlflow"
  eval "$(env_lines)"

  alive s3 || launch s3 moto_server -H 127.0.0.1 -p "$s3_port"
  wait_http "http://127.0.0.1:$s3_port/moto-api/" 60 "the S3 endpoint (moto)" s3
  python - "$bucket" <<'PY'
import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=sys.argv[1])
PY

  # MLflow: Postgres backend, artifacts proxied by the server to S3 (clients need no S3 keys),
  # basic-auth: registry tags and aliases are not open to whoever reaches the port. Each
  # request's password check is a scrypt hash (~0.1-0.2 s of CPU): without the credential
  # cache a serving API polling the alias and the steps' artifact downloads kept the server
  # at ~90% of a core; cached, a credential is hashed once a minute.
  # MLflow's server job runner (GenAI scorers, prompt optimization, trace roll-ups; none of
  # them used here) is off: it started eight more processes, ~2 GB of memory and ~15 s of CPU
  (umask 077; cat > "$state/mlflow-auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$state/mlflow-auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
INI
  )
  alive mlflow || MLFLOW_AUTH_CONFIG_PATH=$state/mlflow-auth.ini MLFLOW_AUTH_ADMIN_PASSWORD=$mlflow_password \
    MLFLOW_FLASK_SERVER_SECRET_KEY=$mlflow_secret_key MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_BACKEND_STORE_URI="${pg/postgresql:/postgresql+psycopg2:}/${name}_mlflow" \
    launch mlflow mlflow server --host 127.0.0.1 --port "$mlflow_port" --workers 1 --app-name basic-auth \
    --artifacts-destination "s3://$bucket/mlflow" --serve-artifacts

  # Airflow: Postgres metadata, CeleryExecutor, Redis broker, one worker on this profile's queue
  export AIRFLOW_HOME=$state/airflow AIRFLOW_PORT=$airflow_port
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=${pg/postgresql:/postgresql+psycopg2:}/${name}_airflow
  export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
  export AIRFLOW__CELERY__BROKER_URL=$redis
  export AIRFLOW__CELERY__RESULT_BACKEND=db+${pg/postgresql:/postgresql+psycopg2:}/${name}_airflow
  export AIRFLOW__OPERATORS__DEFAULT_QUEUE=$name
  export AIRFLOW__CELERY__WORKER_CONCURRENCY=${AIRFLOW__CELERY__WORKER_CONCURRENCY:-2}
  alive airflow || launch airflow bash scripts/airflow.sh

  wait_http "$mlflow_url/health" 180 "the MLflow server" mlflow
  # the serving API: polls the registry, ready once a champion exists
  alive serve || launch serve mlops serve --host 127.0.0.1 --port "$serve_port" \
    --set serve.poll_interval_s=${MLOPS_SERVE_POLL_S:-5.0}
  wait_http "http://127.0.0.1:$serve_port/health" 120 "the serving API" serve
  # Prometheus scrapes the serving API (the compose stack's docker/prometheus/prometheus.yml, on loopback)
  bash scripts/prometheus.sh > /dev/null
  sed -e "s|serve:8000|127.0.0.1:$serve_port|" -e "s|scrape_interval: .*|scrape_interval: ${MLOPS_SCRAPE_S:-5}s|" \
    docker/prometheus/prometheus.yml > "$state/prometheus.yml"
  alive prometheus || launch prometheus prometheus --config.file="$state/prometheus.yml" \
    --storage.tsdb.path="$state/prometheus" --web.listen-address="127.0.0.1:$prometheus_port"
  wait_http "http://127.0.0.1:$prometheus_port/-/ready" 60 "Prometheus" prometheus
  wait_http "http://127.0.0.1:$airflow_port/api/v2/monitor/health" 300 "Airflow's api-server" airflow
  local deadline=$((SECONDS + 120))  # the Celery worker has joined the broker
  until grep -q " ready" "$state/airflow/logs/celery-worker.log" 2>/dev/null; do
    alive airflow || { echo "profile: Airflow exited; see $state/logs/airflow.log" >&2; tail -n 20 "$state/logs/airflow.log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "profile: the Celery worker is not ready (see $state/airflow/logs/celery-worker.log)" >&2; exit 1; }
    sleep 1
  done
  (umask 077; env_lines > "$state/profile.env")
  cat <<TXT
scaled-out profile up ($state)
  Airflow  http://127.0.0.1:$airflow_port   CeleryExecutor, metadata ${name}_airflow on Postgres, broker $redis
           log in: see $state/airflow/simple_auth_manager_passwords.json.generated
  MLflow   $mlflow_url   backend ${name}_mlflow on Postgres, artifacts s3://$bucket/mlflow
           basic-auth: admin / see $state/secrets (profile.env exports it for clients)
  S3       $s3_url   bucket $bucket (store: s3://$bucket/store, DVC remote: s3://$bucket/dvc)
  serve    http://127.0.0.1:$serve_port   POST /predict, /ready, /metrics, /docs (the champion, hot reload)
  metrics  http://127.0.0.1:$prometheus_port   Prometheus, scraping serve every ${MLOPS_SCRAPE_S:-5} s
  steps    ${MLOPS_EXECUTION_MODE:-local} mode in $MLOPS_PROJECT_DIR
  shell    source $state/profile.env   (then: mlops status)
  stop     scripts/profile.sh down
TXT
}

down() {
  local what pid
  for what in prometheus serve airflow mlflow s3; do
    alive "$what" || { rm -f "$state/$what.pid"; continue; }
    pid=$(cat "$state/$what.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 90); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$state/$what.pid"
    echo "profile: $what stopped"
  done
}

status() {
  local what
  for what in s3 mlflow airflow serve prometheus; do
    if alive "$what"; then echo "$what: running (pid $(cat "$state/$what.pid"))"; else echo "$what: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  status) status ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
