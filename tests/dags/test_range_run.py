"""A range backfill (the nightly DAG triggered with `date` and `through`: each task one
process for the whole range) against the path of one nightly run per day, on two copies of
one workspace with one champion: the same validated store and data version, the same
prediction logs, the same monitoring summaries, and the range's drift result names its days."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import clone_workspace, train_champion
from tests.dags.conftest import DAGS

FIRST, LAST = dt.date(2013, 2, 1), dt.date(2013, 2, 4)
DAYS = [FIRST + dt.timedelta(days=i) for i in range((LAST - FIRST).days + 1)]


def _daily(root: Path) -> None:
    """What four nightly runs do, one day each (the steps in-process, one day at a time)."""
    from pipelines.config import Settings, load_params
    from pipelines.steps.ingest import ingest
    from pipelines.steps.monitor import monitor
    from pipelines.steps.score import score
    from pipelines.steps.validate import validate

    settings = Settings(project_dir=root)
    params = load_params(settings)
    for day in DAYS:
        ingest(settings, params, [day])
        validate(settings, params, [day])
        score(settings, params, day)
        monitor(settings, params, day)


def _outputs(root: Path) -> dict[str, Any]:
    predictions = {}
    for day in DAYS:
        frame = pd.read_parquet(root / "data/predictions" / f"{day}.parquet")
        predictions[str(day)] = frame.drop(columns=["scored_at"])
    return {
        "tracked": (root / "data/validated.dvc").read_text(),
        "validated": sorted(p.name for p in (root / "data/validated").glob("*.parquet")),
        "predictions": predictions,
        "summaries": {
            str(day): json.loads((root / "reports/monitor" / str(day) / "summary.json").read_text())
            for day in DAYS
        },
    }


@pytest.mark.e2e
def test_a_range_run_gives_the_outputs_of_daily_runs(
    january_template: Path,
    tmp_path: Path,
    airflow_db,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    base = clone_workspace(january_template, tmp_path / "base")
    train_champion(base)
    ranged = clone_workspace(base, tmp_path / "range")
    daily = clone_workspace(base, tmp_path / "daily")

    _daily(daily)

    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(ranged))
    monkeypatch.chdir(ranged)
    monkeypatch.syspath_prepend(str(DAGS))
    bag = DagBag(dag_folder=str(DAGS))
    run = bag.dags["nightly"].test(run_conf={"date": str(FIRST), "through": str(LAST)})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    for task in ("ingest", "validate", "score", "monitor"):
        assert states[task] == "success", states

    expected, got = _outputs(daily), _outputs(ranged)
    assert got["validated"] == expected["validated"]
    assert len(got["validated"]) == 31 + len(DAYS)
    assert got["tracked"] == expected["tracked"], "the same data version"
    assert got["predictions"].keys() == expected["predictions"].keys()
    for day, frame in expected["predictions"].items():  # (NaN features: compared as frames)
        pd.testing.assert_frame_equal(got["predictions"][day], frame)
    assert got["summaries"] == expected["summaries"]

    # what the range's monitor task handed on: every day's drift, the breach of any day
    from step_operator import step_result  # type: ignore[import-not-found]

    monitor_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "monitor")
    result = step_result(monitor_ti.xcom_pull(task_ids="monitor"))
    assert result["dates"] == f"{FIRST}:{LAST}"
    assert set(result["drift_shares"]) == {str(d) for d in DAYS}
    breached = [str(d) for d in DAYS if expected["summaries"][str(d)]["breach"]]
    assert result["breach_days"] == breached and result["breach"] == bool(breached)
    assert states["signal_retraining"] == ("success" if breached else "skipped")
