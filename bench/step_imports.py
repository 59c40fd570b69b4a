"""Benchmark: what each step pays in imports before it does any work (a nightly task is a
fresh process). For every `mlops` step: the wall time of `python -c "import <module>"` in a
fresh interpreter, and the heaviest top-level packages it pulls in (`python -X importtime`).

    .venv/bin/python bench/step_imports.py

A figure, not a budget asserted in a test: the machine's load moves it by tens of percent.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict

STEPS = {
    "cli (mlops --help)": "pipelines.cli",
    "ingest": "pipelines.steps.ingest",
    "validate": "pipelines.steps.validate",
    "featurize": "pipelines.steps.featurize",
    "train": "pipelines.steps.train",
    "evaluate": "pipelines.steps.evaluate",
    "promote": "pipelines.steps.promote",
    "score": "pipelines.steps.score",
    "monitor": "pipelines.steps.monitor",
}
# what a step imports when it runs (its function bodies import lazily)
RUNS = {
    "validate": "import great_expectations, pandas",
    "train": "import mlflow, sklearn.ensemble, pandas",
    "evaluate": "import mlflow, sklearn.metrics, pandas",
    "score": "import mlflow.pyfunc, pandas",
    "monitor": "import evidently, mlflow, pandas",
}


def wall(code: str) -> float:
    best = float("inf")
    for _ in range(3):  # the best of three: the file cache warm, the least noise
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def heaviest(code: str, top: int = 4) -> str:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    total: dict[str, int] = defaultdict(int)
    for line in proc.stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if found and len(found.group(2)) == 1:  # top-level imports only (cumulative)
            total[found.group(3).split(".")[0]] += int(found.group(1))
    ranked = sorted(total.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {us / 1e6:.2f}s" for name, us in ranked)


def main() -> None:
    base = wall("pass")
    print(f"interpreter start-up: {base:.2f} s (subtracted below)")
    print(f"{'step':22}{'module import s':>16}{'+ what it runs s':>18}  heaviest (module import + run)")
    for step, module in STEPS.items():
        code = f"import {module}"
        module_s = wall(code) - base
        run_code = f"{code}; {RUNS[step]}" if step in RUNS else code
        run_s = wall(run_code) - base if step in RUNS else module_s
        print(f"{step:22}{module_s:16.2f}{run_s:18.2f}  {heaviest(run_code)}")


if __name__ == "__main__":
    main()
