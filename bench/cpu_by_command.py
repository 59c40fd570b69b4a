"""Where a run's CPU goes, by command: reads /proc once a second and keeps, for every
process it sees, its command line and the CPU time it used while recorded (from its first
sample if it was already running); then sums them by command (`mlops <step>`, the infra
check's child, `dvc <cmd>`, Airflow's components, MLflow's server and its job runner,
Chromium, ...).

    .venv/bin/python bench/cpu_by_command.py record cpu.json --seconds 3000 &   # beside a run
    CI=true bash .ci/run                                                         # the run
    .venv/bin/python bench/cpu_by_command.py report cpu.json

A process that lives under a second is missed, and one is counted up to its last sample:
the sums are a lower bound (it saw 90% of a `make test` run's CPU, against `vmstat`). A
pytest-xdist worker is one process for the whole run: the steps the tests call in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path

PATTERN = re.compile(
    r"(mlops [\w-]+|pipelines\.\w+(?: \w+)?|airflow [\w-]+|dvc \w+|huey\S*|mlflow\.server\.jobs\S*"
    r"|uvicorn|mlflow server|mlflow models|moto_server|chromium|celery\S*|podman"
    r"|prometheus|gunicorn)"
)


def record(out: Path, seconds: float) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[str, str], list[object]] = {}  # [command, CPU at its first sample or 0, CPU last seen]
    end = time.monotonic() + seconds
    last_write = 0.0
    first = True
    while time.monotonic() < end:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
                key = (pid, fields[19])  # pid + start time: a reused pid is another process
                if key in seen:
                    seen[key][2] = cpu
                else:  # what ran before the recording counts from its first sample
                    cmd = (
                        Path(f"/proc/{pid}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                    seen[key] = [cmd[:300], cpu if first else 0.0, cpu]
            except (OSError, ValueError, IndexError):  # the process ended meanwhile
                continue
        first = False
        if time.monotonic() - last_write > 30:
            out.write_text(json.dumps([v for v in seen.values()]))
            last_write = time.monotonic()
        time.sleep(1)
    out.write_text(json.dumps([v for v in seen.values()]))


def report(path: Path, top: int) -> None:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for cmd, before, last in json.loads(path.read_text()):
        cpu = last - before
        match = PATTERN.search(cmd)
        if "import sys;exec(eval(sys.stdin" in cmd:  # execnet's bootstrap: before its title is set
            key = "pytest-xdist worker"
        else:
            key = match.group(1) if match else (cmd.strip()[:60] or "(no command line)")
        totals[key][0] += 1
        totals[key][1] += cpu
    whole = sum(cpu for _, cpu in totals.values())
    print(f"{'CPU s':>8} {'share':>6} {'procs':>6}  command   ({whole:.0f} s of CPU seen)")
    for key, (count, cpu) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{cpu:8.1f} {cpu / whole:6.1%} {count:6d}  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--seconds", type=float, default=3600)
    rep = sub.add_parser("report")
    rep.add_argument("path", type=Path)
    rep.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    if args.what == "record":
        record(args.out, args.seconds)
    else:
        report(args.path, args.top)


if __name__ == "__main__":
    main()
