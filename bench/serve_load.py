"""Load on loopback: `mlops serve` against `mlflow models serve`, same champion, one run.

    make demo                                  # a workspace with a champion (once)
    .venv/bin/python bench/serve_load.py       # ~2 min; MLOPS_PROJECT_DIR picks another workspace

Both servers run one uvicorn worker process on 127.0.0.1 and load the registry's
``champion``; requests are real flights of the newest validated day, featurized the way
training does. For each server and each request size (1 and 100 flights) it measures:

- sustained: a fixed rate (``--rate`` requests/s, open loop: each request is sent at its
  scheduled time, so a slow server cannot slow the load down) -> p50 / p99 latency;
- saturated: ``--connections`` keep-alive connections sending back to back -> requests/s.

Then the ratios, side by side. Targets (issue): p99 < 15 ms for single rows at a
sustained rate, and >= 3x the throughput of `mlflow models serve`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on :{port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server on :{port} not ready in {timeout} s")


def instances(root: Path, rows: int) -> list[dict[str, Any]]:
    import pandas as pd

    from pipelines.features import build_features

    newest = sorted((root / "data/validated").glob("*.parquet"))[-1]
    features = build_features(pd.read_parquet(newest)).head(rows)
    records = json.loads(features.to_json(orient="records"))
    return [{k: v for k, v in r.items()} for r in records]


class Target:
    def __init__(self, name: str, port: int, path: str, body: dict[int, bytes]) -> None:
        self.name, self.port, self.path, self.body = name, port, path, body

    def post(self, conn: http.client.HTTPConnection, size: int) -> float:
        started = time.perf_counter()
        conn.request("POST", self.path, self.body[size], {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise SystemExit(f"{self.name}: HTTP {response.status}: {payload[:300]!r}")
        return time.perf_counter() - started


def sustained(target: Target, size: int, rate: float, seconds: float, workers: int = 4) -> dict[str, float]:
    """Open loop: request i is due at start + i / rate; latency counts from when it was due."""
    total = int(rate * seconds)
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def run(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port)
        for i in range(offset, total, workers):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            target.post(conn, size)
            with lock:
                latencies.append(time.perf_counter() - due)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(latencies, time.perf_counter() - start)


def saturated(target: Target, size: int, seconds: float, connections: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port)
        mine = []
        while time.perf_counter() < stop:
            mine.append(target.post(conn, size))
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(latencies, time.perf_counter() - started)


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "rps": len(ordered) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="sustained requests/s (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=4, help="saturated: concurrent connections")
    args = parser.parse_args()

    root = Path(os.environ.get("MLOPS_PROJECT_DIR", REPO)).resolve()
    sys.path.insert(0, str(REPO))
    if not (root / "mlflow.db").exists() and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise SystemExit(f"no MLflow store in {root}: run `make demo` first (it trains a champion)")
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(root), "MLFLOW_TRACKING_URI": tracking,
           "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}:{os.environ['PATH']}"}  # fmt: skip
    env.pop("MLOPS_SERVE_API_KEY", None)
    rows = {1: instances(root, 1), 100: instances(root, 100)}
    ours_port, mlflow_port = free_port(), free_port()
    procs = [
        subprocess.Popen([str(BIN / "mlops"), "serve", "--port", str(ours_port),
                          "--set", "serve.shadow=false"], env=env, cwd=root,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/flight-delay@champion",
                          "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port), "-w", "1"],
                         env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        wait_ready(ours_port, "/ready", procs[0])
        wait_ready(mlflow_port, "/ping", procs[1])
        targets = [
            Target("mlops serve", ours_port, "/predict",
                   {n: json.dumps({"instances": r}).encode() for n, r in rows.items()}),
            Target("mlflow models serve", mlflow_port, "/invocations",
                   {n: json.dumps({"dataframe_records": r}).encode() for n, r in rows.items()}),
        ]  # fmt: skip
        results: dict[tuple[str, int, str], dict[str, float]] = {}
        for target in targets:
            conn = http.client.HTTPConnection("127.0.0.1", target.port)
            for _ in range(50):  # warm-up
                target.post(conn, 1)
                target.post(conn, 100)
            for size in (1, 100):
                results[(target.name, size, "sustained")] = sustained(target, size, args.rate, args.seconds)
                results[(target.name, size, "saturated")] = saturated(
                    target, size, args.seconds, args.connections
                )
        print(f"\nserving bench: champion of {root}, one worker each, 127.0.0.1, "
              f"sustained {args.rate:.0f} req/s, saturated {args.connections} connections, {args.seconds:.0f} s each")  # fmt: skip
        print(
            f"{'server':22} {'rows':>4}  {'sustained p50':>13} {'p99':>8}  {'saturated req/s':>15} {'p50':>8} {'p99':>8}"
        )
        for target in targets:
            for size in (1, 100):
                s, m = results[(target.name, size, "sustained")], results[(target.name, size, "saturated")]
                print(f"{target.name:22} {size:>4}  {s['p50_ms']:>10.2f} ms {s['p99_ms']:>5.2f} ms"
                      f"  {m['rps']:>15.0f} {m['p50_ms']:>5.2f} ms {m['p99_ms']:>5.2f} ms")  # fmt: skip
        for size in (1, 100):
            ours = results[("mlops serve", size, "saturated")]["rps"]
            theirs = results[("mlflow models serve", size, "saturated")]["rps"]
            p99 = results[("mlops serve", size, "sustained")]["p99_ms"]
            print(f"{size:>3} row(s): throughput ratio mlops/mlflow = {ours / theirs:.2f}x; "
                  f"mlops p99 at {args.rate:.0f} req/s = {p99:.2f} ms")  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
