"""The data model of an index: shard names, row ids and keys, the stored columns, SQL literals.

Storage (``tables.py``), the reader (``reader.py``), the planner and the ingest units all speak
these names; none of them owns them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .modality import Modality

SHARD_ORDER = (Modality.IMAGE, Modality.VIDEO, Modality.TEXT)  # "image+text", not "text+image"
FILES_TABLE = "files"  # the read stage's cache; not a shard

# Every stored column but the vector, in table order.
ROW_COLUMNS = (
    "id", "key", "unit", "unit_rows", "modality", "source", "path", "paths", "content_hash", "size", "mtime",
    "width", "height", "duration", "frames", "start", "end", "char_start", "char_end", "text", "caption", "metadata",
)  # fmt: skip
# Columns of unbounded size: a search holds the others in memory and fetches these for its top k.
LARGE_COLUMNS = ("text", "caption", "metadata")
SMALL_COLUMNS = tuple(c for c in ROW_COLUMNS if c not in LARGE_COLUMNS)
# Columns a ``where`` filter may name (the vector is not filterable).
FILTER_COLUMNS = frozenset(ROW_COLUMNS)


def shard_name(modalities: Iterable[Modality | str]) -> str:
    """The shard a set of modalities lands in: ``image``, ``video+text``..."""
    wanted = {Modality(m) for m in modalities}
    return "+".join(m.value for m in SHARD_ORDER if m in wanted)


def table_name(shard: str) -> str:
    """The LanceDB table of a shard (``image+text`` -> ``image_text``)."""
    return shard.replace("+", "_")


def shard_of_table(name: str) -> str:
    return name.replace("_", "+")


def row_key(row_id: str) -> int:
    """The FAISS id of a row: 63 bits of sha256(id), stable across runs and machines. (An id with a lone
    surrogate, which no stored id holds, gets a key too, so looking it up finds nothing.)"""
    digest = hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def sql_string(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Iterable[str]) -> str:
    """A comma-separated list of SQL string literals, for ``IN (...)``."""
    return ", ".join(sql_string(v) for v in values)


def row_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("key", pa.int64(), nullable=False),  # FAISS id, row_key(id)
            pa.field("unit", pa.string(), nullable=False),  # the work unit (file content) the row came from
            pa.field("unit_rows", pa.int32(), nullable=False),  # rows that unit makes; fewer = unfinished
            pa.field("modality", pa.string(), nullable=False),
            pa.field("source", pa.string()),  # "file", "pair" or "<manifest>.jsonl:<line>"
            pa.field("path", pa.string()),  # first corpus-relative path holding the content
            pa.field("paths", pa.list_(pa.string())),  # every path with identical bytes
            pa.field("content_hash", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("duration", pa.float64()),  # seconds, whole clip
            pa.field("frames", pa.int32()),  # frames the encoder saw
            pa.field("start", pa.float64()),  # segment start, seconds
            pa.field("end", pa.float64()),
            pa.field("char_start", pa.int64()),  # passage span in the text file, characters
            pa.field("char_end", pa.int64()),
            pa.field("text", pa.string()),  # the text the model saw (passage, or a manifest item's text)
            pa.field("caption", pa.string()),  # sidecar caption
            pa.field("metadata", pa.string()),  # JSON object from a manifest
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def files_schema():
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("rel", pa.string(), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("sha256", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("duration", pa.float64()),
            pa.field("fps", pa.float64()),
            pa.field("total_frames", pa.int64()),
            pa.field("rotation", pa.int32()),  # a video's display rotation, degrees counter-clockwise
            pa.field("vfr", pa.bool_()),  # a video's frame rate varies (null: written before this was read)
            # text passages, flat: (char_start, char_end, byte_start, byte_end) per passage
            pa.field("spans", pa.list_(pa.int64())),
            pa.field("reads", pa.int16()),  # the read-stage edition that wrote the row (corpus.READS)
        ]
    )
