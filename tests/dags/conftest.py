"""Airflow fixtures: a migrated metadata DB (SQLite) in the session's AIRFLOW_HOME."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, VENV_BIN

DAGS = REPO / "dags"
# the factory is imported as the DAG files import it (they sit beside it)
if str(DAGS) not in sys.path:
    sys.path.insert(0, str(DAGS))


@pytest.fixture(scope="session")
def airflow_db() -> None:
    proc = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture
def dagbag(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The project's DAGs, parsed for real (with the current MLOPS_* environment)."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.syspath_prepend(str(DAGS))
    sys.modules.pop("step_operator", None)
    return DagBag(dag_folder=str(DAGS))
