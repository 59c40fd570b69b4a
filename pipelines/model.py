"""The model: a scikit-learn pipeline giving P(arrival disrupted) for a flight.

Its ``predict`` is that probability (:class:`DelayModel`): the product's prediction is a risk,
not a 0/1 label, so MLflow's pyfunc flavour, ``mlflow models serve`` and
``mlflow.pyfunc.load_model(...).predict`` answer what ``mlops serve`` answers.
``predict_proba`` is scikit-learn's, for the steps that score.

Codes (carrier, origin, dest) are ordinal-encoded and handled as native categories by a
HistGradientBoostingClassifier; unknown codes at scoring time become "missing" rather
than an error. With ``monotonic_weather`` the trees may only raise the risk as the weather
at the origin gets worse (more rain or wind, less visibility): a guarantee the behavioural
model tests check.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pipelines import schema

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


@functools.cache
def _delay_model_class() -> type:
    from sklearn.pipeline import Pipeline

    class DelayModel(Pipeline):
        """A pipeline whose ``predict`` is P(late), the delay probability."""

        def predict(self, X: Any, **params: Any) -> Any:
            return self.predict_proba(X, **params)[:, 1]

    DelayModel.__module__ = __name__
    DelayModel.__qualname__ = "DelayModel"
    return DelayModel


def __getattr__(name: str) -> Any:
    """``DelayModel`` is defined on first use, so importing this module stays cheap (no
    scikit-learn); unpickling and skops find it by name."""
    if name == "DelayModel":
        return _delay_model_class()
    raise AttributeError(name)


def build_model(train_params: dict[str, Any]) -> Pipeline:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
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
    return _delay_model_class()([("encode", encode), ("classify", classifier)])  # type: ignore[no-any-return]


def pip_requirements() -> list[str]:
    """Explicit requirements for the logged model (inferring them costs ~40 s a run)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "pandas", "numpy", "scipy", "skops")]


# Types skops refuses by default that our own pipeline contains. We only ever load models
# this pipeline trained and logged itself (see docs/how-it-works.md, "model format").
SKOPS_TRUSTED_TYPES = [
    "pipelines.model.DelayModel",
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]
