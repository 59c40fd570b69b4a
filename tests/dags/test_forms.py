"""The three trigger forms, used as a person uses them: Playwright drives Debian's Chromium
(`scripts/browser.sh` installs it; no browser download) against `make airflow`'s
`scripts/airflow.sh`. Each form is submitted with its defaults and with values, and every
run it starts must succeed.

- nightly: empty -> the replay clock's next day (2013-02-01 after a validated January);
  a date -> that day; a date and "through" -> the range in one run.
- retrain: empty -> params.yaml; a reason that is too short is refused with a message naming
  the field (Airflow validates `pattern` on submit; only `required` is checked as you type);
  values + a reason -> a forced promotion recorded with the UI user as the actor.
- rollback: its fields are required (the champion being replaced, a reason): with the
  defaults the form shows "This field is required" on them and cannot be submitted; with
  values it rolls the forced promotion back.

Nothing here is mocked. Without Chromium (and no root to install it) the test skips, except
under CI=true where it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import train_champion
from tests.dags.airflow_server import Api, browser_page, chromium, running_airflow, screenshot

pytestmark = pytest.mark.e2e


@pytest.fixture
def ui(january: Path, tmp_path: Path) -> Iterator[tuple[Api, Any, Path]]:
    """Airflow on a workspace with January validated and a champion (v1); a logged-in page."""
    chromium()  # skip or fail before anything starts
    train_champion(january)
    airflow = running_airflow(january, tmp_path, MLOPS_NIGHTLY_CRON="none", MLOPS_RETRAIN_CRON="none")
    with airflow as (api, _), browser_page(api) as page:
        yield api, page, january


def open_form(api: Api, page: Any, dag_id: str) -> Any:
    page.goto(f"{api.base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    return dialog


def field(dialog: Any, param: str) -> Any:
    return dialog.locator(f"input[name=element_{param}]")


def submit(api: Api, page: Any, dialog: Any, dag_id: str, shot: str) -> dict[str, Any]:
    """Click Trigger; the UI opens the new run's page: wait for the run to finish."""
    screenshot(page, f"{shot}-form")
    dialog.get_by_role("button", name="Trigger").click()
    page.wait_for_url(f"**/dags/{dag_id}/runs/**")
    run_id = page.url.split("/runs/", 1)[1].split("?")[0].split("/")[0]
    from urllib.parse import unquote

    run = api.wait_run(dag_id, unquote(run_id), timeout=900)
    states = api.task_states(dag_id, run["dag_run_id"])
    assert run["state"] == "success", (dag_id, run["conf"], states)
    page.reload()
    page.get_by_text("success").first.wait_for()
    screenshot(page, f"{shot}-run")
    return {**run, "states": states}


def result(api: Api, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from step_operator import step_result

    entry = api.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    )
    return dict(step_result(entry["value"]))


def champion(workspace: Path) -> str:
    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry

    version = Registry(Settings(project_dir=workspace), "flight-delay").alias(CHAMPION)
    assert version is not None
    return str(version.version)


def last_record(workspace: Path) -> dict[str, Any]:
    from pipelines.config import Settings
    from pipelines.registry import Registry

    return dict(Registry(Settings(project_dir=workspace), "flight-delay").audit_records()[-1])


@pytest.mark.timeout(2400)
def test_trigger_forms_with_defaults_and_with_values(ui: tuple[Api, Any, Path]) -> None:
    api, page, workspace = ui

    # nightly, defaults: the replay clock's next day after the validated January
    dialog = open_form(api, page, "nightly")
    assert field(dialog, "date").input_value() == ""
    run = submit(api, page, dialog, "nightly", "nightly-defaults")
    assert result(api, "nightly", run["dag_run_id"], "ingest")["date"] == "2013-02-01"
    # nightly, a date
    dialog = open_form(api, page, "nightly")
    field(dialog, "date").fill("2013-02-02")
    run = submit(api, page, dialog, "nightly", "nightly-values")
    assert run["conf"]["date"] == "2013-02-02"
    assert result(api, "nightly", run["dag_run_id"], "ingest")["date"] == "2013-02-02"
    assert (workspace / "data/validated/2013-02-02.parquet").exists()
    # nightly, a range (a backfill in one run: each task one process for the range)
    dialog = open_form(api, page, "nightly")
    assert field(dialog, "through").input_value() == ""
    field(dialog, "date").fill("2013-02-03")
    field(dialog, "through").fill("2013-02-05")
    run = submit(api, page, dialog, "nightly", "nightly-range")
    assert result(api, "nightly", run["dag_run_id"], "ingest")["dates"] == "2013-02-03:2013-02-05"
    monitored = result(api, "nightly", run["dag_run_id"], "monitor")
    assert sorted(monitored["drift_shares"]) == ["2013-02-03", "2013-02-04", "2013-02-05"], monitored
    for day in ("2013-02-03", "2013-02-04", "2013-02-05"):
        assert (workspace / f"reports/monitor/{day}/drift.html").exists()

    # retrain, defaults: every field empty (params.yaml decides); the gate decides
    dialog = open_form(api, page, "retrain")
    assert all(
        field(dialog, name).input_value() == "" for name in ("window_days", "window_end", "force_reason")
    )
    run = submit(api, page, dialog, "retrain", "retrain-defaults")
    assert run["states"]["train"] == "success" and run["states"]["register"] == "success"
    assert run["states"]["evaluate"] in ("success", "skipped"), run["states"]  # promoted or refused

    # retrain, a reason too short: refused on submit, the message names the field; no run
    runs_before = api.get("/api/v2/dags/retrain/dagRuns")["total_entries"]
    dialog = open_form(api, page, "retrain")
    field(dialog, "force_reason").fill("x")
    dialog.get_by_role("button", name="Trigger").click()
    dialog.get_by_text("Invalid input for param force_reason").wait_for()
    screenshot(page, "retrain-short-reason")
    assert api.get("/api/v2/dags/retrain/dagRuns")["total_entries"] == runs_before

    # retrain, values and a reason: the promotion is forced, the UI user is the actor
    before = champion(workspace)
    dialog = open_form(api, page, "retrain")
    field(dialog, "max_iter").fill("60")
    field(dialog, "window_days").fill("25")
    field(dialog, "force_reason").fill("browser test: force this model")
    run = submit(api, page, dialog, "retrain", "retrain-values")
    assert run["conf"]["max_iter"] == 60 and run["conf"]["window_days"] == 25, run["conf"]
    assert {t: run["states"][t] for t in ("evaluate", "promote", "announce")} == dict.fromkeys(
        ("evaluate", "promote", "announce"), "success"
    )
    forced = champion(workspace)
    assert forced != before
    last = last_record(workspace)
    assert last["action"] == "promote" and last["actor"]["name"] == "admin", last
    assert last["reason"] == "browser test: force this model", last

    # rollback, defaults: the required fields say so and the form cannot be submitted
    dialog = open_form(api, page, "rollback")
    assert field(dialog, "rollback_to").input_value() == "previous"
    assert dialog.get_by_text("This field is required").count() == 2
    assert dialog.get_by_role("button", name="Trigger").is_disabled()
    screenshot(page, "rollback-defaults")
    # rollback, values: back to the champion before the forced promotion
    field(dialog, "expected_champion").fill(forced)
    field(dialog, "rollback_reason").fill("browser test: undo the forced model")
    run = submit(api, page, dialog, "rollback", "rollback-values")
    assert champion(workspace) == before
    last = last_record(workspace)
    assert last["action"] == "rollback" and last["actor"]["name"] == "admin", last
    assert last["reason"] == "browser test: undo the forced model", last
