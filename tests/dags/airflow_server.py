"""A real Airflow for tests: `scripts/airflow.sh` (what `make airflow` runs) on a temporary
AIRFLOW_HOME and a free port, and a small client of its REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import REPO, VENV_BIN


class Api:
    def __init__(self, base: str) -> None:
        self.base, self.token, self.password = base, "", ""

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One REST call; a GET that meets a server error (the embedded SQLite metadata DB
        can be briefly locked while scheduler, dag-processor and tasks all write) or no answer
        within the timeout (an api-server starved of CPU while task processes start: seen in
        the Celery profile next to the Podman image build) is retried. A POST or PATCH is not
        (it may have been applied)."""
        for attempt in range(5):
            try:
                status, answer = self._call(method, path, body)
            except (TimeoutError, urllib.error.URLError) as exc:
                if method != "GET" or attempt == 4:
                    raise
                status, answer = 599, f"no answer: {exc}"
            if method != "GET" or status < 500:
                break
            time.sleep(1 + attempt)
        return status, answer

    def get(self, path: str) -> Any:
        status, answer = self.call("GET", path)
        assert status == 200, f"GET {path}: {status} {answer}"
        return answer

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, run = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if status == 200 and run["state"] in ("success", "failed"):
                return run
            time.sleep(1)
        raise AssertionError(f"{dag_id} run {run_id} did not finish in {timeout}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_airflow(workspace: Path, tmp_path: Path, **extra_env: str) -> Iterator[tuple[Api, Path]]:
    """scheduler, dag-processor, triggerer and api-server on ``workspace``; yields the API
    client (logged in as admin) and AIRFLOW_HOME. The component logs are copied to
    ``tmp_path`` at the end, for a failing run's report."""
    home = tmp_path / "airflow-home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW_PORT=str(port), MLOPS_PROJECT_DIR=str(workspace),
               AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5", AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
               PATH=f"{VENV_BIN}:{os.environ['PATH']}", **extra_env)  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(["bash", str(REPO / "scripts/airflow.sh")], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    api = Api(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if api.call("GET", "/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"airflow.sh exited: {proc.stdout.read() if proc.stdout else ''}"
            time.sleep(1)
        else:
            raise AssertionError("the api-server did not answer /api/v2/monitor/health in 300s")
        api.password = admin_password(home)
        status, body = api.call("POST", "/auth/token", {"username": "admin", "password": api.password})
        assert status in (200, 201), body
        api.token = body["access_token"]
        yield api, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            # idle, the components stop in ~6 s (measured); the browser-form test's teardown
            # took the full 90 s: whatever still runs then, the test no longer needs it, and
            # it is killed with the rest
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        for log in sorted((home / "logs").glob("*.log")):
            shutil.copy(log, tmp_path / log.name)


def chromium() -> str:
    """Debian's Chromium (`scripts/browser.sh` installs it as root; no browser download).
    Without it the test skips, except under CI=true where it fails."""
    import pytest

    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0:
        proc = subprocess.run(["bash", str(REPO / "scripts/browser.sh")], capture_output=True, text=True)
        found = shutil.which("chromium") if proc.returncode == 0 else None
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing and scripts/browser.sh could not install it (CI=true)")
        pytest.skip("Chromium is not installed (run scripts/browser.sh as root)")
    return found


@contextmanager
def browser_page(api: Api) -> Iterator[Any]:
    """A Chromium page (Playwright) logged in to the Airflow UI as admin."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        page.goto(f"{api.base}/auth/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", api.password)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{api.base}/")
        try:
            yield page
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> None:
    """Kept in $MLOPS_TEST_SCREENSHOTS (a folder) when set, to look at."""
    folder = os.environ.get("MLOPS_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def admin_password(home: Path) -> str:
    return str(json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"])
