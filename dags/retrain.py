"""retrain: drift-triggered (and weekly, and manual) retraining through the DVC core."""

from __future__ import annotations

import os
import sys

from airflow.sdk import Asset, AssetOrTimeSchedule, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the factory beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_operator import DAG_KWARGS, RETRAIN_RUN, schedule_from_env, step_result, step_task

from pipelines.params_schema import form_param

DRIFT = Asset(name="flight_delay_drift", uri="mlops://flight-delay/drift")
SAFETY_NET = schedule_from_env("MLOPS_RETRAIN_CRON", "0 4 * * 0")  # weekly even without drift

DOC = """
### retrain: featurize -> train -> evaluate (via `dvc repro`) -> promote

Runs when `nightly` emits the `flight_delay_drift` Asset event, every Sunday at 04:00 UTC as
a safety net (`MLOPS_RETRAIN_CRON`; `none` = on drift and by hand only), and by hand with the
form below. Empty fields keep the `params.yaml` value.

- `retrain` runs `dvc repro` under the workspace lock (a nightly ingest waits). With Params,
  it runs in a private copy of the workspace whose params.yaml has them: the project's
  params.yaml is never edited (a killed run leaves it untouched); MLflow records them.
- `promote` consumes the gate report of that run (its MLflow `gate/` artifacts): exit 0 =
  promoted (or already the champion); exit 99 = refused, the task is *skipped* and the
  champion is unchanged. The candidate must load and predict in a fresh process first, the
  move is a compare-and-set under the registry lock, and it is recorded in the audit log
  with the user who triggered this run. `announce` then reports the new champion.
- At most one run at a time (`max_active_runs=1`).
"""


@dag(
    dag_id="retrain",
    schedule=(
        AssetOrTimeSchedule(timetable=CronTriggerTimetable(SAFETY_NET, timezone="UTC"), assets=DRIFT)
        if SAFETY_NET
        else DRIFT
    ),
    **DAG_KWARGS,
    tags=["mlops", "training"],
    doc_md=DOC,
    # the form's fields are the settings schema's (pipelines/params_schema.py): same types,
    # ranges, choices and descriptions as params.yaml and --set; empty keeps params.yaml's value
    params={
        "window_days": Param(None, **form_param("data.window_days", title="Window (days)")),
        "window_end": Param(None, **form_param("data.window_end", title="Window end")),
        "learning_rate": Param(None, **form_param("train.learning_rate", title="Learning rate")),
        "max_iter": Param(None, **form_param("train.max_iter", title="Boosting iterations")),
        "max_leaf_nodes": Param(None, **form_param("train.max_leaf_nodes", title="Leaves per tree")),
        "min_roc_auc": Param(None, **form_param("evaluate.min_roc_auc", title="Gate: ROC AUC floor")),
        "max_auc_drop": Param(
            None, **form_param("evaluate.max_auc_drop", title="Gate: allowed ROC AUC drop vs champion")
        ),
        "force_promote": Param(False, **form_param("promote.force", title="Force promotion")),
        "reason": Param(None, **form_param("promote.reason", title="Reason (recorded in the audit trail)")),
    },
)
def retrain() -> None:
    retrain_step = step_task("retrain")
    promote = step_task("promote", "--run", RETRAIN_RUN)

    @task
    def announce(ti=None):  # type: ignore[no-untyped-def]
        """Runs only when promote did (not skipped): report the new champion."""
        import logging

        result = step_result(ti.xcom_pull(task_ids="promote"))
        logging.getLogger("mlops.announce").info("new champion v%s: %s", result.get("champion"), result)
        return result

    retrain_step >> promote >> announce()


retrain()
