"""Requests that arrive while the model is busy share its next call."""

import asyncio
import contextlib
from typing import Any

from pipelines.serving.loaded import Loaded
from pipelines.serving.metrics import Metrics


def one_thread() -> None:
    """No OpenMP threads for this thread's predictions: for the few rows of a request,
    starting and spinning them costs more than it brings (and competes with the event
    loop). OpenMP's thread count is per calling thread, hence a call in each."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


# -- batching --------------------------------------------------------------------------------
class Batcher:
    """Requests share model calls. A scikit-learn call costs about the same for 1 row as
    for 100 (per-call checks, per-tree overhead), so under load the requests that arrived
    while the model was busy go into one call (up to ``max_rows``). It runs on the event
    loop, not on a thread: one process is one core, and a second thread would only fight
    the loop for the GIL. No request waits for a batch to fill: an idle server predicts
    at once."""

    def __init__(self, max_rows: int, metrics: Metrics) -> None:
        self.max_rows, self.metrics = max_rows, metrics
        self._pending: list[tuple[Loaded, Any, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="serve-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def predict(self, loaded: Loaded, frame: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((loaded, frame, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        import pandas as pd

        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # the requests read in this turn of the loop join the batch
            batch: list[tuple[Loaded, Any, asyncio.Future[Any]]] = []
            rows = 0
            while self._pending and (not batch or rows + len(self._pending[0][1]) <= self.max_rows):
                item = self._pending.pop(0)
                batch.append(item)
                rows += len(item[1])
            if not self._pending:
                self._wake.clear()
            by_model: dict[int, list[tuple[Loaded, Any, asyncio.Future[Any]]]] = {}
            for item in batch:  # a swap may fall inside a batch: each request keeps its version
                by_model.setdefault(id(item[0]), []).append(item)
            for items in by_model.values():
                loaded = items[0][0]
                frames = [item[1] for item in items]
                try:
                    predictions = loaded.predict(frames[0] if len(frames) == 1 else pd.concat(frames))
                except Exception as exc:
                    for item in items:
                        if not item[2].done():
                            item[2].set_exception(exc)
                    continue
                self.metrics.batch_rows.observe(len(predictions))
                start = 0
                for _, frame, future in items:
                    if not future.done():  # a client that went away cancelled its request
                        future.set_result(predictions[start : start + len(frame)])
                    start += len(frame)
