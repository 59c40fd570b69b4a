"""Schemathesis hooks for `schemathesis run` against `mlops serve` (loaded through
SCHEMATHESIS_HOOKS by tests/serving/test_schemathesis.py).

- `valid_requests_are_answered`: in place of schemathesis's own positive_data_acceptance
  (excluded), the same rule with the one constraint JSON Schema cannot state (`keys`, when
  given, has one key per instance; the 422 for a mismatch is asserted by
  tests/serving/test_serve.py).
- `four_xx_names_the_field`: every 4xx answer names what was wrong. A 422 lists each
  problem with a `field` that is a path into the request that was sent (its parent exists
  in the body, or the field is `body` itself when the body is not a JSON object); a 401
  names the header. 404 and 405 are about the URL or the method, not a field of the
  request: they name the status only, as FastAPI answers them."""

from __future__ import annotations

from typing import Any

import schemathesis


def _keys_match(body: Any) -> bool:
    if (
        isinstance(body, dict)
        and isinstance(body.get("keys"), list)
        and isinstance(body.get("instances"), list)
    ):
        return len(body["keys"]) == len(body["instances"])
    return True


@schemathesis.check
def valid_requests_are_answered(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis's positive_data_acceptance, and the one rule of a request JSON Schema
    cannot state: `keys`, when given, has one key per instance."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not _keys_match(case.body):
        return None
    assert response.status_code < 400, (
        f"a valid request refused: {response.status_code} {response.text[:300]}"
    )
    return True


def _names_a_place_in(loc: list[Any], field: str, body: Any) -> bool:
    """`field` renders `loc` (["body", "instances", 0, "dest"] -> instances[0].dest), and the
    place's parent exists in the body sent (the field itself may be the one missing)."""
    assert loc[:1] == ["body"], f"a problem located outside the body: {loc}"
    path = loc[1:]
    rendered = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "body"
    assert field == rendered, f"field {field!r} is not its location {loc}"
    node = body
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return not path or isinstance(node, dict | list)


@schemathesis.check
def four_xx_names_the_field(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if not 400 <= status < 500 or status in (404, 405):
        return None
    try:
        payload = response.json()
    except ValueError as exc:
        raise AssertionError(f"a {status} whose body is not JSON: {response.text[:200]!r}") from exc
    if status == 401:
        assert "X-API-Key" in str(payload.get("detail")), f"a 401 that does not name the header: {payload}"
        return True
    assert status == 422, f"a {status} the API does not document: {payload}"
    detail, error = payload.get("detail"), payload.get("error")
    assert isinstance(detail, list) and detail, f"a 422 without its list of problems: {payload}"
    assert isinstance(error, str) and error, f"a 422 without its message: {payload}"
    assert error.startswith(f"{detail[0].get('field')}: "), (
        f"the message does not start with the field: {error}"
    )
    for problem in detail:
        field = problem.get("field")
        assert isinstance(field, str) and field, f"a problem that names no field: {problem}"
        place = _names_a_place_in(problem.get("loc") or [], field, case.body)
        assert place, f"{field!r} is not a place in the body sent: {case.body!r}"
    return True
