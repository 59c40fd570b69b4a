"""A retrain trains on a stable snapshot: while the workspace lock is held (as `mlops
retrain` holds it for its whole `dvc repro`), a nightly validate waits instead of changing
data/validated, then completes once the lock is released."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import VENV_BIN


def test_validate_waits_for_a_running_retrain(workspace: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from pipelines.versioning import workspace_lock

    assert run_cli("ingest", "--date", "2013-04-02")[0] == 0
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(workspace)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with workspace_lock(workspace):
        proc = subprocess.Popen([str(VENV_BIN / "mlops"), "validate", "--date", "2013-04-02"], cwd=workspace,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        report = workspace / "reports/validation/2013-04-02.json"
        while not report.exists():  # the batch was validated; now it waits to be added
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        time.sleep(3)
        assert proc.poll() is None, "validate must wait for the lock"
        assert not (workspace / "data/validated/2013-04-02.parquet").exists()
        assert not (workspace / "data/validated.dvc").exists()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (workspace / "data/validated/2013-04-02.parquet").exists()
    assert "waiting for the DVC workspace lock" in err
