"""Benchmark: `mlops validate` over a range of days in one command, against the same files
checked by bare pandas scripts (the whole contract; eight of its rules), side by side in one run.

    .venv/bin/python bench/validate_year.py             # the whole of 2013 (~8 min on 2 cores)
    .venv/bin/python bench/validate_year.py --days 30   # a quicker look

Both read the same landed batches (`mlops ingest` first, not timed in the ratio). The
baseline of the goal is the whole contract in plain pandas (every rule, the bounds learned
day by day); the older eight-rule script is printed beside it. Prints wall
time, per-day cost and peak memory of each, and the ratio pipeline / bare; and the same
range validated with every day in its own GX run (`validate.block_days=1`, the path of a
nightly run), with whether both reach the same data version. The pipeline does
more than the baseline (23 rules through GX, learned bounds, the DVC commit, a Data Docs
page per day): the ratio is what that costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE = textwrap.dedent("""
    import glob, sys, time
    import pandas as pd
    bad = 0
    files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
    for f in files:
        df = pd.read_parquet(f)
        checks = [
            df[["year", "month", "day", "carrier", "flight", "origin", "dest"]].notna().all().all(),
            df["month"].between(1, 12).all() and df["day"].between(1, 31).all(),
            df["sched_dep_time"].between(0, 2359).all() and df["sched_arr_time"].between(0, 2359).all(),
            (df["sched_dep_time"] % 100 < 60).all(),
            df["distance"].between(1, 5000).all(),
            (df["origin"] != df["dest"]).all(),
            df["arr_delay"].dropna().abs().le(1500).all() and df["dep_delay"].dropna().abs().le(1500).all(),
            500 <= len(df) <= 5000,
        ]
        bad += not all(checks)
    print(len(files), "files,", bad, "failing")
""")

# The whole contract in plain pandas: every rule of pipelines.contract (schema, rows, batch
# statistics against the history learned day by day, as validate does), with the contract's
# own pandas code for the derived rules and statistics, and the rules the GX suite checks
# written as pandas expressions. No GX, no DVC commit, no reports: what the rules cost.
BARE_CONTRACT = textwrap.dedent("""
    import glob, re, sys
    import datetime as dt
    import pandas as pd
    import yaml
    from pipelines import contract, schema
    from pipelines.expectations import _RANGES, _WEATHER_RANGES

    cfg = yaml.safe_load(open(sys.argv[2]))
    late_min, val = cfg["data"]["late_threshold_min"], cfg["validate"]
    carriers, origins = schema.known_carriers(), set(schema.NYC_ORIGINS)
    time_hour = re.compile(r"^\\d{4}-\\d\\d-\\d\\dT\\d\\d:00:00Z$")
    history, bad = [], 0
    files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
    for f in files:
        day = dt.date.fromisoformat(f.rsplit("/", 1)[1][:10])
        df = pd.read_parquet(f)
        if contract.schema_failures(df):
            bad += 1
            continue
        d = contract.derive(df, day, late_min)
        limits = contract.bounds(df, history, val)
        ok = all(d[c].all() for c in d.columns if c.startswith(contract.RULE_PREFIX) and c != contract.LATE)
        ok &= bool(df[list(schema.REQUIRED_COLUMNS)].notna().all().all())
        ok &= not df.duplicated(list(schema.FLIGHT_KEY)).any()
        ok &= bool(df["time_hour"].dropna().map(lambda v: bool(time_hour.match(v))).all())
        for column, (low, high) in _RANGES.items():
            ok &= bool(df[column].dropna().between(low, high).all())
        for column in ("dep_delay", "arr_delay"):
            ok &= bool(df[column].dropna().abs().le(val["max_abs_delay_min"]).all())
        for column, (low, high) in _WEATHER_RANGES.items():
            values = df[column].dropna()
            ok &= not len(values) or values.between(low, high).mean() >= 0.99
        ok &= bool(df["origin"].isin(origins).all() and df["carrier"].isin(carriers).all())
        ok &= limits.rows_min <= len(df) <= limits.rows_max
        ok &= all(1 - df[c].isna().mean() >= max(0.0, 1 - b) for c, b in limits.null_share_max.items())
        ok &= d[contract.LATE].mean() <= limits.late_rate_max
        ok &= all(shift <= limits.mix_max for shift in limits.mix_shift.values())
        if ok:
            history = [*history, contract.statistics(df, late_min)][-int(val["history_days"]):]
        bad += not ok
    print(len(files), "files,", bad, "failing")
""")


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Run under GNU time: wall seconds, peak RSS (MiB) of the largest process, last stdout line."""
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{argv[:3]} failed: {proc.stderr[-2000:]}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return (
        float(wall),
        int(rss_kb) / 1024,
        proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--no-daily", action="store_true", help="skip the run with validate.block_days=1")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_workspace

    root = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    ws = make_workspace(root / "ws")
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(ws)}
    env.pop("MLFLOW_TRACKING_URI", None)
    last = dt.date(2013, 1, 1) + dt.timedelta(days=args.days - 1)
    days = f"2013-01-01:{last}"
    wall, _, _ = timed([str(BIN / "mlops"), "ingest", "--dates", days], env, ws)
    print(f"ingest {args.days} days: {wall:.1f} s (not part of the ratio)")
    # the bare baseline reads the same landed files (a copy: validate consumes them)
    landed = root / "landed"
    shutil.copytree(ws / "data/incoming", landed)
    bare_wall, bare_mem, bare_out = timed([sys.executable, "-c", BARE, str(landed)], env, ws)
    contract_env = {**env, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", BARE_CONTRACT, str(landed), str(ws / "params.yaml")]
    rules_wall, rules_mem, rules_out = timed(argv, contract_env, ws)
    pipe_wall, pipe_mem, _ = timed([str(BIN / "mlops"), "validate", "--dates", days], env, ws)
    validated = len(list((ws / "data/validated").glob("*.parquet")))
    rows = [("mlops validate (one run)", pipe_wall, pipe_mem)]
    if not args.no_daily:  # the same files, every day in its own GX run (the nightly path)
        daily = make_workspace(root / "ws-daily")
        shutil.copytree(landed, daily / "data/incoming", dirs_exist_ok=True)
        daily_env = {**env, "MLOPS_PROJECT_DIR": str(daily)}
        argv = [str(BIN / "mlops"), "validate", "--dates", days, "--set", "validate.block_days=1"]
        daily_wall, daily_mem, _ = timed(argv, daily_env, daily)
        rows.append(("  the same, block_days=1", daily_wall, daily_mem))
        same = (daily / "data/validated.dvc").read_text() == (ws / "data/validated.dvc").read_text()
    rows.append(("bare pandas, every rule", rules_wall, rules_mem))
    rows.append(("bare pandas, 8 rules", bare_wall, bare_mem))
    n = args.days
    print(f"{'':28}{'wall s':>9}{'per day ms':>12}{'peak MiB':>10}")
    for name, wall, mem in rows:
        print(f"{name:28}{wall:9.1f}{wall / n * 1000:12.0f}{mem:10.0f}")
    print(
        f"ratio pipeline / bare (every rule): {pipe_wall / rules_wall:.1f}x wall  ({validated} days validated; "
        f"bare: {rules_out})"
    )
    print(f"ratio pipeline / bare (8 rules): {pipe_wall / bare_wall:.1f}x wall  (bare: {bare_out})")
    if not args.no_daily:
        print(f"blocks vs every day alone: {daily_wall / pipe_wall:.1f}x faster; same data version: {same}")
    print("goal (issue 14): <= 3x the baseline and <= 120 s for the year")
    if args.keep:
        print("workspace:", ws)
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
