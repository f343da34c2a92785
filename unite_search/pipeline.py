"""The local decode -> encode -> write stage of an ingest, overlapped in one process.

Decode workers prepare the model inputs of each task (admitted by predicted memory), the calling
thread encodes them in token-budget windows, and a writer thread appends the rows to the shard
tables. ``distributed.py`` runs the same stage on a Ray cluster.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import defaultdict
from typing import Any

from .corpus import Problem
from .diskio import io_reason
from .errors import InputError
from .runtime import nonfinite_reason, nonfinite_rows
from .store import IndexStore
from .units import Task, prepare_task


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` for the block (a process-wide setting), then set back;
    ``None`` leaves them as they are."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


COMMIT_SECONDS = 60.0  # rows held this long are committed whatever their count: a slow encoder's work is kept


class Writer:
    """Appends encoded rows on its own thread so that encoding does not wait on disk.

    The encoder hands over a window of rows at a time (a few for long inputs); each shard's rows are
    held until ``commit_rows`` of them, or :data:`COMMIT_SECONDS`, make one commit. A commit is a table
    version whose manifest lists every fragment: one a window made thousands of versions on a large
    ingest, their manifests growing with the square of their count (650 MB for 3,277 of them), and each
    later publish listed them all.
    """

    def __init__(self, store: IndexStore, commit_rows: int):
        self.store = store
        self.commit_rows = commit_rows
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.dropped = False  # set on an interrupt that must write nothing more (see close)
        self.busy = 0.0
        self.held: dict[str, tuple[list, list, float]] = {}  # shard -> (rows, vector blocks, since)
        self.thread = threading.Thread(target=self._run, name="unite-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is not None or self.dropped:
                continue
            try:
                t = time.perf_counter()
                for shard, (rows, vecs) in job.items():
                    held = self.held.setdefault(shard, ([], [], time.monotonic()))
                    held[0].extend(rows)
                    held[1].append(vecs)
                for shard, (rows, _, since) in list(self.held.items()):
                    if len(rows) >= self.commit_rows or time.monotonic() - since >= COMMIT_SECONDS:
                        self._commit(shard)
                self.busy += time.perf_counter() - t
            except BaseException as exc:  # noqa: BLE001  handed to the main thread, which re-raises it
                self.error = exc
        if self.error is None and not self.dropped:  # the end of the run: what is held is written
            try:
                t = time.perf_counter()
                for shard in list(self.held):
                    self._commit(shard)
                self.busy += time.perf_counter() - t
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

    def _commit(self, shard: str) -> None:
        import numpy as np

        rows, blocks, _ = self.held.pop(shard)
        self.store.tables.add_rows(shard, rows, np.concatenate(blocks))

    def put(self, job) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(job)

    def close(self, drop_on_interrupt: bool = False) -> None:
        """Write what is queued and stop the thread. Interrupted while waiting (Ctrl-C), it still waits for
        the thread to end, so nothing is written once the run has returned; ``drop_on_interrupt`` (the
        ``raise`` policy, whose tables are then rolled back) drops the jobs not yet written first."""
        try:
            self.queue.put(None)
            self.thread.join()
        except BaseException:
            if drop_on_interrupt:
                self.dropped = True
                with contextlib.suppress(queue.Empty):
                    while True:
                        self.queue.get_nowait()
            self.queue.put(None)
            self.thread.join()
            raise
        if self.error is not None:
            raise self.error


def encode_all(
    encoder, store, tasks, units_by_key, *, workers, on_error, commit_rows, progress, timings, failed, memory_bytes
):
    """Decode -> encode -> write, overlapped. Returns (rows written, peak bytes held); fills ``failed``.

    Decoding is admitted by each task's predicted peak memory, so inputs decoded or prepared and not
    yet encoded (in flight, ready, or waiting in the window) stay within ``memory_bytes``.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from .batching import ByteBudget, admitted_map

    writer = Writer(store, commit_rows)
    decode_busy = [0.0]
    lock = threading.Lock()
    budget = ByteBudget(memory_bytes)
    window_bytes = max(1, memory_bytes // 2)  # the other half lets decoding run on while the encoder works

    def work(task: Task):
        # A file's own fault (bad content, a decoder's complaint, an I/O error) fails that file; anything
        # else (a bug, MemoryError) stops the run, its traceback kept in the run log.
        t = time.perf_counter()
        try:
            out: Any = prepare_task(encoder, task)
        except InputError as exc:
            out = exc
        except OSError as exc:
            out = InputError(f"cannot read file: {io_reason(exc)}", detail=f"{type(exc).__name__}: {exc}")
        finally:
            with lock:
                decode_busy[0] += time.perf_counter() - t
        return out

    window: list[tuple[Task, str | None, Any]] = []
    tokens = nbytes = held = 0
    written = 0
    encode_time = 0.0
    # the bar counts items, as the report does: an item is done when its last row (segment, passage) is
    # encoded, and so kept should the run stop (a decoded row waits in the window for its batch: counted
    # then, the bar showed items done that a Ctrl-C lost), or when it fails
    rows_left: dict[str, int] = defaultdict(int)
    for task in tasks:
        rows_left[task.unit] += 1
    bar = tqdm(total=len(rows_left), unit="item", desc="encode", disable=not progress or not tasks)

    def done(unit: str, rows: int = 0) -> None:
        before = rows_left[unit]
        rows_left[unit] = 0 if unit in failed else before - rows
        if before and not rows_left[unit]:
            bar.update(1)

    def flush():
        nonlocal window, tokens, nbytes, held, written, encode_time
        live = [w for w in window if w[0].unit not in failed]
        if live:
            encoder.wait_loaded()  # the weights may still be loading: that wait is the load's, not encoding's
            t = time.perf_counter()
            vecs = encoder.encode_prepared([p for _, _, p in live])
            encode_time += time.perf_counter() - t
            for i in nonfinite_rows(vecs):  # fails its item (rows written before are deleted with it)
                unit = live[i][0].unit
                if unit not in failed:
                    failed[unit] = Problem(units_by_key[unit].label, "encode", nonfinite_reason(encoder.dtype))
                    bar.set_postfix(failed=len(failed))
                    done(unit)
            job: dict[str, tuple[list, list]] = {}
            for (task, text, _), vec in zip(live, vecs, strict=True):
                if task.unit in failed:
                    continue
                row = dict(task.row)
                if text is not None:
                    row["text"] = text
                rows, vs = job.setdefault(task.shard, ([], []))
                rows.append(row)
                vs.append(vec)
            if job:
                writer.put({s: (rows, np.stack(vs)) for s, (rows, vs) in job.items()})
                written += sum(len(rows) for rows, _ in job.values())
            for task, _, _ in live:  # with the writer: kept should the run stop now
                done(task.unit, 1)
        window, tokens, nbytes = [], 0, 0
        budget.release(held)
        held = 0

    def kept_bytes(out) -> int:
        return out[1].nbytes if isinstance(out, tuple) else 0

    t0 = time.perf_counter()
    decoded = admitted_map(work, tasks, workers, budget, lambda task: task.cost, kept_bytes, flush)
    loading = False
    try:
        for task, out, size in decoded:
            if isinstance(out, InputError):
                if task.unit not in failed:
                    label = units_by_key[task.unit].label
                    failed[task.unit] = Problem(label, "decode", out.reason, out.detail)
                    bar.set_postfix(failed=len(failed))
                    done(task.unit)
                if on_error == "raise":
                    break
                continue
            text, prepared = out
            if not loading:  # the weights are read once an input needs them, beside the next decodes
                encoder.start_loading()
                loading = True
            window.append((task, text, prepared))
            tokens += prepared.length
            nbytes += prepared.nbytes
            held += size
            del out, prepared  # the window holds them now: a flush frees them
            if tokens >= 8 * encoder.token_budget or nbytes >= window_bytes or len(window) >= commit_rows:
                flush()
                if failed and on_error == "raise":
                    break
        else:
            flush()
    finally:  # each step runs even when the one before is interrupted (a second Ctrl-C while decodes end)
        try:
            decoded.close()
        finally:
            try:
                bar.close()
            finally:
                writer.close(drop_on_interrupt=on_error == "raise")
    if loading:
        encoder.wait_loaded()  # a load started is finished before the run returns, used or not
    timings["decode"] = round(decode_busy[0], 3)
    timings["encode"] = round(encode_time, 3)
    timings["write"] = round(writer.busy, 3)
    timings["pipeline"] = round(time.perf_counter() - t0, 3)
    return written, budget.peak
