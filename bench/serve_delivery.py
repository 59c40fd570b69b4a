"""What a canary split and explanations cost plain requests: `mlops serve`, one run, side by side.

    make demo                                      # a workspace with a champion (once)
    .venv/bin/python bench/serve_delivery.py       # ~2 min; MLOPS_PROJECT_DIR picks another workspace

The champion of the workspace is copied twice into a throw-away MLflow registry (a temporary
folder: the workspace's own registry and audit log are not touched, so the aliases are set
directly there), as v1 (champion) and v2; one `mlops serve` process follows it. At the
sustained rate of bench/serve_load.py (open loop, single-flight requests carrying their
flight key), in interleaved rounds:

- plain: no canary, no explanations (what serve_load.py measures);
- canary: v2 on ``--share`` of the flights (the split, two models loaded);
- canary + explain: the same, with ``--explain-share`` of the requests asking ``"explain": true``.

Printed: p50 / p99 of the requests that do not ask for explanations in each, the p99 ratio
against plain (target <= 1.10), and p50 / p99 of the explain requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import BIN, REPO, free_port, instances, summary, wait_ready


def copy_registry(root: Path, folder: Path) -> str:
    """v1 and v2 of flight-delay in a new SQLite registry: both the workspace's champion."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    import mlflow
    from mlflow import MlflowClient

    source_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(source_uri)
    info = mlflow.models.get_model_info("models:/flight-delay@champion")
    model = mlflow.sklearn.load_model("models:/flight-delay@champion")
    local = mlflow.artifacts.download_artifacts("models:/flight-delay@champion", dst_path=str(folder / "src"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench")
    import pipelines
    from pipelines.model import SKOPS_TRUSTED_TYPES

    for _ in range(2):
        with mlflow.start_run():
            mlflow.sklearn.log_model(model, name="model", signature=info.signature, input_example=example,
                                     registered_model_name="flight-delay", skops_trusted_types=SKOPS_TRUSTED_TYPES,
                                     code_paths=[str(Path(pipelines.__file__).parent)])  # fmt: skip
    client = MlflowClient(uri, uri)
    client.set_registered_model_alias("flight-delay", "champion", "1")
    return uri


def set_canary(uri: str, share: float) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    if share > 0:
        client.set_registered_model_alias("flight-delay", "canary", "2")
    else:
        client.delete_registered_model_alias("flight-delay", "canary")
    client.set_registered_model_tag("flight-delay", "mlops.canary_share", str(share))


def wait_canary(port: int, share: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/ready")
        body = json.loads(conn.getresponse().read())
        if (body.get("canary") is not None) == (share > 0):
            return
        time.sleep(0.2)
    raise SystemExit(f"the server did not pick up canary share {share} in {timeout} s")


def run(port: int, bodies: list[bytes], explain_every: int, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop at ``rate``; request i asks for explanations when i % explain_every == 0."""
    total, workers = int(rate * seconds), 4
    plain: list[float] = []
    explained: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for i in range(offset, total, workers):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            explain = explain_every > 0 and i % explain_every == 0
            body = bodies[i % len(bodies)]
            if explain:
                body = body[:-1] + b', "explain": true}'
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}: {payload[:300]!r}")
            with lock:
                (explained if explain else plain).append(time.perf_counter() - due)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"plain": summary(plain, elapsed), "explain": summary(explained, elapsed) if explained else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="sustained requests/s (default 100)")
    parser.add_argument("--seconds", type=float, default=12.0, help="per measurement (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three cases")
    parser.add_argument("--share", type=float, default=0.1, help="the canary's share of the flights")
    parser.add_argument("--explain-share", type=float, default=0.1, help="share of requests with explain")
    args = parser.parse_args()

    root = Path(os.environ.get("MLOPS_PROJECT_DIR", REPO)).resolve()
    sys.path.insert(0, str(REPO))
    if not (root / "mlflow.db").exists() and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise SystemExit(f"no MLflow store in {root}: run `make demo` first (it trains a champion)")
    import pandas as pd

    from pipelines.serving.split import frame_keys

    folder = Path(tempfile.mkdtemp(prefix="mlops-bench-delivery-"))
    try:
        uri = copy_registry(root, folder)
        shutil.copy(root / "params.yaml", folder / "params.yaml")
        rows = instances(root, 500)
        newest = sorted((root / "data/validated").glob("*.parquet"))[-1]
        keys = frame_keys(pd.read_parquet(newest).head(500))
        bodies = [
            json.dumps({"instances": [r], "keys": [k]}).encode() for r, k in zip(rows, keys, strict=True)
        ]
        env = {**os.environ, "MLOPS_PROJECT_DIR": str(folder), "MLFLOW_TRACKING_URI": uri,
               "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}:{os.environ['PATH']}"}  # fmt: skip
        env.pop("MLOPS_SERVE_API_KEY", None)
        port = free_port()
        proc = subprocess.Popen([str(BIN / "mlops"), "serve", "--port", str(port), "--set", "serve.shadow=false",
                                 "--set", "serve.poll_interval_s=0.5"], env=env, cwd=folder,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_ready(port, "/ready", proc)
            every = round(1 / args.explain_share) if args.explain_share > 0 else 0
            cases = [("plain", 0.0, 0), ("canary", args.share, 0), ("canary + explain", args.share, every)]
            results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in cases}
            for round_ in range(args.rounds):
                for name, share, explain_every in cases:
                    set_canary(uri, share)
                    wait_canary(port, share)
                    warm = http.client.HTTPConnection("127.0.0.1", port)  # idle keep-alives are closed
                    for body in bodies[:50]:  # warm-up (both models, the explainer)
                        warm.request("POST", "/predict", body[:-1] + b', "explain": true}',
                                     {"Content-Type": "application/json"})  # fmt: skip
                        warm.getresponse().read()
                    results[name].append(run(port, bodies, explain_every, args.rate, args.seconds))
                    print(f"  round {round_ + 1} {name:18} plain p99 {results[name][-1]['plain']['p99_ms']:.2f} ms",
                          file=sys.stderr)  # fmt: skip
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    def med(name: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in results[name] if r[part])

    print(f"\ndelivery bench: champion of {root} as v1 and v2, one `mlops serve` worker, 1-flight requests "
          f"with keys, {args.rate:.0f} req/s open loop, {args.seconds:.0f} s x {args.rounds} interleaved rounds "
          f"(medians of the rounds)")  # fmt: skip
    print(
        f"{'case':20} {'plain p50':>10} {'plain p99':>10} {'p99 vs plain':>13} {'explain p50':>12} {'explain p99':>12}"
    )
    base = med("plain", "plain", "p99_ms")
    for name, _, every in cases:
        p50, p99 = med(name, "plain", "p50_ms"), med(name, "plain", "p99_ms")
        explain = (f"{med(name, 'explain', 'p50_ms'):>9.2f} ms {med(name, 'explain', 'p99_ms'):>9.2f} ms"
                   if every else f"{'-':>12} {'-':>12}")  # fmt: skip
        print(f"{name:20} {p50:>7.2f} ms {p99:>7.2f} ms {p99 / base:>12.2f}x {explain}")
    print(f"target: canary + explain adds <= 10% to the p99 of plain requests "
          f"({med('canary + explain', 'plain', 'p99_ms') / base:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
