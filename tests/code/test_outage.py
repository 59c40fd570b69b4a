"""Outages are errors, and fast: with the MLflow tracking server unreachable (connections
reset) or hanging (accepted, never answered), `status`, `evaluate`, `promote` and `rollback`
each fail with one line naming the server, within the bound MLOPS_REGISTRY_TIMEOUT_S sets;
none of them reads the outage as an empty registry, and nothing moves.

A real `mlflow server` (SQLite, proxied artifacts) behind a fault proxy (tests/services.py);
the registry's lock and audit log are folders, as `MLOPS_LOCK_URI` / `MLOPS_AUDIT_URI` say.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.services import FaultProxy, MlflowServer

pytestmark = pytest.mark.e2e

BOUND_S = 10
RELAXED = ["evaluate.max_auc_drop=1.0", "evaluate.max_brier_rise=1.0", "evaluate.min_roc_auc=0.5",
           "evaluate.max_brier=0.5", "evaluate.min_brier_skill=-1.0", "evaluate.slice_min_roc_auc=0.0"]  # fmt: skip


@pytest.fixture(scope="module")
def outage(
    january_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, FaultProxy, dict[str, str]]]:
    """v1 then v2 champion on a tracking server; v3 trained and evaluated against v2."""
    from pipelines.config import Settings, load_params
    from pipelines.steps.evaluate import evaluate
    from pipelines.steps.featurize import featurize
    from pipelines.steps.promote import promote_if_blessed
    from pipelines.steps.train import train

    root = tmp_path_factory.mktemp("outage")
    server = MlflowServer(root / "server")
    proxy = FaultProxy(server.port)
    ws = root / "ws"
    shutil.copytree(january_template, ws, symlinks=True)
    env = {"MLOPS_PROJECT_DIR": str(ws), "MLOPS_TRACKING_URI": proxy.url, "MLOPS_ACTOR": "outage-test",
           "MLOPS_LOCK_URI": (root / "locks").as_uri(), "MLOPS_AUDIT_URI": (root / "audit").as_uri()}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for seed in (1, 2, 3):
            settings = Settings()
            params = load_params(settings, [*RELAXED, f"train.random_state={seed}"])
            featurize(settings, params)
            train(settings, params)
            evaluate(settings, params)
            if seed < 3:
                assert promote_if_blessed(settings, params)["champion"] == str(seed)
        yield ws, proxy, {**os.environ, **env, "MLOPS_REGISTRY_TIMEOUT_S": str(BOUND_S), "DIRECT": server.url}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proxy.close()
        server.stop()


COMMANDS = {
    "status": ["status"],
    "evaluate": ["evaluate"],
    "promote": ["promote"],
    "rollback": ["rollback", "--expect", "2", "--reason", "outage drill"],
}


@pytest.mark.parametrize("mode", ["down", "hang"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unreachable_registry_fails_the_command_fast_with_one_line(
    outage, mode: str, command: str
) -> None:  # type: ignore[no-untyped-def]
    ws, proxy, env = outage
    records_before = sorted(
        p.name for p in Path(env["MLOPS_AUDIT_URI"].removeprefix("file://")).rglob("*.json")
    )
    getattr(proxy, mode)()
    try:
        started = time.monotonic()
        proc = subprocess.run([str(VENV_BIN / "mlops"), *COMMANDS[command]], cwd=ws, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        proxy.up()
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mlops {command}: failed: MLflow tracking server {proxy.url}"), line
    assert ("Read timed out" if mode == "hang" else "unreachable") in line, line
    assert f"within ~{BOUND_S} s" in line, line
    assert "champion none" not in proc.stdout and "no champion" not in line
    # start-up (imports) plus the bound; a generous margin for a busy machine
    assert elapsed < BOUND_S + 30, f"{command} took {elapsed:.0f} s with the server {mode}"
    assert proxy.dropped >= 1, "the server was tried"
    # nothing moved, nothing recorded
    status = subprocess.run([str(VENV_BIN / "mlops"), "status", "--json"], cwd=ws, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    state = json.loads(status.stdout)
    assert state["champion"]["version"] == "2" and state["audit_check"]["ok"], state["audit_check"]
    assert (
        sorted(p.name for p in Path(env["MLOPS_AUDIT_URI"].removeprefix("file://")).rglob("*.json"))
        == records_before
    )


def test_serve_keeps_serving_through_an_outage_and_picks_up_a_rollback_within_a_poll(
    outage, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The registry hangs; meanwhile v2 is rolled back to v1 (on the server itself). The
    serving API keeps answering with v2 and says the registry is unreachable; once the
    registry answers again it serves v1 within about one poll interval (short requests, no
    minutes of back-off). Finally v2 is restored through the same protocol."""
    from fastapi.testclient import TestClient

    from pipelines.config import Settings, load_params
    from pipelines.serving import create_app

    ws, proxy, env = outage
    direct = {**env, "MLOPS_TRACKING_URI": env["DIRECT"]}
    for key in ("MLOPS_PROJECT_DIR", "MLOPS_TRACKING_URI", "MLOPS_LOCK_URI", "MLOPS_AUDIT_URI"):
        monkeypatch.setenv(key, env[key])
    poll = 1.0
    settings = Settings()
    app = create_app(settings, load_params(settings, [f"serve.poll_interval_s={poll}", "serve.shadow=false"]))
    with TestClient(app) as http:
        assert http.get("/ready").json()["loaded"] == "2"
        proxy.hang()
        try:
            rolled = subprocess.run([str(VENV_BIN / "mlops"), "rollback", "--expect", "2", "--to", "1", "--reason",
                                     "rollback during an outage"], cwd=ws, env=direct, capture_output=True,
                                    text=True, timeout=300)  # fmt: skip
            assert rolled.returncode == 0, rolled.stderr[-2000:]
            deadline = time.monotonic() + 60
            while http.get("/ready").json()["registry"]["reachable"]:
                assert time.monotonic() < deadline, "the outage never showed in /ready"
                time.sleep(0.5)
            ready = http.get("/ready")
            assert ready.status_code == 200 and ready.json()["loaded"] == "2", "it keeps serving what it has"
        finally:
            proxy.up()
        back = time.monotonic()
        while http.get("/ready").json()["loaded"] != "1":
            assert time.monotonic() - back < 60, http.get("/ready").json()
            time.sleep(0.2)
        picked_up = time.monotonic() - back
    print(
        f"\nserve picked up the rollback {picked_up:.1f} s after the registry answered again (poll {poll} s)"
    )
    # one hung poll (up to the serve's short bound) plus one interval, never minutes of back-off
    assert picked_up < 20, picked_up
    restored = subprocess.run([str(VENV_BIN / "mlops"), "rollback", "--expect", "1", "--to", "2", "--reason",
                               "restore after the drill"], cwd=ws, env=direct, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    assert restored.returncode == 0, restored.stderr[-2000:]
