"""Ingest's decode -> encode -> write stages on a Ray cluster (``ingest(engine="ray")``, ``--ray``).

Discovery, read, planning and publish stay on the driver, exactly as for a local ingest (``ingestion``);
only the rows to encode go to Ray Data:

- **decode**: Ray tasks on CPUs read, decode and prepare each row's inputs (the tokenizer and the
  preprocessing only: no weights), as a local ingest's decode threads do;
- **encode and write**: an actor pool of :class:`_EncodeWrite`, one :class:`~unite_search.Encoder` each
  (``num_gpus=1`` each where the cluster has GPUs, else CPU actors), encodes a batch and writes its rows
  as Lance fragments straight into the shard tables (``<index>/tables``): vectors never travel back;
- **commit**: the driver receives each batch's fragment metadata and commits the fragments to their
  tables (one Lance commit per ``commit_rows`` rows or so), then publishes as a local ingest does.

A fragment is part of a table only once the driver has committed it. A worker killed mid-batch is
retried by Ray; whatever it had written is never committed, so the table never holds a row twice (the
next ingest, finding that this one did not publish, deletes the files no table version references).
The driver killed mid-run leaves committed fragments, which a rerun (with or without Ray) keeps unit by
unit as it keeps a killed local run's rows. A bad file fails as in a local ingest: the decode task
returns its error, and the driver records it with the same stage and reason.

Every node reads the corpus by the absolute paths the driver found, and writes into the index folder:
both must be on a filesystem every node mounts at the same path (``README.md``, "Ingest on a Ray
cluster").
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .diskio import brief, io_reason
from .errors import ConfigError, IngestError, InputError, MissingDependencyError, ModelLoadError, UniteError
from .runtime import nonfinite_reason, nonfinite_rows

RAY_BATCH = 8  # rows per Ray Data batch, through decode and through encode


def ray_module():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError("Ray Data is not installed: pip install -e '.[ray]'") from exc
    return ray


@dataclass(frozen=True)
class EncoderSpec:
    """How a worker loads the driver's encoder: the same model, adapter, preprocessing and dtype."""

    model: str
    adapter: str | None
    preprocessing: Any  # EncoderSettings
    dtype: str
    settings: dict[str, Any]  # what the driver's index records: a worker's must be the same

    @classmethod
    def of(cls, slot, dtype) -> EncoderSpec:
        dtype = str(dtype).removeprefix("torch.") if dtype not in (None, "auto") else "auto"
        adapter = slot.settings.get("adapter")
        return cls(slot.settings["model_id"], adapter, slot.preprocessing, dtype, dict(slot.settings))

    def load(self, device: str, *, lazy: bool):
        from .encoder import Encoder

        encoder = Encoder.load(self.model, adapter=self.adapter, settings=self.preprocessing, device=device,
                               dtype=self.dtype, lazy=lazy)  # fmt: skip
        if encoder.settings != self.settings:
            raise ModelLoadError(
                f"a Ray worker loaded {encoder.settings['model_id']} at revision {encoder.settings['revision']}, "
                f"the index was planned for {self.settings['revision']}: every node must see the same model folder"
            )
        return encoder


_PREPARER: list = []  # (spec, tokenizer-only encoder) of this decode worker process, made once


def _decode_batch(batch: dict[str, np.ndarray], spec: EncoderSpec) -> dict[str, Any]:
    """Decode tasks (a Ray task): each row's inputs prepared, or the input's error, pickled."""
    from .units import prepare_task

    if not _PREPARER or _PREPARER[0] != spec:
        _PREPARER[:] = [spec, spec.load("cpu", lazy=True)]  # tokenizer and config: no weights
    preparer = _PREPARER[1]
    out = []
    for blob in batch["task"]:
        task = pickle.loads(blob)
        t = time.perf_counter()
        try:
            result: tuple = ("ok", *prepare_task(preparer, task))  # ("ok", text column, Prepared)
        except InputError as exc:
            result = ("error", exc.reason, exc.detail)
        except OSError as exc:
            result = ("error", f"cannot read file: {io_reason(exc)}", f"{type(exc).__name__}: {exc}")
        out.append(pickle.dumps((task, result, time.perf_counter() - t)))
    return {"decoded": np.array(out, dtype=object)}


