"""A retrain trains on a stable snapshot: while the workspace lock is held (as `mlops
retrain` holds it for its whole `dvc repro`), a nightly validate waits instead of changing
data/validated, then completes once the lock is released."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import VENV_BIN


def test_validate_waits_for_a_running_retrain(workspace: Path, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.versioning import workspace_lock

    assert run_cli("ingest", "--date", "2013-04-02")[0] == 0
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(workspace)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "validate.log"
    with workspace_lock(workspace), open(log, "w") as handle:
        proc = subprocess.Popen([str(VENV_BIN / "mlops"), "validate", "--date", "2013-04-02"], cwd=workspace,
                                env=env, stdout=subprocess.DEVNULL, stderr=handle)  # fmt: skip
        deadline = time.monotonic() + 120
        # the batch passed the suite; now it waits to be added
        while "waiting for the DVC workspace lock" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(3)
        assert proc.poll() is None, "validate must wait for the lock"
        assert "rows kept every rule" in log.read_text(), "the batch passed the contract before waiting"
        assert not (workspace / "data/validated/2013-04-02.parquet").exists()
        assert not (workspace / "data/validated.dvc").exists()
        assert not (workspace / "reports/validation/2013-04-02.json").exists()
    assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    assert (workspace / "data/validated/2013-04-02.parquet").exists()
    assert (workspace / "reports/validation/2013-04-02.json").exists()


def test_two_validates_of_one_day_commit_it_once(workspace: Path, run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A scheduled and a manual nightly for the same day: the second validate finds the day
    committed by the first when it gets the lock, and succeeds without redoing it."""
    from pipelines.versioning import workspace_lock

    assert run_cli("ingest", "--date", "2013-04-03")[0] == 0
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(workspace)}
    env.pop("MLFLOW_TRACKING_URI", None)
    logs = [tmp_path / f"validate-{i}.log" for i in range(2)]
    with workspace_lock(workspace):  # both pass the suite, then queue on the lock
        procs = []
        for log in logs:
            with open(log, "w") as handle:
                procs.append(subprocess.Popen([str(VENV_BIN / "mlops"), "validate", "--date", "2013-04-03"],
                                              cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=handle))  # fmt: skip
        deadline = time.monotonic() + 120
        while not all("waiting for the DVC workspace lock" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                log.read_text()[-1500:] for log in logs
            ]
            time.sleep(0.5)
    codes = [p.wait(timeout=180) for p in procs]
    errs = [log.read_text() for log in logs]
    assert codes == [0, 0], [err[-1500:] for err in errs]
    assert sum("committed meanwhile by another run" in err for err in errs) == 1, [e[-800:] for e in errs]
    assert (workspace / "data/validated/2013-04-03.parquet").exists()
    assert not (workspace / "data/incoming/2013-04-03.parquet").exists()
