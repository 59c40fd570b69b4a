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

`to`: `previous` (the champion before the current one) or a version number. The reason is
required and recorded with who and when (registry tags + audit trail). See
docs/runbooks/rollback.md.
"""


@dag(
    dag_id="rollback",
    schedule=None,
    **{**DAG_KWARGS, "default_args": {**DEFAULT_ARGS, "retries": 0}},  # a rollback is not retried
    tags=["mlops", "registry"],
    doc_md=DOC,
    params={
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
