"""The server's Prometheus metrics (one registry per server, served on /metrics)."""

import datetime as dt
import json
from pathlib import Path

from pipelines.serving.loaded import Loaded

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, model_name: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()

        self.registry = CollectorRegistry()
        r = self.registry
        # role: who answered (champion, canary, or split: both, one request's flights on each side)
        self.requests = Counter("mlops_serve_requests", "Predict requests by model version, role and outcome",
                                ["model_version", "role", "outcome"], registry=r)  # fmt: skip
        self.latency = Histogram("mlops_serve_request_latency_seconds", "Predict latency in the app",
                                 ["model_version", "role", "outcome"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.rows = Counter(
            "mlops_serve_predictions", "Flights scored", ["model_version", "role"], registry=r
        )
        self.model_info = Gauge("mlops_serve_model_info", "Loaded model versions (1 = loaded)",
                                ["model", "alias", "version"], registry=r)  # fmt: skip
        self.reloads = Counter(
            "mlops_serve_reloads", "Alias changes picked up", ["alias", "outcome"], registry=r
        )
        self.shadow = Counter("mlops_serve_shadow", "Shadow scoring by outcome", ["outcome"], registry=r)
        self.shadow_gap = Histogram("mlops_serve_shadow_gap", "|challenger - answer| per shadow-scored flight",
                                    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), registry=r)  # fmt: skip
        self.log_rows = Counter(
            "mlops_serve_log_rows", "Prediction-log rows by outcome", ["outcome"], registry=r
        )
        self.batch_rows = Histogram("mlops_serve_batch_rows", "Rows per model call (requests batched under load)",
                                    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000), registry=r)  # fmt: skip
        self.wanted_loaded = Gauge("mlops_serve_wanted_loaded",
                                   "1 when the loaded champion is the one the registry wants", registry=r)  # fmt: skip
        self.explained = Counter("mlops_serve_explained", "Flights explained (explain: true)", registry=r)
        # the newest `mlops monitor` summary of this workspace, as the poller last read it
        self.drift_share = Gauge("mlops_monitor_drift_share", "Share of drifted features on the newest monitored day",
                                 registry=r)  # fmt: skip
        self.breach = Gauge("mlops_monitor_breach", "1 when the newest monitored day breached", registry=r)
        self.monitored_day = Gauge("mlops_monitor_batch_date_seconds", "The newest monitored (replayed) day, "
                                   "as a Unix time", registry=r)  # fmt: skip
        self.live = Gauge("mlops_monitor_live", "Live metrics on the labelled day before the newest monitored one",
                          ["role", "metric"], registry=r)  # fmt: skip
        self.model_name = model_name
        self._monitor_seen: tuple[str, float] | None = None

    def monitor(self, reports: Path) -> None:
        """Set the monitor gauges from the newest reports/monitor/<day>/summary.json (once per
        new or rewritten file; a missing or unreadable one leaves them as they were)."""
        days = sorted(reports.glob("monitor/2*/summary.json"))
        if not days:
            return
        newest = days[-1]
        try:
            seen = (str(newest), newest.stat().st_mtime)
            if seen == self._monitor_seen:
                return
            summary = json.loads(newest.read_text())
        except (OSError, ValueError):
            return
        self._monitor_seen = seen
        self.drift_share.set(float(summary.get("drift_share") or 0.0))
        self.breach.set(1.0 if summary.get("breach") else 0.0)
        self.monitored_day.set(dt.datetime.fromisoformat(summary["date"]).replace(tzinfo=dt.UTC).timestamp())
        live = summary.get("live") or {}
        self.live.clear()
        for role, values in (live.get("by_role") or ({"champion": live} if live else {})).items():
            for metric in ("roc_auc", "brier", "late_rate"):
                if values.get(metric) is not None:
                    self.live.labels(role, metric).set(float(values[metric]))

    def loaded(self, alias: str, old: Loaded | None, new: Loaded | None) -> None:
        if old is not None:
            self.model_info.remove(self.model_name, alias, old.version)
        if new is not None:
            self.model_info.labels(self.model_name, alias, new.version).set(1)
            role = {"champion": "champion", "canary": "canary"}.get(alias)
            if (
                role is not None
            ):  # its series exist from 0: increase() over a window counts its first requests
                for outcome in ("ok", "error"):
                    self.requests.labels(new.version, role, outcome)
                    self.latency.labels(new.version, role, outcome)
                self.rows.labels(new.version, role)
