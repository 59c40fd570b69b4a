"""Benchmark: a backfill of `nightly` over N days (30 by default) through the real
scheduler (`scripts/airflow.sh`: LocalExecutor, SQLite) against the same steps called in
one process, side by side in one run, on two copies of one workspace (January validated, a
champion). Then K one-day nightly runs (2 by default), what a backfill with one run per day
(`airflow backfill create`) pays per day.

    .venv/bin/python bench/backfill_range.py [--days 30] [--daily-runs 2]   # ~8 min on 2 cores

- **one process**: a fresh interpreter imports the steps and runs ingest, validate, score and
  monitor over the range (`score_days`, `monitor_days`): the floor.
- **range run**: `nightly` triggered with `date` and `through` through the REST API; each
  task is one `mlops` process for the whole range. The per-task breakdown is Airflow's own
  task durations; "scheduling" is the rest of the run's wall (queueing, process start-up).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = ("ingest", "validate", "score", "monitor")

IN_PROCESS = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from pipelines.config import Settings, load_params
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.monitor import monitor_days
    from pipelines.steps.score import score_days
    from pipelines.steps.validate import validate
    settings = Settings()
    params = load_params(settings)
    days = parse_days(None, sys.argv[1])
    took = {}
    for name, call in (("ingest", lambda: ingest(settings, params, days)),
                       ("validate", lambda: validate(settings, params, days)),
                       ("score", lambda: score_days(settings, params, days)),
                       ("monitor", lambda: monitor_days(settings, params, days))):
        start = time.perf_counter()
        call()
        took[name] = time.perf_counter() - start
    took["wall"] = time.perf_counter() - t0
    print(json.dumps(took))
""")


def _seconds(start: str | None, end: str | None) -> float:
    if not (start and end):
        return float("nan")
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def _trigger(api, conf: dict[str, str]) -> dict:  # type: ignore[no-untyped-def]
    status, run = api.call("POST", "/api/v2/dags/nightly/dagRuns", {"logical_date": None, "conf": conf})
    assert status in (200, 201), run
    run = api.wait_run("nightly", run["dag_run_id"], timeout=3600)
    tis = api.get(f"/api/v2/dags/nightly/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in tis}
    if run["state"] != "success":
        sys.exit(f"nightly {conf} ended {run['state']}: {states}")
    took = {ti["task_id"]: float(ti["duration"] or 0) for ti in tis}
    took["wall"] = _seconds(run["start_date"], run["end_date"])
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--daily-runs", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(GX_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true")
    sys.path.insert(0, str(REPO))
    from pipelines.config import Settings, load_params
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.validate import validate
    from tests.conftest import clone_workspace, make_workspace, train_champion
    from tests.dags.airflow_server import running_airflow

    root = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    print(f"workspace: {root}")
    base = make_workspace(root / "base")
    settings = Settings(project_dir=base)
    january = parse_days(None, "2013-01-01:2013-01-31")
    ingest(settings, load_params(settings), january)
    validate(settings, load_params(settings), january)
    train_champion(base)
    first = dt.date(2013, 2, 1)
    last = first + dt.timedelta(days=args.days - 1)
    span = f"{first}:{last}"

    alone = clone_workspace(base, root / "one-process")
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(alone), "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, span], env=env, cwd=alone, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"one process failed: {proc.stderr[-3000:]}")
    floor = json.loads(proc.stdout.strip().splitlines()[-1])

    ws = clone_workspace(base, root / "scheduler")
    with running_airflow(ws, root / "airflow", MLOPS_NIGHTLY_CRON="none", MLOPS_RETRAIN_CRON="none") as (
        api,
        _,
    ):
        deadline = time.monotonic() + 300
        while api.call("GET", "/api/v2/dags/nightly")[0] != 200:  # parsed by the dag-processor
            assert time.monotonic() < deadline, "nightly was not parsed in 300s"
            time.sleep(3)
        assert (
            api.call("PATCH", "/api/v2/dags/nightly", {"is_paused": False})[0] == 200
        )  # retrain stays paused
        ranged = _trigger(api, {"date": str(first), "through": str(last)})
        daily = [
            _trigger(api, {"date": str(last + dt.timedelta(days=1 + i))}) for i in range(args.daily_runs)
        ]

    print(f"\nbackfill of nightly over {args.days} days ({span}), 2 cores")
    print(f"{'step':<12}{'one process':>14}{'range run':>12}{'ratio':>8}")
    for step in (*STEPS, "wall"):
        ratio = ranged[step] / floor[step] if floor[step] else float("nan")
        print(f"{step:<12}{floor[step]:>13.1f}s{ranged[step]:>11.1f}s{ratio:>7.2f}x")
    overhead = ranged["wall"] - sum(ranged[s] for s in STEPS)
    print(f"{'scheduling':<12}{'':>14}{overhead:>11.1f}s   (queueing, task start-up, signal_retraining)")
    per_day = sum(d["wall"] for d in daily) / max(len(daily), 1)
    print(f"\none run per day ({len(daily)} runs): {per_day:.1f} s per day -> {per_day * args.days:.0f} s "
          f"for {args.days} days ({per_day * args.days / ranged['wall']:.1f}x the range run)")  # fmt: skip
    print(
        f"range run: {ranged['wall'] / args.days:.2f} s per day; one process: {floor['wall'] / args.days:.2f} s per day"
    )
    print(f"ratio range run / one process: {ranged['wall'] / floor['wall']:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
