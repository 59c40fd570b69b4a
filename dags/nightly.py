"""nightly: take in the day's batch, validate it, score it with the champion, monitor."""

from __future__ import annotations

import os
import sys

from airflow.sdk import Asset, Metadata, Param, dag, task

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the factory beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_operator import (
    BATCH_DATE,
    DAG_KWARGS,
    INGEST_DATE,
    schedule_from_env,
    step_result,
    step_task,
)

DRIFT = Asset(name="flight_delay_drift", uri="mlops://flight-delay/drift")

DOC = """
### nightly: one day of 2013 replayed per run

Scheduled at 03:00 UTC (`MLOPS_NIGHTLY_CRON` changes it; `none` = manual/backfill only).

`ingest -> validate -> score -> monitor -> signal_retraining` and `monitor -> decide`

- **Batch date**: the `date` Param when set; a 2013 logical date (a backfill:
  `airflow backfill create --dag-id nightly --from-date 2013-02-01 --to-date 2013-02-28
  --max-active-runs 1`, see docs/runbooks/backfill.md); otherwise the **replay clock**: the
  day after the newest day already landed (validated or quarantined), a day left in
  `data/incoming` by a run that did not finish, or `ingest.replay_start` on an empty store.
  Past 2013-12-31 ingest exits 99 and the run is skipped. The other tasks use the day ingest
  landed.
- **A range** (`date` and `through`): every task takes the whole range in one process (one
  import, one champion load, validation in blocks): a backfill of a month in one run. Each
  day's batch, prediction log and reports are those of a run for that day alone; a rejected
  day fails validate after the others are stored (start the next range after it).
- **ingest/validate**: the day's flights (package replay or landing zone) and the GX suite;
  a failing batch is quarantined and the run fails with the reason (alert sent).
- **score**: the champion scores the day (prediction log). **monitor**: Evidently drift of the
  last week against the champion's reference, and live ROC AUC / Brier on yesterday's
  predictions now that their labels arrived.
- **signal_retraining**: on a breach, emits the `flight_delay_drift` Asset event (with the
  reasons in its extra), which schedules the `retrain` DAG (monitor has notified the breach); otherwise skipped.
- **decide** (the deploy loop): with a canary live (`promote.to: canary`), compares it with
  the champion on their own labelled traffic (`mlops canary decide`): rolls it back at the
  first breach, promotes it after `canary.baking_days` (or, `canary.mode: ab`, when the
  sequential test has a winner), through the audited registry protocol, and notifies; the
  decision and its evidence are the task's result (XCom) and `reports/deploy/<date>.json`.
  Skipped when there is no canary.

Every task is idempotent per batch date. Runbook: docs/runbooks/drift.md.
"""


@dag(
    dag_id="nightly",
    schedule=schedule_from_env("MLOPS_NIGHTLY_CRON", "0 3 * * *"),
    **DAG_KWARGS,
    tags=["mlops", "monitoring"],
    doc_md=DOC,
    params={
        "date": Param(
            None,
            type=["null", "string"],
            pattern=r"^2013-\d{2}-\d{2}$",
            title="Batch date",
            description="A 2013 day (YYYY-MM-DD) to replay; empty = the replay clock's next day.",
        ),
        "through": Param(
            None,
            type=["null", "string"],
            pattern=r"^2013-\d{2}-\d{2}$",
            title="Through (a range)",
            description="With a batch date: replay every day from it through this one in this run, each "
            "task one process for the whole range (a fast backfill); empty = one day.",
        ),
    },
)
def nightly() -> None:
    ingest = step_task("ingest", "--date", INGEST_DATE)
    validate = step_task("validate", "--date", BATCH_DATE)
    score = step_task("score", "--date", BATCH_DATE)
    monitor = step_task("monitor", "--date", BATCH_DATE)
    decide = step_task("canary", "decide", "--date", BATCH_DATE, task_id="decide")

    @task(outlets=[DRIFT])
    def signal_retraining(ti=None):  # type: ignore[no-untyped-def]
        """Emit the drift Asset event when monitor found a breach; skip otherwise."""
        import logging

        from airflow.sdk.exceptions import AirflowSkipException

        result = step_result(ti.xcom_pull(task_ids="monitor"))
        if not result.get("breach"):
            raise AirflowSkipException(f"no breach on {result.get('date')}: no retraining needed")
        logging.getLogger("mlops.signal").warning(
            "breach on %s (champion v%s): %s -> retrain (drift report: reports/monitor/%s/drift.html)",
            result.get("date"), result.get("champion_version"), "; ".join(result.get("reasons") or []),
            result.get("date"),
        )  # fmt: skip

        yield Metadata(
            DRIFT,
            {
                k: result.get(k)
                for k in ("date", "reasons", "drift_share", "champion_version", "live", "breach_days")
            },
        )

    ingest >> validate >> score >> monitor >> signal_retraining()
    monitor >> decide


nightly()
