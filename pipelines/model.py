"""The model: a scikit-learn pipeline giving P(arrival disrupted) for a flight.

Codes (carrier, origin, dest) are ordinal-encoded and handled as native categories by a
HistGradientBoostingClassifier; unknown codes at scoring time become "missing" rather
than an error. With ``monotonic_weather`` the trees may only raise the risk as the weather
at the origin gets worse (more rain or wind, less visibility): a guarantee the behavioural
model tests check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines import schema

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def build_model(train_params: dict[str, Any]) -> Pipeline:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    categorical = list(schema.CATEGORICAL_FEATURES)
    numeric = list(schema.NUMERIC_FEATURES)
    encode = ColumnTransformer(
        [
            (
                "codes",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1,
                    encoded_missing_value=-1, dtype=float,
                ),
                categorical,
            ),
            ("numbers", "passthrough", numeric),
        ],
        verbose_feature_names_out=False,
    )  # fmt: skip
    columns = categorical + numeric
    monotonic = [
        schema.WEATHER_MONOTONICITY.get(c, 0) if train_params["monotonic_weather"] else 0 for c in columns
    ]
    classifier = HistGradientBoostingClassifier(
        learning_rate=train_params["learning_rate"],
        max_iter=train_params["max_iter"],
        max_leaf_nodes=train_params["max_leaf_nodes"],
        min_samples_leaf=train_params["min_samples_leaf"],
        l2_regularization=train_params["l2_regularization"],
        early_stopping=train_params["early_stopping"],
        random_state=train_params["random_state"],
        categorical_features=[c in categorical for c in columns],
        monotonic_cst=monotonic,
    )
    return Pipeline([("encode", encode), ("classify", classifier)])


def pip_requirements() -> list[str]:
    """Explicit requirements for the logged model (inferring them costs ~40 s a run)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "pandas", "numpy", "scipy", "skops")]


# Types skops refuses by default that our own pipeline contains. We only ever load models
# this pipeline trained and logged itself (see docs/how-it-works.md, "model format").
SKOPS_TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]
