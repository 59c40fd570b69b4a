"""Paired bootstrap intervals for the gate: how sure a holdout makes us.

Challenger and champion are scored on the same flights; one resample of those flights (drawn
with replacement, as counts per flight) is applied to both, so each interval is of the
*paired* difference and the two models' shared luck on a day cancels. A resample is a row
of multiplicities: ROC AUC is the weighted Mann-Whitney statistic (ties count one half) and
the Brier score a weighted mean, so a thousand resamples of a 4,500-flight holdout cost a
few array passes, not a thousand calls to scikit-learn.

The verdict rule built on it (:mod:`pipelines.steps.evaluate`): the challenger is "not worse
than the champion by more than the margin at confidence c" when the ``1 - c`` quantile of
the resampled difference is above ``-margin`` (the one-sided bound at confidence c).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

_CHUNK = 100  # resamples computed together (bounds the memory: chunk x flights counts)


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval: ``low``/``high`` are the ``1 - c`` and ``c``
    quantiles, so ``low`` is the one-sided lower bound at confidence c (and ``high`` the upper)."""

    estimate: float
    low: float
    high: float
    confidence: float

    def as_list(self) -> list[float]:
        return [round(self.low, 5), round(self.high, 5)]

    def text(self, signed: bool = False) -> str:
        fmt = "{:+.4f}" if signed else "{:.4f}"
        return f"{fmt.format(self.estimate)} ({fmt.format(self.low)}..{fmt.format(self.high)})"


