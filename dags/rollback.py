"""rollback: move the champion back (manual, audited)."""

from __future__ import annotations

import os
import sys

from airflow.sdk import Param, dag

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # the factory beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_operator import DAG_KWARGS, DEFAULT_ARGS, step_task

from pipelines.params_schema import form_param

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
    # the fields are the settings schema's rollback.* keys (pipelines/params_schema.py)
    params={
        "expected_champion": Param(
            **form_param(
                "rollback.expect",
                optional=False,
                title="Champion you are replacing",
                min_length=1,
                description="The current champion's version as `mlops status` shows it; refused if it moved.",
            )
        ),
        "rollback_to": Param("previous", **form_param("rollback.to", optional=False, title="Roll back to")),
        "rollback_reason": Param(
            **form_param("rollback.reason", optional=False, title="Reason", min_length=3)
        ),
    },
)
def rollback() -> None:
    step_task("rollback")


rollback()
