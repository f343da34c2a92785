"""The read stage's cache: what reading each corpus file told (hash, size, probe, passages), by path.

Kept as one LanceDB table (``tables/files.lance``) beside the shards; rewritten only when it changed,
with only its latest version kept (nobody reads an older one). A rerun skips reading any file whose
size and mtime match its row.
"""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

from .schema import FILES_TABLE, files_schema
from .tables import ShardTables


def load(tables: ShardTables) -> dict[str, dict[str, Any]]:
    """Rows by corpus-relative path, each with the read-stage edition that wrote it (``reads``: a layout of
    before tells it); empty when absent or written by a layout not known here."""
    if FILES_TABLE not in tables.names():
        return {}
    table = tables.db.open_table(FILES_TABLE)
    schema = files_schema()
    before_reads = schema.remove(schema.get_field_index("reads"))
    before_vfr = before_reads.remove(before_reads.get_field_index("vfr"))
    filled = {schema: {}, before_reads: {"reads": 2}, before_vfr: {"reads": 1, "vfr": None}}.get(table.schema)
    if filled is None:
        return {}  # an older layout: facts are cheap to read again
    return {r["rel"]: {**r, **filled} for r in table.search().limit(None).to_arrow().to_pylist()}


def save(tables: ShardTables, rows: list[dict[str, Any]], previous: dict[str, dict[str, Any]]) -> bool:
    """Replace the cache when it changed. Returns whether it wrote."""
    import pyarrow as pa

    if {r["rel"]: r for r in rows} == previous:
        return False
    data = pa.Table.from_pylist(rows, schema=files_schema())
    table = tables.db.create_table(FILES_TABLE, data=data, mode="overwrite")
    with warnings.catch_warnings():  # LanceDB warns that other readers of old versions would fail: there are none
        warnings.simplefilter("ignore")
        table.optimize(cleanup_older_than=dt.timedelta(0))
    return True
