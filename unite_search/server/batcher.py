"""Queries that arrive together, encoded in one forward pass on one thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import EncodeError
from ..runtime import nonfinite_reason, nonfinite_rows
from .metrics import Metrics


@dataclass
class _Pending:
    prepared: Any  # encoder.Prepared
    future: Future
    arrived: float = field(default_factory=time.monotonic)


class QueryBatcher:
    """Encodes prepared queries on one thread, those that arrive within ``window`` seconds of the first
    waiting one in the same forward pass (split by the encoder's token budget, at most ``max_items``)."""

    def __init__(self, index, window: float, max_items: int, metrics: Metrics):
        self.index = index
        self.window = window
        self.max_items = max_items
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._running = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending) + self._running

    def submit(self, prepared) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="unite-search-encoder", daemon=True)
                self._thread.start()
            self._pending.append(_Pending(prepared, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Encode what is queued, then stop the thread (the next :meth:`submit` starts a new one)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._cond:
            self._thread = None
            self._closed = False

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                deadline = self._pending[0].arrived + self.window
                while len(self._pending) < self.max_items and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_items))]
                self._running = len(batch)
            try:
                self._encode(batch)
            finally:
                with self._cond:
                    self._running = 0

    def _encode(self, batch: list[_Pending]) -> None:
        from ..batching import plan_batches

        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # the client may have gone
        if not live:
            return
        try:
            encoder = self.index.encoder
            groups = plan_batches([p.prepared.length for p in live], encoder.token_budget)
        except BaseException as exc:  # noqa: BLE001  handed to every waiting request
            for p in live:
                p.future.set_exception(exc)
            return
        for group in groups:
            members = [live[i] for i in group]
            start = time.perf_counter()
            try:
                vectors = encoder.forward([p.prepared for p in members])
            except BaseException as exc:  # noqa: BLE001  handed to the requests of this forward pass
                for p in members:
                    p.future.set_exception(exc)
                continue
            self.metrics.batch(len(members), time.perf_counter() - start)
            bad = set(nonfinite_rows(vectors))
            for i, (p, vec) in enumerate(zip(members, vectors, strict=True)):
                if i in bad:  # never searched with: its hits would be noise
                    p.future.set_exception(EncodeError(f"the query: {nonfinite_reason(encoder.dtype)}"))
                else:
                    p.future.set_result(vec)
