"""Benchmark: how long each DAG file takes to parse (what the dag-processor pays on every
refresh), in a fresh interpreter, after Airflow's own SDK import (paid once per process).

    .venv/bin/python bench/dag_parse.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"
PROBE = """
import json, runpy, statistics, sys, time
t0 = time.perf_counter(); import airflow.sdk; sdk = time.perf_counter() - t0
sys.path.insert(0, sys.argv[1])
out = {"airflow.sdk import": sdk}
for name in sys.argv[2:]:
    times = []
    for _ in range(5):
        t = time.perf_counter(); runpy.run_path(f"{sys.argv[1]}/{name}.py"); times.append(time.perf_counter() - t)
    out[name] = {"first": times[0], "median_of_5": statistics.median(times)}
heavy = [m for m in ("sklearn", "mlflow", "great_expectations", "evidently", "pandas", "dvc") if m in sys.modules]
out["heavy modules imported"] = heavy
print(json.dumps(out))
"""


def main() -> None:
    names = sorted(p.stem for p in DAGS.glob("*.py") if p.stem != "step_operator")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(DAGS), *names], capture_output=True, text=True, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"airflow.sdk import (once per process): {result['airflow.sdk import'] * 1000:.0f} ms")
    print(f"{'DAG file':<14} {'first parse ms':>15} {'median of 5 ms':>15}")
    for name in names:
        r = result[name]
        print(f"{name + '.py':<14} {r['first'] * 1000:>15.1f} {r['median_of_5'] * 1000:>15.1f}")
    print(f"heavy modules imported while parsing: {result['heavy modules imported'] or 'none'}")


if __name__ == "__main__":
    main()