class _EncodeWrite:
    """An encoder actor: encodes decoded rows and writes them as Lance fragments into their tables."""

    def __init__(self, spec: EncoderSpec, tables: dict[str, str], dim: int, device: str, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = spec.load(device, lazy=False)
        self.tables = tables
        self.dim = dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import pyarrow as pa
        from lance.fragment import write_fragments

        from .schema import row_schema

        decoded = [pickle.loads(blob) for blob in batch["decoded"]]
        done, failures, decode_s = [], [], 0.0
        for task, (status, *result), seconds in decoded:
            decode_s += seconds
            if status == "ok":
                done.append((task, *result))
            else:
                failures.append((task.unit, "decode", *result))
        t = time.perf_counter()
        vecs = self.encoder.encode_prepared([prepared for _, _, prepared in done]) if done else None
        encode_s = time.perf_counter() - t
        bad = {done[i][0].unit for i in (nonfinite_rows(vecs) if done else [])}  # such an item fails whole
        why = nonfinite_reason(self.encoder.dtype)
        failures += [(task.unit, "encode", why, None) for task, _, _ in done if task.unit in bad]  # one a row
        done_at = [i for i, (task, _, _) in enumerate(done) if task.unit not in bad]
        t = time.perf_counter()
        by_shard: dict[str, list[int]] = defaultdict(list)
        for i in done_at:
            by_shard[done[i][0].shard].append(i)
        schema = row_schema(self.dim)
        fragments, units = {}, []
        for shard, picks in by_shard.items():
            rows = []
            for i in picks:
                task, text, _ = done[i]
                row = dict(task.row)
                if text is not None:
                    row["text"] = text
                rows.append(row)
                units.append(task.unit)
            columns = {f.name: [r.get(f.name) for r in rows] for f in schema if f.name != "vector"}
            flat = pa.array(np.ascontiguousarray(vecs[picks], dtype=np.float32).reshape(-1), pa.float32())
            columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, self.dim)
            written = write_fragments(pa.table(columns, schema=schema), self.tables[shard], schema=schema)
            fragments[shard] = [json.dumps(f.to_json()) for f in written]
        write_s = time.perf_counter() - t
        done_units = [done[i][0].unit for i in done_at]
        out = {"fragments": fragments, "units": done_units, "failures": failures,
               "decode_s": decode_s, "encode_s": encode_s, "write_s": write_s, "pid": os.getpid()}  # fmt: skip
        return {"result": np.array([pickle.dumps(out)], dtype=object)}


