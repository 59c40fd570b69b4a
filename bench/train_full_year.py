"""Benchmark: train on the full 2013 year (~336k flights) through the pipeline, and the
same fit + evaluate as a bare scikit-learn script, side by side in one run.

    .venv/bin/python bench/train_full_year.py            # full year (~3 min on 2 cores)
    .venv/bin/python bench/train_full_year.py --days 60   # a quicker look

Prints wall time and peak memory (max RSS) of: landing the days (ingest + GX validation),
each DVC stage as its own process (featurize, train with MLflow logging, evaluate with the
gate), the whole `dvc repro`, and the bare script; then the ratio pipeline / bare. Last,
the model is promoted and `mlops evaluate` timed again against it as the champion (what a
nightly retrain's gate does; not in the ratio: the bare script has no champion).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
    import glob, json, sys, time
    t0 = time.perf_counter()
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
    holdout_days = int(sys.argv[2])
    frames = [pd.read_parquet(f).assign(d=f[-18:-8]) for f in files]
    df = pd.concat(frames, ignore_index=True)
    cat = ["carrier", "origin", "dest"]
    d = pd.to_datetime(df[["year", "month", "day"]])
    X = df[cat].copy()
    X["month"] = df["month"].astype(float); X["day_of_week"] = d.dt.dayofweek.astype(float)
    X["sched_dep_hour"] = (df["sched_dep_time"] // 100).astype(float)
    X["sched_dep_minute_of_day"] = ((df["sched_dep_time"] // 100) * 60 + df["sched_dep_time"] % 100).astype(float)
    X["sched_arr_hour"] = (df["sched_arr_time"] // 100).astype(float)
    X["distance"] = df["distance"].astype(float)
    weather = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
    for c in weather:
        X[c] = df[c].astype(float)
    X.loc[~X["wind_speed"].between(0, 150), "wind_speed"] = float("nan")
    y = (df["arr_delay"].isna() | (df["arr_delay"] > 15)).astype(int)
    cut = sorted(df["d"].unique())[-holdout_days]
    tr, ho = df["d"] < cut, df["d"] >= cut
    cols = cat + [c for c in X.columns if c not in cat]
    mono = {"precip": 1, "wind_speed": 1, "wind_gust": 1, "visib": -1}
    model = Pipeline([
        ("encode", ColumnTransformer([("c", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
            encoded_missing_value=-1, dtype=float), cat), ("n", "passthrough", cols[3:])], verbose_feature_names_out=False)),
        ("classify", HistGradientBoostingClassifier(learning_rate=0.08, max_iter=300, max_leaf_nodes=31,
            min_samples_leaf=40, l2_regularization=1.0, early_stopping=True, random_state=13,
            categorical_features=[c in cat for c in cols], monotonic_cst=[mono.get(c, 0) for c in cols])),
    ])
    model.fit(X.loc[tr, cols], y[tr])
    p = model.predict_proba(X.loc[ho, cols])[:, 1]
    print(json.dumps({"rows": int(len(df)), "train_rows": int(tr.sum()), "roc_auc": roc_auc_score(y[ho], p),
                      "brier": brier_score_loss(y[ho], p), "seconds_in_process": time.perf_counter() - t0}))
""")


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd`` under GNU time: (wall seconds, peak RSS MiB of the largest process, stdout)."""
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    wall, rss_kb = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss_kb) / 1024, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365, help="days of 2013 to use (from 1 January)")
    parser.add_argument("--holdout-days", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-train-")) / "ws"
    root.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    params = (REPO / "params.yaml").read_text()
    params = (
        params.replace("window_days: 30 ", f"window_days: {args.days} ")
        .replace("holdout_days: 5 ", f"holdout_days: {args.holdout_days} ")
        .replace("min_window_days: 14 ", f"min_window_days: {max(14, args.holdout_days + 1)} ")
    )
    (root / "params.yaml").write_text(params)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLOPS_PROJECT_DIR": str(root),
           "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True)
    last = dt.date(2013, 1, 1) + dt.timedelta(days=args.days - 1)
    dates = f"2013-01-01:{last}"
    print(
        f"benchmark workspace {root}; {args.days} days ({dates}), holdout {args.holdout_days} days",
        flush=True,
    )

    rows = []
    w, m, _ = timed([str(BIN / "mlops"), "ingest", "--dates", dates], root, env)
    rows.append(("ingest (package -> batches)", w, m))
    w, m, _ = timed([str(BIN / "mlops"), "validate", "--dates", dates], root, env)
    rows.append(("validate (GX + dvc add)", w, m))
    print(f"landed {args.days} days: ingest {rows[0][1]:.1f}s, validate {rows[1][1]:.1f}s "
          f"({1000 * rows[1][1] / args.days:.0f} ms/day)", flush=True)  # fmt: skip

    stage_rows = []
    for stage in ("featurize", "train", "evaluate"):
        extra = ["--refusal-exit-code", "0"] if stage == "evaluate" else []
        w, m, _ = timed([str(BIN / "mlops"), stage, *extra], root, env)
        stage_rows.append((f"  mlops {stage}", w, m))
    trained = json.loads((root / "reports/train.json").read_text())
    gate = json.loads((root / "reports/gate.json").read_text())
    # the same three stages through DVC (forced, so all of them run again)
    w_repro, m_repro, _ = timed([str(BIN / "dvc"), "repro", "--force"], root, env)
    w_bare, m_bare, out = timed(
        [sys.executable, "-c", BARE, str(root / "data/window"), str(args.holdout_days)], root, env
    )
    bare = json.loads(out)
    # a nightly retrain has a champion to compare with: the model promoted, evaluated again
    timed([str(BIN / "mlops"), "promote"], root, env)
    w_champ, m_champ, _ = timed([str(BIN / "mlops"), "evaluate", "--refusal-exit-code", "0"], root, env)

    pipeline_steps = sum(r[1] for r in stage_rows)
    print()
    print(f"{'what':<34} {'wall s':>8} {'peak MiB':>9}")
    for name, w, m in [
        *rows,
        ("training core, step by step:", pipeline_steps, max(r[2] for r in stage_rows)),
        *stage_rows,
    ]:
        print(f"{name:<34} {w:>8.1f} {m:>9.0f}")
    print(f"{'dvc repro --force (3 stages)':<34} {w_repro:>8.1f} {m_repro:>9.0f}")
    print(f"{'bare script (fit + evaluate)':<34} {w_bare:>8.1f} {m_bare:>9.0f}")
    print(f"{'  mlops evaluate, with a champion':<34} {w_champ:>8.1f} {m_champ:>9.0f}")
    print()
    print(
        f"rows {bare['rows']:,} (train {trained['train_rows']:,}); model fit inside train: {trained['fit_seconds']}s"
    )
    print(f"holdout roc_auc: pipeline {gate['challenger']['roc_auc']:.4f} vs bare {bare['roc_auc']:.4f}; "
          f"brier {gate['challenger']['brier']:.4f} vs {bare['brier']:.4f}")  # fmt: skip
    print(
        f"ratio wall  pipeline steps / bare = {pipeline_steps / w_bare:.2f}x; dvc repro / bare = {w_repro / w_bare:.2f}x"
    )
    print(f"ratio peak memory pipeline / bare = {max(r[2] for r in stage_rows) / m_bare:.2f}x")
    if not args.keep:
        shutil.rmtree(root.parent)


if __name__ == "__main__":
    main()
