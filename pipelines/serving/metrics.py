"""The server's Prometheus metrics (one registry per server, served on /metrics)."""

from pipelines.serving.loaded import Loaded

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, model_name: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mlops_serve_requests", "Predict requests by model version and outcome",
                                ["model_version", "outcome"], registry=r)  # fmt: skip
        self.latency = Histogram("mlops_serve_request_latency_seconds", "Predict latency in the app",
                                 ["model_version", "outcome"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.rows = Counter(
            "mlops_serve_predictions", "Flights scored", ["model_version", "role"], registry=r
        )
        self.model_info = Gauge("mlops_serve_model_info", "Loaded model versions (1 = loaded)",
                                ["model", "alias", "version"], registry=r)  # fmt: skip
        self.reloads = Counter(
            "mlops_serve_reloads", "Alias changes picked up", ["alias", "outcome"], registry=r
        )
        self.shadow = Counter("mlops_serve_shadow", "Shadow scoring by outcome", ["outcome"], registry=r)
        self.log_rows = Counter(
            "mlops_serve_log_rows", "Prediction-log rows by outcome", ["outcome"], registry=r
        )
        self.batch_rows = Histogram("mlops_serve_batch_rows", "Rows per model call (requests batched under load)",
                                    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000), registry=r)  # fmt: skip
        self.wanted_loaded = Gauge("mlops_serve_wanted_loaded",
                                   "1 when the loaded champion is the one the registry wants", registry=r)  # fmt: skip
        self.explained = Counter("mlops_serve_explained", "Flights explained (explain: true)", registry=r)
        self.model_name = model_name

    def loaded(self, alias: str, old: Loaded | None, new: Loaded | None) -> None:
        if old is not None:
            self.model_info.remove(self.model_name, alias, old.version)
        if new is not None:
            self.model_info.labels(self.model_name, alias, new.version).set(1)
