"""Token-budget batching: group items so padded batches stay within a token budget."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(lengths: Sequence[int], token_budget: int, max_items: int | None = None) -> list[list[int]]:
    """Indices grouped into batches, longest first, each with ``items * longest <= token_budget``.

    An item longer than the budget gets a batch of its own.

    >>> plan_batches([5, 30, 10, 10], token_budget=40)
    [[1], [2, 3, 0]]
    """
    if token_budget < 1:
        raise ValueError("token_budget must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted descending: the batch's first item is its longest
        longest = lengths[current[0]] if current else lengths[i]
        full = (len(current) + 1) * longest > token_budget or (max_items is not None and len(current) >= max_items)
        if current and full:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, lookahead: int) -> Iterator[R]:
    """``map(fn, items)`` in order on a thread pool, never more than ``lookahead`` results ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="unite-prep") as pool:
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


_DONE = object()


def prefetch(items: Iterable[T], max_bytes: int, size: Callable[[T], int]) -> Iterator[T]:
    """Iterate ``items`` on a background thread, keeping up to ``max_bytes`` of results ready ahead.

    The consumer (the encoder, busy on the GPU) and the producer (decoding workers) then run at the
    same time instead of taking turns. One result larger than ``max_bytes`` still passes, alone.
    ``max_bytes <= 0`` iterates in the caller's thread.
    """
    if max_bytes <= 0:
        yield from items
        return
    ready: deque = deque()
    held = [0]
    cond = threading.Condition()
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                n = size(item)
                with cond:
                    cond.wait_for(lambda n=n: stop.is_set() or not ready or held[0] + n <= max_bytes)
                    if stop.is_set():
                        return
                    ready.append((item, n))
                    held[0] += n
                    cond.notify_all()
        except BaseException as exc:  # noqa: BLE001  re-raised in the consumer's thread
            failure.append(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # shuts a bounded_map's thread pool down
            with cond:
                ready.append((_DONE, 0))
                cond.notify_all()

    thread = threading.Thread(target=produce, name="unite-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with cond:
                cond.wait_for(lambda: bool(ready))
                item, n = ready.popleft()
                held[0] -= n
                cond.notify_all()
            if item is _DONE:
                if failure:
                    raise failure[0]
                return
            yield item
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        thread.join()
