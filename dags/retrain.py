"""retrain: drift-triggered (and weekly, and manual) retraining through the DVC core."""

from __future__ import annotations

import os
import sys

from airflow.sdk import Asset, AssetOrTimeSchedule, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the factory beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_operator import DAG_KWARGS, TRAINED_RUN, schedule_from_env, step_result, step_task

from pipelines.params_schema import form_param

DRIFT = Asset(name="flight_delay_drift", uri="mlops://flight-delay/drift")
SAFETY_NET = schedule_from_env("MLOPS_RETRAIN_CRON", "0 4 * * 0")  # weekly even without drift

DOC = """
### retrain: featurize -> train -> evaluate (the gate) -> register -> promote -> announce

Runs when `nightly` emits the `flight_delay_drift` Asset event, every Sunday at 04:00 UTC as
a safety net (`MLOPS_RETRAIN_CRON`; `none` = on drift and by hand only), and by hand with the
form below. Empty fields keep the `params.yaml` value.

- `featurize`, `train`, `evaluate`: one DVC stage each (`mlops retrain --stage ...` runs
  `dvc repro --single-item`: DVC's cache decides whether a stage runs), under the workspace
  lock (a nightly ingest waits). With Params, every stage of the run runs in the run's
  private copy of the workspace whose params.yaml has them: the project's params.yaml is
  never edited (a killed run leaves it untouched); MLflow records them.
- `evaluate` is the gate: when it refuses the model, the task is *skipped* (exit 99) with the
  failed checks in its log, and `promote` and `announce` are skipped; unless the promotion is
  forced with a reason.
- `register` always runs after the gate: the model becomes the challenger, and the audit log
  records the gate's verdict.
- `promote` moves the champion to it: the candidate must load and predict in a fresh process
  first, the move is a compare-and-set under the registry lock, recorded in the audit log with
  the user who triggered this run. With *Promote to* = canary it goes on the `canary` alias
  instead, answering *Canary share* of the traffic until the nightly `decide` task promotes
  or rolls it back. `announce` reports the new champion (or canary).
- At most one run at a time (`max_active_runs=1`). Runbook: docs/runbooks/drift.md.
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
        "promote_to": Param(
            None,
            **form_param(
                "promote.to",
                title="Promote to",
                description="Empty: params.yaml's promote.to. champion: at once; canary: first a share of the "
                "traffic next to the champion, and the nightly decide task promotes or rolls it back.",
            ),
        ),
        "canary_share": Param(None, **form_param("canary.share", title="Canary share of the traffic")),
        # one field, so the form needs no rule between two: a reason forces the promotion
        "force_reason": Param(
            None,
            **form_param(
                "promote.reason",
                title="Force the promotion, because ...",
                description="Empty: the gate decides. A reason (3 characters or more) promotes the model even "
                "if the gate refuses it; the reason is recorded in the audit log.",
            ),
        ),
    },
)
def retrain() -> None:
    featurize = step_task("retrain", "--stage", "featurize", task_id="featurize")
    train = step_task("retrain", "--stage", "train", task_id="train")
    evaluate = step_task("retrain", "--stage", "evaluate", task_id="evaluate")
    # after the gate, refused or not: the model is the challenger, the verdict recorded
    register = step_task("register", "--run", TRAINED_RUN, task_id="register", trigger_rule="none_failed")
    promote = step_task("promote", "--run", TRAINED_RUN)  # skipped with the gate's refusal

    @task
    def announce(ti=None):  # type: ignore[no-untyped-def]
        """Runs only when promote did (not skipped): report the new champion (or canary)."""
        import logging

        result = step_result(ti.xcom_pull(task_ids="promote"))
        if result.get("to") == "canary":  # promote.to: canary
            title = (f"new canary v{result.get('canary')} on {result.get('share')} of traffic next to champion "
                     f"v{result.get('champion')}")  # fmt: skip
        else:
            title = f"new champion v{result.get('champion')} (was {result.get('champion_before') or 'none'})"
        logging.getLogger("mlops.announce").info("%s: %s", title, result)  # promote has notified it
        return result

    featurize >> train >> evaluate >> register >> promote >> announce()
    evaluate >> promote


retrain()
