"""Benchmark: `mlops monitor` for one day against a bare Evidently report on the same two
frames (the champion's reference sample and the scored week), side by side in one run; then
the same with 10x the current rows (a 70-day monitoring window).

    .venv/bin/python bench/monitor_day.py      # ~7 min on 2 cores (most of it preparing 80 scored days)
    .venv/bin/python bench/monitor_day.py --workspace DIR   # again in a workspace kept with --keep

Each figure is the median of ``--repeat`` runs (3), the variants alternated. `mlops monitor`
is timed as it runs (MLflow imported in a helper process while the step imports Evidently,
where a second core is free: see pipelines/helper.py) and with everything in one process
(``MLOPS_TRACKING_HELPER=0``, what a one-core container pays). `mlops` ends without the
interpreter's teardown (pipelines/fastexit.py); the bare script is timed as written and
ending in ``os._exit`` too, to tell that part from the rest.

Both are timed as fresh processes (what a nightly task pays): the bare script imports
pandas and Evidently, reads the two Parquet files, runs `DataDriftPreset` with the same
settings and writes the HTML; `mlops monitor` also loads the champion from the registry,
computes live performance, writes the summary and logs both to MLflow.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
    cfg = json.loads(sys.argv[3])
    num = [c for c in cur.columns if c not in ("carrier", "origin", "dest")]
    definition = DataDefinition(numerical_columns=num, categorical_columns=["carrier", "origin", "dest"])
    preset = DataDriftPreset(columns=list(cur.columns), drift_share=cfg["drift_share"],
                             num_method=cfg["num_method"], num_threshold=cfg["num_threshold"],
                             cat_method=cfg["cat_method"], cat_threshold=cfg["cat_threshold"])
    snapshot = Report([preset]).run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                                    reference_data=Dataset.from_pandas(ref, data_definition=definition))
    snapshot.save_html(sys.argv[4])
    print(len(cur), "current rows")
""")


# `mlops` ends without the interpreter's teardown (pipelines/fastexit.py): the bare script is
# also timed ending so, to show what of the difference that is
FAST_END = "\nimport os\nsys.stdout.flush()\nos._exit(0)\n"


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%e", *argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{argv[:3]} failed: {proc.stderr[-2000:]}")
    return float(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the workspace (to profile `mlops monitor` in it)"
    )
    parser.add_argument("--workspace", type=Path, help="a workspace kept by an earlier --keep run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (the median is shown)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_workspace, train_champion

    if args.workspace:
        ws = args.workspace.resolve()
        root = ws.parent
        args.keep = True
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
        ws = make_workspace(root / "ws")
    os.environ["MLOPS_PROJECT_DIR"] = str(ws)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from pipelines.config import Settings, load_params
    from pipelines.layout import Layout
    from pipelines.registry import CHAMPION, Registry
    from pipelines.source import parse_days
    from pipelines.steps.ingest import ingest
    from pipelines.steps.monitor import current_window, reference_sample
    from pipelines.steps.score import score
    from pipelines.steps.validate import validate

    settings = Settings(project_dir=ws)
    params = load_params(settings)
    days = parse_days(None, "2013-01-01:2013-03-31")
    if not args.workspace:
        ingest(settings, params, days)
        validate(settings, params, days)
        train_champion(ws)  # on the last 30 days; what it is trained on does not change the cost
        for day in days[10:]:
            score(settings, params, day)
    layout = Layout.of(settings, params.get("validate.store"))
    registry = Registry(settings, params.get("promote.model_name"))
    champion = registry.alias(CHAMPION)
    assert champion is not None
    reference = reference_sample(settings, registry, champion.run_id, champion.version)
    cfg = params.section("monitor")
    import json

    env = {**os.environ}
    print(f"median of {args.repeat} runs each{'':8}{'rows':>8}{'wall s':>9}")
    results = {}
    for window in (7, 70):
        day = dt.date(2013, 3, 31)
        current = current_window(layout, day, window, settings)
        ref_path, cur_path = root / "ref.parquet", root / f"cur{window}.parquet"
        reference[current.columns].to_parquet(ref_path)
        current.to_parquet(cur_path)
        argv = [str(BIN / "mlops"), "monitor", "--date", str(day), "--set", f"monitor.window_days={window}"]
        variants = {
            "bare": ([sys.executable, "-c", BARE, str(ref_path), str(cur_path), json.dumps(cfg),
                      str(root / f"bare{window}.html")], env),
            "bare_fast": ([sys.executable, "-c", BARE + FAST_END, str(ref_path), str(cur_path), json.dumps(cfg),
                           str(root / f"bare{window}.html")], env),
            "pipe": (argv, {**env, "MLOPS_TRACKING_HELPER": "auto"}),
            "one": (argv, {**env, "MLOPS_TRACKING_HELPER": "0"}),
        }  # fmt: skip
        walls: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeat):
            for name, (command, variant_env) in variants.items():
                walls[name].append(timed(command, variant_env, ws))
        pipe, one, bare, bare_fast = (
            statistics.median(walls[k]) for k in ("pipe", "one", "bare", "bare_fast")
        )
        results[window] = (pipe, bare)
        print(f"{'mlops monitor, window ' + str(window) + ' days':34}{len(current):8}{pipe:9.1f}")
        print(f"{'  the same, in one process':34}{len(current):8}{one:9.1f}")
        print(f"{'bare Evidently, same frames':34}{len(current):8}{bare:9.1f}")
        print(f"{'  the same, ending in os._exit':34}{len(current):8}{bare_fast:9.1f}")
        print(f"  ratio pipeline / bare: {pipe / bare:.2f}x (in one process {one / bare:.2f}x); "
              f"against the bare script without teardown {pipe / bare_fast:.2f}x ({one / bare_fast:.2f}x)")  # fmt: skip
    print(f"10x the rows: mlops monitor {results[70][0] / results[7][0]:.2f}x the time "
          f"(bare {results[70][1] / results[7][1]:.2f}x)")  # fmt: skip
    print("goal (issue 14): <= 1.2x the bare report; 10x the rows <= 3x the time")
    if args.keep:
        print(f"workspace kept: {ws} (MLOPS_PROJECT_DIR={ws} mlops monitor --date 2013-03-31)")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
