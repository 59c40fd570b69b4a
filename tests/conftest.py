"""Shared fixtures: throw-away project workspaces (git + DVC + SQLite MLflow) on real data.

A workspace is a temporary folder holding this project's params.yaml and dvc.yaml, a git
repository and a DVC repository, so every test runs the real tools without touching the
checkout. Building January 2013 (31 real days ingested and validated) takes ~40 s, so it
is built once per session and copied for each test that needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
JANUARY = "2013-01-01:2013-01-31"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# the tests' own `dvc` calls send no usage reports either (pipelines.versioning.run_dvc)
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# steps run as `mlops ...` subprocesses by DVC must find the project's environment
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
for leaked in (
    "MLFLOW_TRACKING_URI",
    "MLOPS_TRACKING_URI",
    "MLOPS_PROJECT_DIR",
    "MLOPS_EXECUTION_MODE",
    "MLOPS_HOME",
    "MLOPS_LOCK_URI",
    "MLOPS_AUDIT_URI",
    "MLOPS_ACTOR",
    "MLOPS_ACTOR_SOURCE",
    "MLOPS_RUN",
):
    os.environ.pop(leaked, None)
# Airflow reads its home when first imported: a private one for the whole session
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=root, capture_output=True, text=True)


def make_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    # the DVC stages hash the pipeline code they run: give them the same files
    shutil.copytree(REPO / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    git(root, "init", "-q")
    git(root, "config", "user.email", "ci@example.invalid")
    git(root, "config", "user.name", "ci")
    assert dvc(root, "init", "-q").returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "workspace")
    return root


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project workspace; steps called in-process act on it."""
    root = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(root))
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def january_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with January 2013 ingested and validated, built once per run: under
    pytest-xdist the first worker to need it builds it in the run's shared temporary folder
    (the parent of the workers' own) while the others wait on a file lock, then all read it
    (every test copies it; none writes to it)."""
    import fcntl

    from pipelines.config import Settings, load_params
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.validate import validate

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / "january-template"
    with open(shared / "january-template.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the worker dies
        if not (folder / "built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker killed while building it
            root = make_workspace(folder / "ws")
            settings = Settings(project_dir=root)
            params = load_params(settings)
            days = parse_days(None, JANUARY)
            ingest(settings, params, days)
            validate(settings, params, days)
            (folder / "built").touch()
    return folder / "ws"


def train_champion(root: Path) -> None:
    """featurize -> train -> evaluate -> promote in-process: the first champion of ``root``."""
    from pipelines.config import Settings, load_params
    from pipelines.steps.evaluate import evaluate
    from pipelines.steps.featurize import featurize
    from pipelines.steps.promote import promote_if_blessed
    from pipelines.steps.train import train

    settings = Settings(project_dir=root)
    params = load_params(settings)
    featurize(settings, params)
    train(settings, params)
    evaluate(settings, params)
    promote_if_blessed(settings, params)


def clone_workspace(template: Path, root: Path) -> Path:
    """A copy of a workspace *with its MLflow state*: the SQLite store records absolute
    artifact locations, which are moved to the copy (else the copy would read and write the
    template's artifacts)."""
    import sqlite3

    shutil.copytree(template, root, symlinks=True)
    db = root / "mlflow.db"
    if db.exists():
        old, new = str(template.resolve()), str(root.resolve())
        with sqlite3.connect(db) as conn:
            tables = [t for (t,) in conn.execute("select name from sqlite_master where type = 'table'")]
            for table in tables:
                for _, column, kind, *_ in conn.execute(f"pragma table_info('{table}')").fetchall():
                    if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                        conn.execute(f'update "{table}" set "{column}" = replace("{column}", ?, ?) '
                                     f'where "{column}" like ?', (old, new, f"%{old}%"))  # fmt: skip
    return root


def use_copy(template: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of a template workspace, made the current project."""
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(root))
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def january(january_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the January workspace."""
    return use_copy(january_template, tmp_path / "ws", monkeypatch)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Iterator[object]:
    """Call `mlops ...` in-process: returns (exit code, stdout, stderr)."""
    from pipelines.cli import main

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield call


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri() -> Iterator[None]:
    """MLflow's set_tracking_uri() exports MLFLOW_TRACKING_URI into os.environ; clear it
    after each test so that a later test's subprocesses do not inherit another store."""
    yield
    # the tracking URI, and the HTTP retry bounds pipelines.tracking.connect() derives from
    # the test's own MLOPS_REGISTRY_TIMEOUT_S
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # fmt: skip
        os.environ.pop(name, None)
    # and the registry URI a test set in this process (mlflow keeps it in a module global: a
    # later test's models:/ URIs would resolve in another workspace's registry)
    registry_utils = sys.modules.get("mlflow.tracking._model_registry.utils")
    if registry_utils is not None:
        registry_utils._registry_uri = None  # type: ignore[attr-defined]


def run_id(proc: Any) -> str:
    assert proc.returncode in (0, 99), proc.stderr[-3000:]
    return str(json.loads(proc.stdout.strip().splitlines()[-1])["run_id"])


@pytest.fixture(scope="session")
def loop_base(january_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, str]:
    """Champion v1: a weak model (3 training days, Jan 7-9, window ending Jan 10); evaluated
    runs of a constant model (no leaf may hold fewer than 100,000 flights: no split), a
    crippled one (one split) and a better one (7 training days)."""
    from tests.code.conftest import mlops, ok

    root = tmp_path_factory.mktemp("deploy") / "base"
    shutil.copytree(january_template, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(window_days=4, holdout_days=1, min_window_days=2, window_end="2013-01-10")
    params["train"].update(max_iter=60)
    params["evaluate"].update(min_roc_auc=0.5, max_brier=0.5, min_brier_skill=-1.0, max_auc_drop=1.0,
                              max_brier_rise=1.0, slice_min_roc_auc=0.0)  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "commit", "-qam", "deploy loop: a weak champion's settings")
    ok(mlops(root, "retrain"))
    assert ok(mlops(root, "promote"))["champion"] == "1"
    constant = run_id(mlops(root, "retrain", "--set", "train.min_samples_leaf=100000"))
    crippled = run_id(mlops(root, "retrain", "--set", "train.max_iter=1", "--set", "train.max_leaf_nodes=2"))
    better = run_id(mlops(root, "retrain", "--set", "data.window_days=10", "--set", "data.holdout_days=3",
                          "--set", "data.min_window_days=5", "--set", "train.max_iter=200"))  # fmt: skip
    return root, constant, crippled, better


# the order in which the two workers of `make test` are handed work (pytest-xdist, `--dist
# loadgroup --no-loadscope-reorder`): the longest units first, so that no worker is left running
# one alone at the end; a group (below) goes whole to one worker, the largest, the 61
# crash-safety and protocol tests (~22 min), to one worker at the start, the scenarios to the other
LONG_FIRST = (
    "@crash-states",
    "tests/profile/test_scaled_out.py::test_celery",
    "@deploy-loop",
    "tests/dags/test_forms.py",
    "tests/profile/test_scaled_out.py::test_docker",
    "tests/dags/test_scheduler.py",
    "tests/e2e/",
    "@outage",
    "tests/data/test_contract.py::test_every_real_day",
)
# fixtures that take from ~10 s to ~90 s to build, shared by several tests: every test that
# uses one runs on the same worker (`--dist loadgroup`), so it is built once, not once per
# worker (module-scoped ones: once per run of its module's tests on a worker)
BUILT_ONCE = {
    "tests.code.conftest.states": "crash-states",  # the state before each protocol command
    "tests.conftest.loop_base": "deploy-loop",  # a weak champion and three evaluated challengers
    "tests.code.test_outage.outage": "outage",  # an MLflow server behind a fault proxy, 3 models
    "tests.model.test_gate_intervals.models": "gate-intervals",  # three fitted models
    "tests.model.test_model_behaviour.trained": "model-behaviour",  # a model fitted on January
    "tests.serving.test_serve.two_versions": "serving",  # a champion and a challenger on January
    "tests.data.test_bad_batches.served": "bad-batches",  # January served from a landing folder
}


def _shared_fixture_group(item: pytest.Item) -> str | None:
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in info.name2fixturedefs.items() if info else ():
        key = f"{defs[-1].func.__module__}.{name}"
        if key in BUILT_ONCE:
            return BUILT_ONCE[key]
    return None


def pytest_configure(config: pytest.Config) -> None:
    """With pytest-xdist workers sharing the cores, each process gets cores // workers
    OpenMP threads (scikit-learn's fits and predictions), as joblib does for its own workers.
    libgomp's threads spin-wait between parallel regions; two processes of two threads each
    on two cores spent half their CPU spinning on the core the other needed (a fit: 8-16 s
    of CPU against 5 s; docs/performance.md). The outputs are the same for any thread count.
    Set here, before any worker starts or imports scikit-learn; every command a test runs
    (DVC stages, Airflow tasks, servers) inherits it. An explicit OMP_NUM_THREADS wins."""
    from pipelines.helper import cores

    workers = config.getoption("numprocesses", None) or 0
    if isinstance(workers, int) and workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores() // workers))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (group := _shared_fixture_group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: they collect, the controller schedules

        def rank(item: pytest.Item) -> int:
            mark = item.get_closest_marker("xdist_group")
            group = f"@{mark.args[0]}" if mark else None
            return next(
                (i for i, p in enumerate(LONG_FIRST) if p == group or item.nodeid.startswith(p)),
                len(LONG_FIRST),
            )

        items.sort(key=rank)  # stable: file order otherwise


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under `--dist loadgroup` a worker reports each grouped test as ``nodeid@group`` (every
    crash-safety test is in one); with a pytest and pytest-xdist pair where that no longer takes
    effect the groups would be spread over the workers silently, each building the fixture
    again: stop instead."""
    crash = [nodeid for nodeid in ids if nodeid.startswith("tests/code/test_crash_safety.py")]
    if node.config.getvalue("dist") == "loadgroup" and crash and "@" not in crash[0]:
        pytest.exit(
            f"--dist loadgroup has no effect with pytest {pytest.__version__} (see pyproject.toml)", 3
        )
