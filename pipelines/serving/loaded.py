"""A registered version loaded for serving: the model, its request schema and a fast path
that gives the pipeline's answers without its per-call overhead."""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.registry import Registry
from pipelines.serving.request import request_model

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """One registered version, ready to predict, with the request schema of its signature."""

    version: str
    run_id: str
    model: Any
    columns: list[str]
    numeric: list[str]
    request_model: Any  # a pydantic model: {"instances": [Flight, ...]}
    fast: Any = None  # the same computation without joblib's dispatch (see direct_predictor)
    explainer: Any = None  # per-flight contributions from the trees (pipelines.serving.explain)

    def explain(self, frame: Any, records: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
        return list(self.explainer.explain(self.fast.encode(frame), records, top))

    def frame(self, records: list[dict[str, Any]]) -> Any:
        """The model's input frame, built column by column (None -> NaN in number columns)."""
        import numpy as np
        import pandas as pd

        numeric = set(self.numeric)
        data = {
            c: np.array([r[c] for r in records], dtype="float64" if c in numeric else object)
            for c in self.columns
        }
        return pd.DataFrame(data, columns=self.columns)

    def predict(self, frame: Any) -> Any:
        if self.fast is not None:
            return self.fast(frame)
        return self.model.predict_proba(frame)[:, 1]


def direct_predictor(model: Any) -> Any:
    """For a Pipeline([ColumnTransformer, classifier]): P(late) from the same fitted
    transformers and classifier, without the per-call overhead that dominates a one-row
    prediction (ColumnTransformer's joblib dispatch, ~0.7 ms; OrdinalEncoder's input checks,
    ~1.7 ms): an OrdinalEncoder's fitted categories become dict lookups (unknown and missing
    values get its encoded values), passthrough columns are taken as they are, and the
    classifier itself predicts. None when the pipeline has another shape (the pipeline is
    then called). load_version uses it only if it gives the pipeline's answers on the
    model's input example; tests compare the two on real days."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    if not (isinstance(model, Pipeline) and len(model.steps) == 2):
        return None
    encode, classify = model.steps[0][1], model.steps[1][1]
    if not isinstance(encode, ColumnTransformer) or encode.sparse_output_:
        return None
    parts = []
    for _, transformer, columns in encode.transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        if not (transformer == "passthrough" or hasattr(transformer, "transform")):
            return None
        parts.append((transformer, list(encode.feature_names_in_[columns]) if not isinstance(columns[0], str)
                      else list(columns)))  # fmt: skip

    def block(transformer: Any, columns: list[str], frame: Any) -> Any:
        if transformer == "passthrough":
            return frame[columns].to_numpy(dtype="float64")
        codes = ordinal_codes.get(id(transformer))
        if codes is None:
            return np.asarray(transformer.transform(frame[columns]), dtype="float64")
        out = np.empty((len(frame), len(columns)), dtype="float64")
        for j, (column, (lookup, unknown, missing)) in enumerate(zip(columns, codes, strict=True)):
            out[:, j] = [missing if v is None or v != v else lookup.get(v, unknown) for v in frame[column]]
        return out

    # OrdinalEncoder(handle_unknown="use_encoded_value"): its fitted categories as lookups
    ordinal_codes: dict[int, list[tuple[dict[Any, float], float, float]]] = {}
    for transformer, _ in parts:
        if (
            isinstance(transformer, OrdinalEncoder) and transformer.handle_unknown == "use_encoded_value"
            and getattr(transformer, "infrequent_categories_", None) is None
            and not any(_has_nan(c) for c in transformer.categories_)
        ):  # fmt: skip
            ordinal_codes[id(transformer)] = [
                ({v: float(i) for i, v in enumerate(categories)}, float(transformer.unknown_value),
                 float(transformer.encoded_missing_value))
                for categories in transformer.categories_
            ]  # fmt: skip

    def encoded(frame: Any) -> Any:
        return np.hstack([block(transformer, columns, frame) for transformer, columns in parts])

    return Direct(encoded, [c for _, columns in parts for c in columns], classify)


class Direct:
    """P(late) = ``classifier.predict_proba(encode(frame))[:, 1]``; ``names``: the model's
    input column behind each encoded column (the explainer reads them)."""

    def __init__(self, encode: Any, names: list[str], classifier: Any) -> None:
        self.encode, self.names, self.classifier = encode, names, classifier

    def __call__(self, frame: Any) -> Any:
        return self.classifier.predict_proba(self.encode(frame))[:, 1]


def _has_nan(values: Any) -> bool:
    return any(v is None or v != v for v in values)


def load_version(registry: Registry, version: str, max_instances: int) -> Loaded:
    """Download a registered version, load it and build its request schema."""
    import mlflow
    from mlflow.models import Model

    mv = registry.get(version)
    if mv is None:
        raise LookupError(f"model {registry.name!r} has no version {version}")
    with tempfile.TemporaryDirectory(prefix="mlops-serve-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=registry.model_uri(mv), dst_path=tmp, tracking_uri=registry.settings.mlflow_uri
        )
        meta = Model.load(str(Path(local) / "MLmodel"))
        if meta.signature is None:
            raise ValueError(f"model {registry.name!r} v{version} has no signature")
        model = mlflow.sklearn.load_model(local)
        example: Any = meta.load_input_example(local) if meta.saved_input_example_info else None
    columns = [spec.name for spec in meta.signature.inputs.inputs]
    numeric = [spec.name for spec in meta.signature.inputs.inputs if spec.type.name != "string"]
    loaded = Loaded(version=version, run_id=mv.run_id, model=model, columns=columns, numeric=numeric,
                    request_model=request_model(meta.signature, max_instances))  # fmt: skip
    fast = direct_predictor(model)
    if fast is not None:  # used only if it gives the pipeline's answers on the input example
        import numpy as np

        if example is not None:
            frame = loaded.frame(example.to_dict(orient="records"))
            if np.allclose(fast(frame), model.predict_proba(frame)[:, 1], rtol=0, atol=1e-12):
                loaded.fast = fast
                from pipelines.serving.explain import explainer_for

                loaded.explainer = explainer_for(fast)
            else:
                log.warning(
                    "serve: v%s: the direct path disagrees with the pipeline; using the pipeline", version
                )
    return loaded
