"""Crash safety: the real commands killed with SIGKILL at every step boundary, then re-run.

For validate, retrain (in the workspace, and with overrides in a private run copy as a
manual Airflow trigger with Params runs it), promote and rollback, and the canary's three
moves (a promotion to canary, its graduation, its rollback), a trace run lists the
boundaries each command passes (``MLOPS_TEST_TRACE``); the list must be the one below, so a
new boundary without a kill test fails here. For each boundary a fresh copy of the state is
made, the command is killed there (``MLOPS_TEST_KILL_AT``: the process sends itself SIGKILL,
so no ``finally`` runs), run again, and checked:

- I1: the champion is the target of a recorded move (a blessed or forced promotion, or a
  rollback with a reason), and it loads and predicts;
- I2: the audit log verifies (chain, MLflow mirror, alias = the last recorded move), with
  exactly one record per move;
- I4: the re-run exits 0; run once more, it changes nothing;
- data/validated holds only validated batches (no temporary file anywhere in tracked
  folders), params.yaml is byte-identical, ``dvc status`` is clean, no MLflow run is left
  RUNNING, and nothing holds the workspace lock afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipelines.locks import pid_alive
from tests.code.conftest import NAME, environment, mlops, ok
from tests.conftest import VENV_BIN, clone_workspace, dvc, git

pytestmark = pytest.mark.e2e

# the boundaries each command passes, in order (the trace test checks this list)
POINTS: dict[str, list[str]] = {
    "validate": ["validate.checked", "validate.locked", "validate.copied", "validate.dvc-added",
                 "validate.published", "validate.done-day"],
    "retrain": ["retrain.locked", "retrain.prepared", "featurize.window-copied", "train.run-started",
                "train.fitted", "train.logged", "train.staged", "evaluate.scored", "evaluate.written",
                "retrain.reproduced", "retrain.published"],
    "retrain-overrides": ["retrain.locked", "retrain.prepared", "featurize.window-copied", "train.run-started",
                          "train.fitted", "train.logged", "train.staged", "evaluate.scored", "evaluate.written",
                          "retrain.reproduced", "retrain.published"],
    "promote": ["promote.registered", "promote.infra-checked", "promote.locked", "audit.register.appended",
                "audit.promote.appended", "promote.recorded", "promote.alias-set", "promote.tagged",
                "promote.mirrored"],
    "rollback": ["rollback.infra-checked", "rollback.locked", "audit.rollback.appended", "rollback.recorded",
                 "rollback.alias-set", "rollback.tagged", "rollback.mirrored"],
    "canary": ["promote.registered", "promote.infra-checked", "promote.locked", "audit.register.appended",
               "audit.canary.appended", "canary.recorded", "canary.alias-set", "canary.tagged", "canary.mirrored"],
    "canary-promote": ["canary-promote.infra-checked", "audit.promote.appended", "promote.recorded",
                       "promote.alias-set", "promote.tagged", "promote.mirrored"],
    "canary-rollback": ["audit.canary-rollback.appended", "canary-rollback.recorded", "canary-rollback.alias-set",
                        "canary-rollback.tagged", "canary-rollback.mirrored"],
}  # fmt: skip
# points inside a stage process that `dvc repro` runs: killing there fails the stage, so the
# command itself exits 1 instead of being killed
STAGE_POINTS = {"featurize.window-copied", "train.run-started", "train.fitted", "train.logged", "train.staged",
                "evaluate.scored", "evaluate.written"}  # fmt: skip
EXTRA = [("validate", "validate.copied#2"), ("validate", "validate.done-day#2")]  # between the two days
# the stages run the same code in both retrain variants: killed in them once (plain retrain);
# a promotion to canary runs promote's code up to its move: killed there once (promote)
SHARED = {"retrain-overrides": STAGE_POINTS, "canary": set(POINTS["promote"][:4])}
CASES = [
    (command, point)
    for command, points in POINTS.items()
    for point in points
    if point not in SHARED.get(command, set())
] + EXTRA


def test_every_boundary_has_a_kill_test(states: dict[str, tuple[Path, list[str]]], tmp_path: Path) -> None:
    """Run each command once with the trace on: the boundaries it passes are the ones listed."""
    for command, (template, argv) in states.items():
        ws = clone_workspace(template, tmp_path / command)
        trace = tmp_path / f"{command}.trace"
        ok(mlops(ws, *argv, env={**environment(ws, command), "MLOPS_TEST_TRACE": str(trace)}))
        seen = list(dict.fromkeys(trace.read_text().split()))
        assert seen == POINTS[command], f"{command}: boundaries passed {seen}"
        check(ws, command, (template / "params.yaml").read_bytes())
        again = ok(mlops(ws, *argv, env=environment(ws, command)))  # I4: a finished command again
        if command in ("promote", "rollback") or command.startswith("canary"):
            assert again["changed"] is False
        if command == "retrain":
            assert again["stages_run"] == []
        check(ws, command, (template / "params.yaml").read_bytes())


@pytest.mark.parametrize(("command", "point"), CASES, ids=[f"{c}@{p}" for c, p in CASES])
def test_killed_at_a_boundary_then_run_again(
    states: dict[str, tuple[Path, list[str]]], tmp_path: Path, command: str, point: str
) -> None:
    template, argv = states[command]
    ws = clone_workspace(template, tmp_path / "ws")
    params_before = (ws / "params.yaml").read_bytes()
    env = environment(ws, command)
    killed = mlops(ws, *argv, env={**env, "MLOPS_TEST_KILL_AT": point})
    if point.split("#")[0] in STAGE_POINTS:
        assert killed.returncode == 1 and "failed" in killed.stderr, killed.stderr[-2000:]
    else:
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert (ws / "params.yaml").read_bytes() == params_before, "a kill never leaves params.yaml edited"
    ok(mlops(ws, *argv, env=env))
    check(ws, command, params_before)


RECORDED = [("promote", "audit.promote.appended"), ("rollback", "rollback.recorded"),
            ("canary", "audit.canary.appended"), ("canary-promote", "promote.recorded")]  # fmt: skip


@pytest.mark.parametrize(("command", "point"), RECORDED, ids=[f"{c}@{p}" for c, p in RECORDED])
def test_a_recorded_move_is_completed_not_judged_again(
    states: dict[str, tuple[Path, list[str]]], tmp_path: Path, command: str, point: str
) -> None:
    """I4 for a move killed after its record was written: the record holds the infra check
    that admitted the move, so the re-run completes it without a second check. A check that
    would fail now (here a budget of 1 ms, as a slow or briefly unreachable artifact store
    gives) neither fails the re-run nor appends a refusal after the move it completes."""
    template, argv = states[command]
    ws = clone_workspace(template, tmp_path / "ws")
    params_before = (ws / "params.yaml").read_bytes()
    env = environment(ws, command)
    killed = mlops(ws, *argv, env={**env, "MLOPS_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    again = mlops(ws, *argv, "--set", "promote.infra_timeout_s=0.001", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "infra check" not in again.stderr, again.stderr[-3000:]
    check(ws, command, params_before)
    from pipelines.config import Settings
    from pipelines.registry import Registry

    records = Registry(Settings(project_dir=ws), NAME).audit_records()
    assert [r["action"] for r in records if r["action"] == "infra-refused"] == []
    # the budget is in force: a move not yet recorded is still checked, and refused
    if command == "promote":
        rolled = mlops(
            ws,
            "rollback",
            "--expect",
            "2",
            "--reason",
            "drill",
            "--set",
            "promote.infra_timeout_s=0.001",
            env=env,
        )
        assert rolled.returncode == 1 and "infra check refused v1" in rolled.stderr, rolled.stderr[-2000:]


def test_a_re_run_that_finds_the_registry_moved_meanwhile_judges_the_move(
    states: dict[str, tuple[Path, list[str]]], tmp_path: Path
) -> None:
    """The re-run above reads "my move is recorded" before it takes the lock. If, while it
    waits for the lock, another mover completes that move and the champion is moved back
    (here by hand in MLflow, which the next mover records as external), the move it then
    makes is a new one: it is checked under the lock, never made unchecked."""
    import mlflow

    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry

    template, argv = states["promote"]
    ws = clone_workspace(template, tmp_path / "ws")
    env = environment(ws, "promote")
    killed = mlops(ws, *argv, env={**env, "MLOPS_TEST_KILL_AT": "audit.promote.appended"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    registry = Registry(Settings(project_dir=ws), NAME)
    log = tmp_path / "rerun.log"
    with registry.lock(), open(log, "w") as stderr:
        rerun = subprocess.Popen(
            [str(VENV_BIN / "mlops"), *argv, "--set", "promote.infra_timeout_s=0.001"],
            cwd=ws,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        deadline = time.monotonic() + 300
        while "waiting for the registry" not in log.read_text():  # it read the record, then blocked
            assert rerun.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        registry.recover()  # another mover completes the recorded promotion ...
        assert registry.aliases()[CHAMPION] == "2"
        mlflow.MlflowClient(registry.settings.mlflow_uri).set_registered_model_alias(
            NAME, CHAMPION, "1"
        )  # ... undone
    assert rerun.wait(timeout=300) == 1, log.read_text()[-2000:]
    assert "failed: infra check refused v2" in log.read_text().strip().splitlines()[-1]
    records = registry.audit_records()
    assert [r["action"] for r in records[-2:]] == ["external", "infra-refused"]
    assert registry.aliases()[CHAMPION] == "1", "no move without its check"
    done = ok(mlops(ws, *argv, env=env))  # with the check's usual budget: moved, checked
    assert done["changed"] is True and done["champion"] == "2"
    last = registry.audit_records()[-1]
    assert last["action"] == "promote" and last["infra"]["ok"] is True, last


def check(ws: Path, command: str, params_before: bytes) -> None:
    """The invariants after a command completed (however many times it was interrupted)."""
    import mlflow

    from pipelines.audit import CANARY_MOVES, MOVES
    from pipelines.config import Settings
    from pipelines.registry import CHAMPION, Registry
    from pipelines.steps.status import verify_registry

    assert (ws / "params.yaml").read_bytes() == params_before
    registry = Registry(Settings(project_dir=ws), NAME)
    verification, records = verify_registry(registry)
    assert verification.ok, verification.problems
    moves = [r for r in records if r["action"] in MOVES]
    expected = {"promote": [(None, "1"), ("1", "2")], "rollback": [(None, "1"), ("1", "2"), ("2", "1")],
                "canary-promote": [(None, "1"), ("1", "2")]}  # fmt: skip
    assert [(r["from"], r["to"]) for r in moves] == expected.get(command, [(None, "1")]), (
        "one record per move"
    )
    canary_moves = [(r["action"], r["from"], r["to"]) for r in records if r["action"] in CANARY_MOVES]
    started = [("canary", None, "2")]
    assert canary_moves == {"canary": started, "canary-promote": started,
                            "canary-rollback": [*started, ("canary-rollback", "2", None)]}.get(command, [])  # fmt: skip
    assert registry.canary() == (("2", 0.1) if command == "canary" else (None, 0.0))
    if command == "canary-promote":
        assert moves[-1]["canary"] == "2", "the canary graduated in the move's own record"
    if command == "canary-rollback":  # barred like a rolled-back champion
        assert registry.get("2").tags["mlops.rolled_back_record"] == str(records[-1]["seq"])
    assert [r["version"] for r in records if r["action"] == "register"] == sorted(
        {r["version"] for r in records if r["action"] == "register"}
    ), "each version registered once"
    last = moves[-1]
    assert (
        (last["action"] == "rollback" and last["reason"])
        or last["gate"]["verdict"] == "blessed"
        or last["forced"]
    )
    champion = registry.aliases()[CHAMPION]
    assert champion == last["to"]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{champion}")  # I1: it loads and predicts
    assert len(model.predict(model.input_example)) == len(model.input_example)
    # no run left RUNNING by a killed process (the next run closed it)
    client = registry.client
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
    # the DVC-tracked store: validated batches only, each with its report; nothing temporary anywhere
    validated = sorted(p.name for p in (ws / "data/validated").iterdir())
    assert all(len(name) == len("2013-01-01.parquet") and name.endswith(".parquet") for name in validated), (
        validated
    )
    for name in validated:
        assert (ws / "reports/validation" / name.replace(".parquet", ".json")).exists() or name < "2013-02", (
            name
        )
    for folder in ("data", "models"):
        assert not [p for p in (ws / folder).rglob("*") if p.name.endswith(".tmp")], folder
    assert not list((ws / ".mlops/staging").glob("*")), "temporary files of a killed run were removed"
    if command in ("validate", "retrain"):
        assert {"2013-02-01.parquet", "2013-02-02.parquet"} <= set(validated)
        assert not list((ws / "data/incoming").glob("2013-02-0*.parquet"))
    status = dvc(ws, "status", "data/validated.dvc") if command == "validate" else dvc(ws, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    if command == "retrain":  # the workspace's window (dvc.lock is clean, above) has the new days
        assert json.loads((ws / "reports/featurize.json").read_text())["end"] == "2013-02-02"
    with open(ws / ".mlops/dvc.lock") as handle:  # nobody holds the workspace lock
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_killed_retrain_leaves_the_lock_to_its_dvc_child_until_it_ends(
    states: dict[str, tuple[Path, list[str]]], tmp_path: Path
) -> None:
    """kill -9 of `mlops retrain` while `dvc repro` runs: the child keeps the workspace lock
    (it inherited it) until it ends, so a validate meanwhile waits and, timing out, names the
    holder. The child then ends on its own (its parent's output pipe is gone); only then is
    the lock free, and the re-run completes the work."""
    template, argv = states["retrain"]
    ws = clone_workspace(template, tmp_path / "ws")
    env = environment(ws, "retrain")
    ok(mlops(ws, "ingest", "--date", "2013-02-03", env=env))
    barrier = tmp_path / "go"
    proc = subprocess.Popen([str(VENV_BIN / "mlops"), *argv], cwd=ws, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**env, "MLOPS_TEST_PAUSE_AT": f"train.run-started={barrier}"})  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("go.ready.*")):  # `mlops train`, under dvc, under retrain, waits
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    waited = mlops(ws, "validate", "--date", "2013-02-03", env={**env, "MLOPS_LOCK_TIMEOUT_S": "2"})
    assert waited.returncode == 1
    line = waited.stderr.strip().splitlines()[-1]
    assert "gave up after 2 s waiting for the DVC workspace lock" in line, line
    assert f"pid {proc.pid}" in line and "that process is gone, its child pid" in line, line
    child = json.loads((ws / ".mlops/dvc.lock").read_text())["children"][-1]
    assert pid_alive(child), "the dvc child runs on after its parent was killed"
    barrier.touch()
    deadline = time.monotonic() + 300
    with open(ws / ".mlops/dvc.lock") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the dvc child never released the lock"
                time.sleep(0.5)
    time.sleep(0.5)
    assert not pid_alive(child), "the lock is free only once the child has ended"
    ok(mlops(ws, *argv, env=env))
    ok(mlops(ws, "validate", "--date", "2013-02-03", env=env))
    assert git(ws, "status", "--porcelain", "params.yaml") == ""
