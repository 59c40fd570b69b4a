"""Code tests: parameters and overrides, date ranges, window selection, the CLI's exit codes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.config import ConfigError, Settings, load_params, parse_override
from pipelines.errors import StepError
from pipelines.source import parse_days
from pipelines.steps.featurize import select_window

REPO = Path(__file__).resolve().parents[2]


def test_overrides_are_typed_and_recorded() -> None:
    params = load_params(
        Settings(project_dir=REPO), ["train.max_iter=7", "evaluate.min_roc_auc=1", "promote.reason=ok now"]
    )
    assert params.get("train.max_iter") == 7
    assert params.get("evaluate.min_roc_auc") == 1.0 and isinstance(params.get("evaluate.min_roc_auc"), float)
    assert params.overrides == {"train.max_iter": 7, "evaluate.min_roc_auc": 1.0, "promote.reason": "ok now"}
    assert params.flat()["train.learning_rate"] == 0.08


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.nope=1", "train.nope: unknown parameter"),
        ("train.max_iter=lots", "expected int, got str"),
        ("train.early_stopping=7", "expected true/false"),
        ("max_iter=3", "expected section.key=value"),
        ("train.max_iter", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_parameter(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(Settings(project_dir=REPO), [override])


def test_parse_override_keeps_yaml_types() -> None:
    assert parse_override("evaluate.slice_columns=[origin]") == ("evaluate.slice_columns", ["origin"])
    assert parse_override("promote.reason=") == ("promote.reason", "")


def test_date_ranges() -> None:
    assert parse_days("2013-01-05", None) == [dt.date(2013, 1, 5)]
    assert len(parse_days(None, "2013-02-25:2013-03-02")) == 6
    for bad in [(None, None), ("2013-01-01", "2013-01-01:2013-01-02"), ("2013-13-01", None),
                (None, "2013-01-05"), (None, "2013-01-05:2013-01-01")]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_days(*bad)


def test_window_is_the_last_validated_days() -> None:
    days = [dt.date(2013, 1, d) for d in (1, 2, 3, 5, 6, 9, 10)]
    assert select_window(days, 4, "", 1) == days[-4:]
    assert select_window(days, 3, "2013-01-05", 1) == [dt.date(2013, 1, d) for d in (2, 3, 5)]
    with pytest.raises(StepError, match=r"need more than data\.holdout_days=2"):
        select_window(days, 30, "2013-01-02", 2)


def test_cli_exit_codes_for_bad_usage(run_cli, workspace: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli("ingest", "--date", "2013-02-30")
    assert code == 2 and "2013-02-30" in err
    code, _, err = run_cli("train", "--set", "train.bogus=1")
    assert code == 2 and "train.bogus" in err
    code, _, err = run_cli("ingest", "--date", "2014-01-01")
    assert code == 1 and "no flights that day" in err
    code, _, err = run_cli("validate", "--date", "2013-01-01")
    assert code == 1 and "run `mlops ingest` first" in err
    code, _, err = run_cli("promote")
    assert code == 1 and "gate.json is missing" in err
    code, _, err = run_cli("featurize")
    assert code == 1 and "0 validated day(s)" in err


def test_ingest_is_idempotent_per_date(run_cli, workspace: Path) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("ingest", "--date", "2013-05-05")[0] == 0
    first = (workspace / "data/incoming/2013-05-05.parquet").read_bytes()
    assert run_cli("ingest", "--date", "2013-05-05")[0] == 0
    assert (workspace / "data/incoming/2013-05-05.parquet").read_bytes() == first
    assert run_cli("validate", "--date", "2013-05-05")[0] == 0
    tracked = (workspace / "data/validated.dvc").read_text()
    code, out, _ = run_cli("validate", "--date", "2013-05-05")
    assert code == 0 and '"already": ["2013-05-05"]' in out
    assert (workspace / "data/validated.dvc").read_text() == tracked
