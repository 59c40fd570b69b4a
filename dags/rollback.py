"""rollback: move the champion back (manual, audited)."""

from __future__ import annotations

import os
import sys

from airflow.sdk import Param, dag

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the factory beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_operator import DAG_KWARGS, DEFAULT_ARGS, step_task

DOC = """
### rollback: move the `champion` alias back, with a reason

- **Champion you are replacing** (required): the current champion's version, as `mlops status`
  (or the registry page in MLflow) shows it. If the champion moved since you looked (a
  promotion landed), the rollback is refused (exit 3) instead of removing the wrong model.
- **Roll back to**: `previous` (the champion before it) or a version number.
- **Reason** (required): recorded in the audit log with your Airflow user.

The target must load and predict first. The rolled-back model (and any identical rebuild) is
then refused by the gate until a forced promotion with a reason. See docs/runbooks/rollback.md.
"""


@dag(
    dag_id="rollback",
    schedule=None,
    **{**DAG_KWARGS, "default_args": {**DEFAULT_ARGS, "retries": 0}},  # a rollback is not retried
    tags=["mlops", "registry"],
    doc_md=DOC,
    params={
        "expected_champion": Param(
            type="string",
            pattern=r"^[0-9]+$",
            title="Champion you are replacing",
            description="The current champion's version as `mlops status` shows it; refused if it moved.",
        ),
        "rollback_to": Param(
            "previous",
            type="string",
            pattern=r"^(previous|[0-9]+)$",
            title="Roll back to",
            description="'previous' or a model version number",
        ),
        "rollback_reason": Param(type="string", minLength=3, maxLength=500, title="Reason"),
    },
)
def rollback() -> None:
    step_task("rollback")


rollback()
