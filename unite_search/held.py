"""What a reader of a shard up to ``reader.MEMORY_ROWS`` rows holds: its small columns, and which rows have
``text``, ``caption`` or ``metadata`` to fetch.

The small columns are kept as the record batches LanceDB hands over. Merging them into one table copied
every value, so a load peaked at twice the held size and the allocator kept the freed copy: loading a
1M-row shard added 770-925 MB of RSS, now 450-510 MB. A hit's row is taken from its own batch, since
pyarrow's take on a table of many chunks first joins them all (100-200 ms at 1M rows).

Which rows to fetch for was one bool a row from ``text IS NOT NULL OR ...``, which read every row's text
(1-2 s and 90-170 MB more at 1M text rows). It is now told column by column, without reading a column
that most rows fill: see :func:`large_rows`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import LARGE_COLUMNS

SAMPLE = 512  # rows read evenly through a shard to see how many fill each large column
DENSE = 0.5  # a column filled in this share of the sample is fetched for every hit, without a scan of it


class HeldRows:
    """The small columns of every row of one pinned table version, as LanceDB's record batches."""

    def __init__(self, batches: list[Any]):
        self.batches = batches
        sizes = np.array([b.num_rows for b in batches], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # each batch's first row
        self.num_rows = int(sizes.sum())
        self.column_names = batches[0].schema.names if batches else []
        self._first: dict[str, np.ndarray] = {}  # a column's first 8 bytes a row, made by keys_with

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.batches)

    def column(self, name: str):
        """One column of every row, as a chunked array over the batches (no copy)."""
        import pyarrow as pa

        return pa.chunked_array([b.column(name) for b in self.batches], type=self.batches[0].schema.field(name).type)

    def keys(self) -> np.ndarray:
        if not self.batches:
            return np.empty(0, np.int64)
        return np.concatenate([b.column("key").to_numpy() for b in self.batches])

    def rows(self, offsets: np.ndarray) -> list[dict[str, Any]]:
        """The rows at these offsets, in the order given, as dicts of the held columns."""
        import pyarrow as pa

        if len(self.batches) == 1:  # every shard of up to READ_BATCH rows: one take, as from one table
            return self.batches[0].take(pa.array(offsets)).to_pylist()
        offsets = np.asarray(offsets, dtype=np.int64)
        if not len(offsets):
            return []
        which = np.searchsorted(self.starts, offsets, side="right") - 1
        if (which == which[0]).all():  # all in one batch: one take
            return self.batches[which[0]].take(pa.array(offsets - self.starts[which[0]])).to_pylist()
        # else one-row slices (no copy), joined into one small batch: a take from each batch costs ~0.13 ms
        at = offsets - self.starts[which]
        parts = [self.batches[b].slice(i, 1) for b, i in zip(which.tolist(), at.tolist(), strict=True)]
        if hasattr(pa, "concat_batches"):  # pyarrow 19 and later
            return pa.concat_batches(parts).to_pylist()
        return pa.Table.from_batches(parts).combine_chunks().to_pylist()

    def keys_with(self, column: str, value: str) -> set[int]:
        """Keys of the rows whose string ``column`` equals ``value``.

        pyarrow's compare of the strings reads every value on each call: 20-25 ms at 1M rows, 4-5 ms more
        over LanceDB's memory than over one merged copy in pyarrow's pool, which lies in huge pages. So
        the first call keeps each row's first 8 bytes as one uint64 (8 bytes a row), and each call
        compares those, then checks the rows that match against their whole value (~2 ms at 1M)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.batches:
            return set()
        if self.batches[0].schema.field(column).type != pa.string():  # not the layout _first_bytes reads
            return set(self.column("key").filter(pc.equal(self.column(column), value)).to_pylist())
        if self._first.get(column) is None:  # two threads may both make it: the same array
            self._first[column] = np.concatenate([_first_bytes(b.column(column)) for b in self.batches])
        want = np.frombuffer(value.encode("utf-8", "surrogatepass")[:8].ljust(8, b"\0"), "<u8")[0]
        found = np.flatnonzero(self._first[column] == want)
        which = np.searchsorted(self.starts, found, side="right") - 1
        out: set[int] = set()
        for b in np.unique(which).tolist():  # a file's rows lie together: mostly one batch
            at = pa.array(found[which == b] - self.starts[b])
            batch = self.batches[b]
            out.update(batch.column("key").take(at).filter(pc.equal(batch.column(column).take(at), value)).to_pylist())
        return out


_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], dtype=np.uint64)  # n low bytes


def _first_bytes(values) -> np.ndarray:
    """The first 8 bytes of each value of a pyarrow string array, zero-padded, as little-endian uint64."""
    offsets = np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4).astype(np.int64)
    starts, sizes = offsets[:-1], np.minimum(offsets[1:] - offsets[:-1], 8)  # a null's bytes are checked away later
    data = values.buffers()[2]
    size = data.size if data is not None else 0
    out = np.zeros(len(values), np.uint64)
    inside = starts <= size - 8  # 8 bytes can be read from here without passing the buffer's end
    if inside.any():  # every byte offset of the buffer seen as the start of a uint64: no copy
        words = np.ndarray((size - 7,), dtype="<u8", buffer=data, strides=(1,))
        out[inside] = words[starts[inside]] & _MASKS[sizes[inside]]
    for i in np.flatnonzero(~inside).tolist():  # the last few values, too near the end
        tail = values[i].as_py().encode("utf-8", "surrogatepass") if values[i].is_valid else b""
        out[i] = int.from_bytes(tail[:8].ljust(8, b"\0"), "little")
    return out


def large_rows(table, rows: int) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(the large columns some row fills, the keys of the rows that fill one, or None for every row) of
    ``table``, a pinned LanceDB table of ``rows`` rows.

    A column most of a sample fills (a text shard's ``text``) is fetched for every hit: a scan of it is the
    cost this avoids, and a hit where it is null gets None from the fetch, as it would have without one.
    Any other column's filled rows are found by a filter on it, cheap as its values are few; a column no
    row fills is never fetched. A row marked wrongly is only fetched, so a sample that misjudges a
    column costs time, never a result."""
    if not rows:
        return (), np.empty(0, np.int64)
    at = np.unique(np.linspace(0, rows - 1, min(rows, SAMPLE)).astype(np.int64))
    seen = table.take_offsets(at.tolist()).select(list(LARGE_COLUMNS)).to_arrow()
    dense = {c for c in LARGE_COLUMNS if len(at) - seen.column(c).null_count >= DENSE * len(at)}
    fetch, keys = [], []
    for column in LARGE_COLUMNS:
        if column in dense:
            fetch.append(column)
            continue
        # every hit fetches already where a column is dense: then a sparse one's first filled row is enough
        found = table.search().where(f"{column} IS NOT NULL").select(["key"]).limit(1 if dense else None).to_arrow()
        if found.num_rows:
            fetch.append(column)
            keys.append(found.column("key").to_numpy())
    return tuple(fetch), None if dense else np.concatenate([np.empty(0, np.int64), *keys])