class Resamples:
    """``samples`` bootstrap resamples of ``n`` flights drawn from ``seed``: the same draws are
    applied to every model and every subset (slice) asked for, so differences are paired.

    With ``groups`` (one code per flight, 0..k-1), whole groups are drawn instead of flights
    (a cluster bootstrap): flights that share an airport-hour share its weather, and drawing
    them together keeps that dependence in the interval."""

    def __init__(self, n: int, samples: int, seed: int, confidence: float, groups: Any = None) -> None:
        import numpy as np

        codes = None if groups is None else np.asarray(groups)
        units = n if codes is None else int(codes.max()) + 1
        rng = np.random.default_rng(seed)
        # filled in place, a block at a time: a 1000 x 27,000 matrix is 108 MB, and building
        # it from concatenated pieces cost more in memory traffic than the draws themselves
        self.counts = np.empty((samples, n), dtype=np.float32)
        for start in range(0, samples, _CHUNK):
            rows = min(_CHUNK, samples - start)
            draws = rng.integers(0, units, size=(rows, units))
            draws += (np.arange(rows) * units)[:, None]
            drawn = np.bincount(draws.ravel(), minlength=rows * units).reshape(rows, units)
            self.counts[start : start + rows] = drawn if codes is None else drawn[:, codes]
        self.n, self.samples, self.seed, self.confidence = n, samples, seed, confidence
        self.units = units

    def interval(self, estimate: float, values: np.ndarray) -> Interval:
        """``estimate`` with the interval of its resampled ``values`` (NaN draws left out)."""
        import numpy as np

        values = values[~np.isnan(values)]
        if not len(values):
            return Interval(estimate, float("nan"), float("nan"), self.confidence)
        low, high = np.quantile(values, [1 - self.confidence, self.confidence])
        return Interval(float(estimate), float(low), float(high), self.confidence)

    def auc(self, y: Any, score: Any, mask: Any = None) -> Interval:
        """ROC AUC of one model, on the rows in ``mask`` (all when None)."""
        y, score, columns = self._subset(y, score, mask)
        return self.interval(weighted_auc(y, score, None)[0], weighted_auc(y, score, self.counts, columns))

    def auc_difference(self, y: Any, challenger: Any, champion: Any, mask: Any = None) -> Interval:
        """ROC AUC of the challenger minus the champion's, paired."""
        y, a, columns = self._subset(y, challenger, mask)
        b = champion if mask is None else champion[mask]
        point = weighted_auc(y, a, None)[0] - weighted_auc(y, b, None)[0]
        draws = weighted_auc(y, a, self.counts, columns) - weighted_auc(y, b, self.counts, columns)
        return self.interval(point, draws)

    def brier(self, y: Any, score: Any, mask: Any = None) -> Interval:
        import numpy as np

        y, score, columns = self._subset(y, score, mask)
        loss = (np.asarray(score, dtype=float) - y) ** 2
        return self.interval(float(loss.mean()), weighted_mean(self.counts, loss, columns))

    def brier_difference(self, y: Any, challenger: Any, champion: Any, mask: Any = None) -> Interval:
        """Brier score of the challenger minus the champion's, paired (lower is better)."""
        import numpy as np

        y, a, columns = self._subset(y, challenger, mask)
        b = np.asarray(champion if mask is None else champion[mask], dtype=float)
        delta = (np.asarray(a, dtype=float) - y) ** 2 - (b - y) ** 2
        return self.interval(float(delta.mean()), weighted_mean(self.counts, delta, columns))

    def _subset(self, y: Any, score: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``y`` and ``score`` on the rows in ``mask``, and those rows' positions (None: all)."""
        import numpy as np

        y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
        assert len(y) == len(score) == self.n, (len(y), len(score), self.n)
        if mask is None:
            return y, score, None
        mask = np.asarray(mask, dtype=bool)
        return y[mask], score[mask], np.flatnonzero(mask)


def _blocks(counts: np.ndarray, columns: np.ndarray | None) -> Iterator[np.ndarray]:
    """``counts`` a block of ``_CHUNK`` resamples at a time, with only ``columns`` (in that
    order; None: all, as they are). The picked columns go to one buffer reused for every
    block: the work stays in cache and no copy of the whole matrix is made."""
    import numpy as np

    if columns is None:
        for begin in range(0, len(counts), _CHUNK):
            yield counts[begin : begin + _CHUNK]
        return
    buffer = np.empty((min(_CHUNK, len(counts)), len(columns)), dtype=counts.dtype)
    for begin in range(0, len(counts), _CHUNK):
        block = counts[begin : begin + _CHUNK]
        np.take(block, columns, axis=1, out=buffer[: len(block)])
        yield buffer[: len(block)]


def weighted_mean(counts: np.ndarray, values: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Per resample, the mean of ``values`` with each row counted ``counts`` times (a cluster
    resample does not hold exactly n flights); with ``columns``, the rows of ``values`` are
    those columns of ``counts``."""
    import numpy as np

    out = []
    for block in _blocks(counts, columns):
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((block @ values) / block.sum(axis=1, dtype=float))
    return np.concatenate(out) if out else np.zeros(0)


def weighted_auc(
    y: np.ndarray, score: np.ndarray, counts: np.ndarray | None, columns: np.ndarray | None = None
) -> np.ndarray:
    """ROC AUC with each flight counted ``counts[i]`` times, one value per row of ``counts``
    (``None``: every flight once; with ``columns``, flight i is column ``columns[i]``). Ties
    between a late and an on-time flight count one half, as in
    :func:`sklearn.metrics.roc_auc_score`. NaN where a resample has a single class."""
    import numpy as np

    order = np.argsort(score, kind="mergesort")
    sorted_score, late = score[order], y[order].astype(np.float32)
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_score) != 0])  # groups of tied scores
    if counts is None:
        counts, picked = np.ones((1, len(y)), dtype=np.float32), None
    else:
        picked = order if columns is None else np.asarray(columns)[order]
    out = []
    for w in _blocks(counts, picked):  # float32: counts and their sums stay exact below 2**24
        pos = np.add.reduceat(w * late, starts, axis=1)
        neg = np.add.reduceat(w, starts, axis=1)
        neg -= pos  # the on-time flights' counts, exactly (whole numbers below 2**24)
        below = np.cumsum(neg, axis=1) - neg  # on-time flights scored lower than each group
        total = pos.sum(axis=1, dtype=float) * neg.sum(axis=1, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((pos * (below + 0.5 * neg)).sum(axis=1, dtype=float) / total)
    return np.concatenate(out) if out else np.zeros(0)
