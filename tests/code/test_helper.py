"""The MLflow helper process of `mlops monitor` and `mlops evaluate` (pipelines/helper.py): the
same outputs as in one process, and the invariant under kill -9: the helper never outlives the
step by more than the call in hand, and a kill of either leaves what a kill of the one-process
step leaves, which the next run repairs. Real processes, a real SQLite MLflow store, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.code.conftest import environment, mlops, ok
from tests.conftest import VENV_BIN, clone_workspace

DAY = "2013-01-30"


@pytest.fixture(scope="module")
def scored(loop_base: tuple[Path, str, str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deploy loop's champion v1 with two days scored (Jan 29 and 30)."""
    root = clone_workspace(loop_base[0], tmp_path_factory.mktemp("helper") / "base")
    for day in ("2013-01-29", DAY):
        ok(mlops(root, "score", "--date", day))
    return root


def _env(ws: Path, helper: str, **extra: str) -> dict[str, str]:
    return {**environment(ws, "monitor"), "MLOPS_TRACKING_HELPER": helper, **extra}


def _monitor_runs(ws: Path) -> list[Any]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("flight-delay-monitoring")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # ended, not yet reaped by its (new) parent


def test_the_helper_gives_the_outputs_of_one_process(scored: Path, tmp_path: Path) -> None:
    results, runs, pids = {}, {}, {}
    for helper in ("1", "0"):
        ws = clone_workspace(scored, tmp_path / f"helper{helper}")
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlops"), "monitor", "--date", DAY],
            cwd=ws,
            env=_env(ws, helper),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=600)
        assert proc.returncode in (0, 99), err[-3000:]
        pids[helper] = proc.pid
        results[helper] = (
            json.loads(out.strip().splitlines()[-1]),
            json.loads((ws / f"reports/monitor/{DAY}/summary.json").read_text()),
            sorted(p.name for p in (ws / f"reports/monitor/{DAY}").iterdir()),
        )
        (run,) = _monitor_runs(ws)
        runs[helper] = run
        assert ("(MLflow helper)" in err) == (helper == "1"), err[-3000:]
    assert results["1"] == results["0"]
    assert results["1"][1]["current_rows"] > 1000 and results["1"][1]["champion_version"] == "1"
    with_helper, alone = runs["1"], runs["0"]
    assert with_helper.data.metrics == alone.data.metrics and with_helper.data.metrics["drift_share"] >= 0
    mine = {
        k: v for k, v in with_helper.data.tags.items() if k.startswith("mlops.") and k != "mlops.pid_start"
    }
    theirs = {k: v for k, v in alone.data.tags.items() if k.startswith("mlops.") and k != "mlops.pid_start"}
    # the run is logged by the helper process, not by the step: else everything is the same
    assert mine.pop("mlops.pid") != str(pids["1"]) and theirs.pop("mlops.pid") == str(pids["0"])
    assert mine == theirs and mine["mlops.step"] == "monitor" and mine["mlops.batch_date"] == DAY
    assert with_helper.info.status == alone.info.status == "FINISHED"


def _gate_outputs(ws: Path) -> dict[str, Any]:
    """What `mlops evaluate` wrote: the gate report, card, DVC metrics and curves, and the
    training run's gate metrics, tags and files in MLflow."""
    from mlflow import MlflowClient

    gate = json.loads((ws / "reports/gate.json").read_text())
    gate.pop("evaluated_at")
    card = json.loads((ws / "reports/model_card.json").read_text())
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(gate["run_id"])
    return {
        "gate": gate,
        "card": {k: v for k, v in card.items() if "evaluated" not in k},
        "metrics.json": (ws / "metrics.json").read_text(),
        "plots": {p.name: p.read_text() for p in sorted((ws / "plots").glob("*.csv"))},
        "run metrics": {
            k: v for k, v in run.data.metrics.items() if k.startswith(("holdout_", "vs_champion_"))
        },
        "run tags": {k: v for k, v in run.data.tags.items() if k.startswith("mlops.gate_")},
        "run files": sorted(f.path for f in client.list_artifacts(gate["run_id"], "gate")),
    }