def _connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` ("auto": the one this machine runs, else a local one started
    now). True when this call started Ray (the driver shuts it down at the end).

    Ray's C++ core logs at error level what are warnings to a user (an actor whose constructor
    arguments sit in the object store, which every Ray Data actor pool has), so its level is set to
    fatal; it says so on stderr once, while joining, which goes to a file read back only on failure."""
    import tempfile

    ray = ray_module()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    quiet = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.ERROR}
    with tempfile.TemporaryFile() as said:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(said.fileno(), 2)
        try:
            ray.init(address=None if address in (None, "auto") else address, **quiet)
        except Exception as exc:
            os.dup2(saved, 2)
            said.seek(0)
            lines = said.read().decode(errors="replace").strip().splitlines()
            where = "a local one" if address in (None, "auto") else address
            raise IngestError(f"cannot join the Ray cluster ({where}): {brief(exc)}" +
                              (f"; Ray said: {lines[-1]}" if lines else "")) from exc  # fmt: skip
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return True


def check_address(address: str | None) -> None:
    """A ``host:port`` that nothing answers on is told in seconds (Ray itself waits minutes)."""
    import socket

    if address in (None, "auto") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray: not a cluster address: {address!r} (HOST:PORT, ray://HOST:PORT or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise IngestError(
            f"cannot reach the Ray cluster at {address} ({io_reason(exc)}): start it there with "
            "`ray start --head`, or use --ray auto"
        ) from None


def _quiet_data() -> None:
    """Ray Data's own progress bars and execution log lines off: the driver shows ours."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False),
                        ("enable_operator_progress_bars", False)):  # fmt: skip
        if hasattr(ctx, name):
            setattr(ctx, name, value)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # and its UserWarnings about its own scheduling ("the minimum number of concurrent actors ... received 1
    # input"), raised on the driver: only for Ray Data's modules
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data\.")


def encode_on_ray(
    slot, store, tasks, by_key, *, address, encoders, dtype, on_error, commit_rows, progress, timings, failed
) -> int:
    """Decode, encode and write ``tasks`` on Ray; commit their fragments. Returns rows written; fills
    ``failed`` (unit -> Problem) and ``timings`` as the local pipeline does."""
    from tqdm.auto import tqdm

    from .corpus import Problem
    from .schema import table_name

    ray = ray_module()
    started = _connect(address)
    try:
        _quiet_data()
        dim = int(slot.settings["dim"])
        spec = EncoderSpec.of(slot, dtype)
        tables, existed = {}, set(store.tables.shards())
        for shard in sorted({task.shard for task in tasks}):
            store.tables.open_or_create(shard, dim)
            tables[shard] = str(store.tables.folder / f"{table_name(shard)}.lance")
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        n = encoders or max(1, gpus)
        if gpus and n > gpus:
            raise ConfigError(f"the Ray cluster has {gpus} GPU(s): at most {gpus} encoder actors, one on each")
        actor, device, threads = actor_resources(cpus, gpus, n)
        items = [{"task": pickle.dumps(task)} for task in tasks]
        # blocks of at most RAY_BATCH rows: a short run still gives each encoder actor some to encode
        data = ray.data.from_items(items, override_num_blocks=max(1, min(-(-len(items) // RAY_BATCH), 200)))
        # Ray Data's defaults retry a decode task, restart an encoder actor and re-run its batch whenever
        # their worker process dies (not when our code raises: that is a failure of the run)
        # each decode task reserves the memory a batch of the corpus's largest inputs may take at its peak
        # (memory.py): Ray then runs no more of them on a node than fit, and keeps them apart from the
        # encoder actors (ops of the same resources would be fused into the actors, decoding there)
        peak = decode_memory([task.cost for task in tasks], _largest_node_memory(ray))
        data = data.map_batches(_decode_batch, fn_kwargs={"spec": spec}, batch_size=RAY_BATCH, num_cpus=1,
                                memory=peak)  # fmt: skip
        data = data.map_batches(
            _EncodeWrite, fn_constructor_kwargs={"spec": spec, "tables": tables, "dim": dim, "device": device,
                                                 "threads": threads},
            batch_size=RAY_BATCH, concurrency=n, **actor,
        )  # fmt: skip
        timings["encoders"] = n
        written = _drain(data, store, tables, by_key, tasks, on_error=on_error, commit_rows=commit_rows,
                         progress=progress, timings=timings, failed=failed, bar=tqdm, problem=Problem)  # fmt: skip
        for shard in sorted(set(tables) - existed):  # made for rows that all failed: as a local run, no shard
            if store.tables.open(shard).count_rows() == 0:
                store.tables.drop(shard)
        return written
    finally:
        if started:
            ray.shutdown()


def actor_resources(cpus: float, gpus: int, n: int) -> tuple[dict[str, float], str, int | None]:
    """(Ray resources of one encoder actor, its device, its torch threads) for ``n`` actors on a cluster
    of ``cpus`` CPUs and ``gpus`` GPUs. The actors together always leave one CPU to the decode tasks
    (each takes one): with none left, no decode task would ever start, and the run would wait forever."""
    share = math.floor(max(0.0, min(1.0, (cpus - 1) / n)) * 10_000) / 10_000  # down: Ray counts to 1/10,000
    if gpus:
        return {"num_gpus": 1, "num_cpus": share}, "cuda", None
    return {"num_cpus": share}, "cpu", max(1, int(cpus // (n + 1)))


def decode_memory(costs: list[int], node_memory: int) -> int:
    """The memory a decode task reserves: a batch of the largest inputs' predicted peaks, at most the
    largest node's memory (0: unknown). More than any node has, and Ray would never schedule the task;
    a batch holding an input that large runs alone on its node instead, as a local ingest decodes it."""
    peak = RAY_BATCH * max(costs)
    return min(peak, node_memory) if node_memory > 0 else peak


def _largest_node_memory(ray) -> int:
    """Bytes of the ``memory`` resource of the cluster's largest live node (0 where Ray does not say)."""
    return int(max((node.get("Resources", {}).get("memory", 0) for node in ray.nodes() if node.get("Alive")),
                   default=0))  # fmt: skip


def _cause(exc: BaseException) -> str:
    """The first exception under Ray's wrappers, in one line without Ray's colour codes."""
    import re

    seen = exc
    while type(seen).__module__.startswith("ray") and (seen.__cause__ or getattr(seen, "cause", None)):
        seen = seen.__cause__ or seen.cause
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(seen)).strip().splitlines()
    return f"{type(seen).__name__}: {text[-1] if text else ''}"


def _drain(data, store, tables, by_key, tasks, *, on_error, commit_rows, progress, timings, failed, bar, problem):
    """Consume the pipeline's results on the driver: progress, failures, commits."""
    import lance
    from lance.fragment import FragmentMetadata

    rows_left: dict[str, int] = defaultdict(int)
    for task in tasks:
        rows_left[task.unit] += 1
    shown = bar(total=len(rows_left), unit="item", desc="encode", disable=not progress or not tasks)
    pending: dict[str, list] = defaultdict(list)
    held = written = 0
    spent = defaultdict(float)
    busy: set[int] = set()  # the encoder processes that encoded rows
    t0 = time.perf_counter()

    def commit() -> None:
        nonlocal held
        t = time.perf_counter()
        for shard, fragments in pending.items():
            if fragments:
                lance.LanceDataset.commit(tables[shard], lance.LanceOperation.Append(fragments),
                                          read_version=lance.dataset(tables[shard]).version)  # fmt: skip
        pending.clear()
        held = 0
        spent["write"] += time.perf_counter() - t

    def finish(unit: str) -> None:
        rows_left[unit] -= 1
        if not rows_left[unit]:
            shown.update(1)

    try:
        for batch in data.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            for blob in batch["result"]:
                out = pickle.loads(blob)
                for key in ("decode_s", "encode_s", "write_s"):
                    spent[key[:-2]] += out[key]
                for shard, fragments in out["fragments"].items():
                    pending[shard] += [FragmentMetadata.from_json(f) for f in fragments]
                held += len(out["units"])
                written += len(out["units"])
                if out["units"]:
                    busy.add(out["pid"])
                for unit in out["units"]:
                    finish(unit)
                for unit, stage, reason, detail in out["failures"]:
                    finish(unit)
                    if unit not in failed:
                        failed[unit] = problem(by_key[unit].label, stage, reason, detail)
                        shown.set_postfix(failed=len(failed))
                if held >= commit_rows:
                    commit()
                if failed and on_error == "raise":
                    return written
        commit()
    except KeyboardInterrupt:
        if on_error != "raise":  # the rows encoded so far are kept, as a local ingest keeps them
            commit()
        raise
    except UniteError:
        raise  # ours, raised on a worker (Ray's wrapper is an instance of it too)
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise IngestError(f"the Ray cluster failed while encoding: {_cause(exc)}") from exc
        raise
    finally:
        shown.close()
    timings.update({key: round(value, 3) for key, value in spent.items()})
    timings["pipeline"] = round(time.perf_counter() - t0, 3)
    timings["encoders_busy"] = len(busy)
    return written
