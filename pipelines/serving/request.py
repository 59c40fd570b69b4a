"""The request schema of a loaded model (its MLflow signature bounded by the validation
suite: a wrong field gets a 422 that names it) and the 422 body."""

from typing import Any

from pydantic_core import PydanticCustomError

from pipelines import schema


def request_model(signature: Any, max_instances: int) -> Any:
    """The pydantic model of a request for a model with ``signature``: one typed field per
    signature input, bounded by the validation suite; unknown fields are refused."""
    from typing import Annotated, Literal

    from mlflow.types import DataType
    from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, create_model, model_validator

    from pipelines.expectations import feature_constraints

    constraints = feature_constraints()
    numeric_types = {DataType.double, DataType.float, DataType.long, DataType.integer}
    fields: dict[str, Any] = {}
    for spec in signature.inputs.inputs:
        name, kind = spec.name, spec.type
        allowed = constraints.get(name)
        if kind == DataType.string:
            if isinstance(allowed, frozenset) and len(allowed) <= 20:
                fields[name] = (Literal[tuple(sorted(allowed))], ...)
            elif isinstance(allowed, frozenset):  # e.g. 1,462 airports: a short message, not the list
                listed = WithJsonSchema(
                    {"type": "string", "enum": sorted(allowed)}
                )  # the schema lists them all
                fields[name] = (Annotated[str, AfterValidator(_known_code(name, allowed)), listed], ...)
            else:
                fields[name] = (str, ...)
        elif kind in numeric_types:
            bounds: dict[str, Any] = {"allow_inf_nan": False}
            if isinstance(allowed, tuple):
                bounds.update(ge=allowed[0], le=allowed[1])
            if name in schema.INTEGRAL_FEATURES:  # the schema says so; _whole's message says it better
                bounds["json_schema_extra"] = {"multipleOf": 1}
            number = Annotated[float, Field(**bounds)]
            if name in schema.INTEGRAL_FEATURES:  # an hour, a minute of the day, a distance in miles
                number = Annotated[number, AfterValidator(_whole)]  # type: ignore[assignment,misc]
            if name in schema.NULLABLE_FEATURES:  # e.g. a weather reading that is missing
                fields[name] = (number | None, None)
            else:
                fields[name] = (number, ...)
        else:
            raise ValueError(f"signature input {name!r} has a type the server does not map: {kind}")
    strict = ConfigDict(extra="forbid", strict=True)
    flight = create_model("Flight", __config__=strict, **fields)
    key: Any = Annotated[str, Field(min_length=1, max_length=200)]
    keys: Any = Annotated[list[key], Field(min_length=1, max_length=max_instances,  # type: ignore[valid-type]
                          description="optional, one per instance: the flight's key (e.g. 2013-01-05/UA1545/EWR); "
                                      "a canary answers the same flights whatever the request")] | None  # fmt: skip
    explain: Any = Annotated[bool, Field(description="also return each flight's top feature contributions "
                                         "(log-odds, from the model's trees)")]  # fmt: skip
    return create_model(
        "PredictRequest", __config__=strict,
        __validators__={"keys_match": model_validator(mode="after")(_keys_match)},  # type: ignore[dict-item]
        instances=(Annotated[list[flight], Field(min_length=1, max_length=max_instances)], ...),  # type: ignore[valid-type]
        keys=(keys, None),
        explain=(explain, False),
    )  # fmt: skip


def _keys_match(request: Any) -> Any:
    if request.keys is not None and len(request.keys) != len(request.instances):
        raise PydanticCustomError(
            "keys_length",
            "{keys} key(s) for {instances} instance(s): give one key per instance, or none",
            {"keys": len(request.keys), "instances": len(request.instances)},
        )
    return request


def _whole(value: float) -> float:
    if value != int(value):
        raise ValueError(f"{value} is not a whole number")
    return value


def _known_code(name: str, allowed: frozenset[str]) -> Any:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(
                f"{value!r} is not a known {name} code (the validation suite knows {len(allowed)})"
            )
        return value

    return check


def field_errors(exc: Any) -> list[dict[str, Any]]:
    """Pydantic errors as FastAPI's 422 body lists them, with a readable field path."""
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        if error["type"] == "keys_length":  # a whole-request check about one field
            error["loc"] = ("keys",)
        loc = ["body", *error["loc"]]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        out.append({"loc": loc, "field": path or "body", "msg": error["msg"], "type": error["type"]})
    return out
