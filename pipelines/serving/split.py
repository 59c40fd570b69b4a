"""The canary's traffic split, the same in serving and in batch scoring.

A flight goes to the canary when the hash of its key, salted with the canary's version,
falls under the canary's share: sticky (a flight asked about again gets the same model while
the canary lives, on any replica or host, in any order of arrival), independent of anything
the model sees (the hash is uniform whatever the flight's features), and a new canary draws
a new sample. The key of a flight is its identity in the data contract
(``schema.FLIGHT_KEY``: date, carrier, flight number, origin), as :func:`flight_key` writes
it; a serving request may carry its own keys (``"keys"``, one per instance) or route as a
whole by the ``X-Routing-Key`` header (else by its request id: not sticky).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

CANARY_ROLE = "canary"


def flight_key(year: int, month: int, day: int, carrier: str, flight: int, origin: str) -> str:
    """``2013-01-05/UA1545/EWR``: a flight's identity (``schema.FLIGHT_KEY``)."""
    return f"{int(year):04d}-{int(month):02d}-{int(day):02d}/{carrier}{int(flight)}/{origin}"


def frame_keys(frame: Any) -> list[str]:
    """The flight keys of a batch frame (its ``schema.FLIGHT_KEY`` columns)."""
    from pipelines import schema

    columns = [frame[c].tolist() for c in schema.FLIGHT_KEY]
    return [flight_key(*row) for row in zip(*columns, strict=True)]


def position(key: str, salt: str) -> float:
    """Where ``key`` falls in [0, 1) for a canary salted ``salt`` (its version)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def to_canary(keys: Iterable[str], share: float, salt: str) -> list[bool]:
    """Per key: answered by the canary (True) or by the champion."""
    if share <= 0:
        return [False for _ in keys]
    return [position(key, salt) < share for key in keys]


def parts(mask: Sequence[bool]) -> tuple[list[int], list[int]]:
    """The champion's and the canary's row positions."""
    champion = [i for i, m in enumerate(mask) if not m]
    canary = [i for i, m in enumerate(mask) if m]
    return champion, canary
