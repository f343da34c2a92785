"""Token-budget batching: group items so padded batches stay within a token budget."""

from __future__ import annotations

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