def test_evaluate_gives_the_same_gate_with_and_without_its_helper(scored: Path, tmp_path: Path) -> None:
    """`mlops evaluate` asks its helper for the champion (its predictions on the holdout, the
    days it saw, the audit records) first thing and logs the gate through it at the end: the
    same report, card, metrics, curves and MLflow records as in one process, here against the
    deploy loop's champion v1 (the paired differences computed from the helper's predictions).
    Both with the machine's OpenMP threads, not the suite's one per worker: beside its helper
    the step computes on the cores the helper leaves (one fewer), in one process on all."""
    outputs = {}
    for helper in ("1", "0"):
        ws = clone_workspace(scored, tmp_path / f"helper{helper}")
        env = {k: v for k, v in _env(ws, helper).items() if k != "OMP_NUM_THREADS"}
        proc = mlops(ws, "evaluate", "--refusal-exit-code", "0", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("(MLflow helper)" in proc.stderr) == (helper == "1"), proc.stderr[-3000:]
        outputs[helper] = _gate_outputs(ws)
    assert outputs["1"] == outputs["0"]
    gate = outputs["1"]["gate"]
    assert gate["champion"]["version"] == "1" and gate["comparison"]["rows"] > 0
    assert {"roc_auc_diff", "brier_diff", "rows"} <= set(
        json.loads(outputs["1"]["metrics.json"])["vs_champion"]
    )
    assert outputs["1"]["run tags"]["mlops.gate_champion"] == "1"
    assert (
        "vs_champion_roc_auc_diff" in outputs["1"]["run metrics"]
        and "gate/gate.json" in outputs["1"]["run files"]
    )


def test_an_error_in_the_helper_reads_as_in_one_process(scored: Path) -> None:
    lines = {}
    for helper in ("1", "0"):
        proc = mlops(
            scored, "monitor", "--date", DAY, "--set", "promote.model_name=nobody", env=_env(scored, helper)
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines[helper] = proc.stderr.strip().splitlines()[-1]
    assert lines["1"] == lines["0"] == "mlops monitor: failed: model 'nobody' has no champion to monitor"


def test_kill_9_of_the_step_ends_its_helper(scored: Path, tmp_path: Path) -> None:
    """The step is killed after its report, its helper idle and holding MLflow open: the helper
    reads end-of-file and exits; the re-run logs the day's run, and nothing is left RUNNING."""
    ws = clone_workspace(scored, tmp_path / "ws")
    barrier = tmp_path / "go"
    env = _env(ws, "1", MLOPS_TEST_PAUSE_AT=f"monitor:report-written={barrier}")
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlops"), "monitor", "--date", DAY],
        cwd=ws,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("go.ready.*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    (helper,) = _children(proc.pid)
    assert "pipelines.helper" in Path(f"/proc/{helper}/cmdline").read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 120
    while not _gone(helper):
        assert time.monotonic() < deadline, f"the helper {helper} outlived its killed step"
        time.sleep(0.2)
    assert _monitor_runs(ws) == []  # killed before its run: nothing logged, nothing half-logged
    assert (ws / f"reports/monitor/{DAY}/summary.json").exists()
    again = ok(mlops(ws, "monitor", "--date", DAY, env=_env(ws, "1")))
    (run,) = _monitor_runs(ws)
    assert run.info.status == "FINISHED" and again["date"] == DAY


@pytest.mark.parametrize("helper", ["1", "0"])
def test_kill_9_inside_the_mlflow_run(scored: Path, tmp_path: Path, helper: str) -> None:
    """kill -9 with the day's MLflow run open: of the helper (helper=1; the step then fails with
    one line naming it) or of the step itself (helper=0). Either way the run is left RUNNING,
    and the next run closes it as FAILED and logs the day once."""
    ws = clone_workspace(scored, tmp_path / "ws")
    killed = mlops(ws, "monitor", "--date", DAY, env=_env(ws, helper, MLOPS_TEST_KILL_AT="monitor:run-open"))
    if helper == "1":
        line = killed.stderr.strip().splitlines()[-1]
        assert killed.returncode == 1, killed.stderr[-3000:]
        assert line.startswith("mlops monitor: failed: the MLflow helper process (pid "), line
        assert line.endswith(
            "was killed by signal 9 before it answered pipelines.steps.monitor:log_monitor_run"
        ), line
    else:
        assert killed.returncode == -signal.SIGKILL
    (left,) = _monitor_runs(ws)
    assert left.info.status == "RUNNING"
    ok(mlops(ws, "monitor", "--date", DAY, env=_env(ws, helper)))
    runs = {r.info.run_id: r for r in _monitor_runs(ws)}
    assert len(runs) == 2
    assert runs[left.info.run_id].info.status == "FAILED"
    assert "killed process" in runs[left.info.run_id].data.tags["mlops.closed_because"]
    (done,) = [r for r in runs.values() if r.info.run_id != left.info.run_id]
    assert done.info.status == "FINISHED" and done.data.tags["mlops.batch_date"] == DAY


def test_only_pipelines_functions_can_be_called(tmp_path: Path) -> None:
    from pipelines.config import Settings
    from pipelines.helper import ProcessHelper

    with (
        ProcessHelper(Settings(project_dir=tmp_path), "test") as helper,
        pytest.raises(ValueError, match="only calls functions of the pipelines package, not 'os:system'"),
    ):
        helper.submit("os:system", command="true")
    assert helper.proc.returncode == 0  # closed: it read end-of-file and exited


def test_beside_its_helper_the_step_computes_on_the_cores_left(tmp_path: Path) -> None:
    """While a helper process works, the step's OpenMP and BLAS pools use one core fewer (at
    least one); in one process, all of them. The limit ends with the block."""
    import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_info, threadpool_limits

    from pipelines.config import Settings
    from pipelines.helper import Helper, ProcessHelper
    from pipelines.helper import cores as available

    def threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"}

    cores = available()
    settings = Settings(project_dir=tmp_path)
    with threadpool_limits(limits=cores, user_api="openmp"), ProcessHelper(settings, "test") as helper:
        assert threads() == {cores}
        with helper.sharing_cores():
            assert threads() == {max(1, cores - 1)}
        assert threads() == {cores}
        with Helper(settings).sharing_cores():
            assert threads() == {cores}


def test_one_core_or_off_keeps_the_calls_in_the_step(tmp_path: Path) -> None:
    import sys

    probe = "from pipelines.config import Settings; from pipelines.helper import start; h = start(Settings(), 't'); print(type(h).__name__); h.close()"
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(tmp_path)}
    env.pop("MLOPS_TRACKING_HELPER", None)

    def kind(*prefix: str, **extra: str) -> str:
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", probe],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert kind("taskset", "-c", "0") == "Helper"  # one core: nothing to overlap with
    assert kind("taskset", "-c", "0", MLOPS_TRACKING_HELPER="1") == "ProcessHelper"  # asked for
    assert kind(MLOPS_TRACKING_HELPER="0") == "Helper"
    if len(os.sched_getaffinity(0)) >= 2:
        assert kind() == "ProcessHelper"
