"""``unite-search serve``: an index behind an HTTP API (FastAPI).

>>> app = create_app("indexes/media", token="s3cret")     # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)          # doctest: +SKIP

Endpoints (JSON in and out; OpenAPI docs at ``/docs``):

* ``POST /search``: a JSON object of query fields (``text``, ``like``, ``target``, ``k``, ``where``,
  ``instruction``, ``exclude``, ``explain``), or a multipart form with the same fields and an
  uploaded ``image`` and/or ``video`` file; answers ``{"hits": [...], "plan": ...}``.
* ``POST /search/batch``: ``{"queries": [{...}, ...]}`` -> ``{"results": [{"hits", "plan"}, ...]}``.
* ``GET /items/{id}``, ``GET /media/{id}`` (the original file, HTTP ranges), ``GET /thumbs/{id}``
  (a cached JPEG at most 320 px on the long side), ``GET /info``, ``GET /healthz``, ``GET /metrics``.

Every error is ``{"error": <kind>, "detail": <message>}`` with a 4xx status for bad input. The server
follows the index: when ``manifest.json`` changes (an ingest published), the next request first calls
:meth:`Index.refresh`; a query already running keeps the snapshot it started on. Queries that arrive
together are encoded in one forward pass: each request is preprocessed on a worker thread, then waits
up to ``batch_window_ms`` for others in a queue that a single encoder thread drains, so the event
loop never runs the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .errors import (
    ConfigError,
    IndexDamagedError,
    InputError,
    PlanError,
    StaleReadError,
    UniteError,
)
from .manifest import MANIFEST

__all__ = ["TOKEN_ENV", "create_app", "is_loopback"]

log = logging.getLogger("unite_search.server")

TOKEN_ENV = "UNITE_SEARCH_TOKEN"
THUMB_SIZE = 320  # pixels on the long side
CHUNK = 256 << 10  # bytes per read when sending a file
QUERY_FIELDS = ("text", "like", "target", "k", "where", "instruction", "exclude")
FORM_SLACK = 1 << 20  # a multipart body may exceed its files by this much (field values, part headers)
STATIC = Path(__file__).parent / "static"

_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "unreadable_media",
    500: "internal",
    503: "unavailable",
}


def api_error(status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None):
    """An HTTP error answered as ``{"error": kind, "detail": detail}`` (kind by status unless given)."""
    body = {"error": kind or _KINDS.get(status, "error"), "detail": detail}
    return StarletteHTTPException(status, detail=body, headers=headers)


def _error(status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=dict(headers or {}))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------- metrics
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters the server keeps, written in Prometheus' text format by ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # endpoint -> [sum seconds, count]
        self.batches = 0
        self.batch_items = 0
        self.batch_buckets = [0] * len(BATCH_BUCKETS)
        self.encode_seconds = 0.0
        self.refreshes = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            entry = self.latency.setdefault(endpoint, [0.0, 0])
            entry[0] += seconds
            entry[1] += 1

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.batch_items += size
            self.encode_seconds += seconds
            for i, bound in enumerate(BATCH_BUCKETS):
                if size <= bound:
                    self.batch_buckets[i] += 1

    def refreshed(self) -> None:
        with self._lock:
            self.refreshes += 1

    def render(self, queue_depth: int, shards: Mapping[str, int], serial: int) -> str:
        with self._lock:
            lines = [
                "# HELP unite_search_requests_total HTTP requests answered, by endpoint and status.",
                "# TYPE unite_search_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'unite_search_requests_total{{endpoint="{_label(endpoint)}",status="{status}"}} {n}')
            lines += [
                "# HELP unite_search_request_duration_seconds Time to answer a request, by endpoint.",
                "# TYPE unite_search_request_duration_seconds summary",
            ]
            for endpoint, (total, n) in sorted(self.latency.items()):
                name = _label(endpoint)
                lines.append(f'unite_search_request_duration_seconds_sum{{endpoint="{name}"}} {total:.6f}')
                lines.append(f'unite_search_request_duration_seconds_count{{endpoint="{name}"}} {n}')
            lines += [
                "# HELP unite_search_encoder_batches_total Forward passes of the encoder for queries.",
                "# TYPE unite_search_encoder_batches_total counter",
                f"unite_search_encoder_batches_total {self.batches}",
                "# HELP unite_search_encoder_batch_size Queries encoded per forward pass.",
                "# TYPE unite_search_encoder_batch_size histogram",
            ]
            for bound, n in zip(BATCH_BUCKETS, self.batch_buckets, strict=True):
                lines.append(f'unite_search_encoder_batch_size_bucket{{le="{bound}"}} {n}')
            lines += [
                f'unite_search_encoder_batch_size_bucket{{le="+Inf"}} {self.batches}',
                f"unite_search_encoder_batch_size_sum {self.batch_items}",
                f"unite_search_encoder_batch_size_count {self.batches}",
                "# HELP unite_search_encoder_seconds_total Time spent in encoder forward passes.",
                "# TYPE unite_search_encoder_seconds_total counter",
                f"unite_search_encoder_seconds_total {self.encode_seconds:.6f}",
                "# HELP unite_search_encoder_queue_depth Queries waiting for, or in, an encoder forward pass.",
                "# TYPE unite_search_encoder_queue_depth gauge",
                f"unite_search_encoder_queue_depth {queue_depth}",
                "# HELP unite_search_index_refreshes_total Times the server switched to a newly published index.",
                "# TYPE unite_search_index_refreshes_total counter",
                f"unite_search_index_refreshes_total {self.refreshes}",
            ]
        lines += [
            "# HELP unite_search_index_serial Publish serial of the index state being served.",
            "# TYPE unite_search_index_serial gauge",
            f"unite_search_index_serial {serial}",
            "# HELP unite_search_index_rows Rows per shard of the index state being served.",
            "# TYPE unite_search_index_rows gauge",
        ]
        lines += [f'unite_search_index_rows{{shard="{_label(name)}"}} {rows}' for name, rows in sorted(shards.items())]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ batcher
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
        from .batching import plan_batches

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
            for p, vec in zip(members, vectors, strict=True):
                p.future.set_result(vec)


# ---------------------------------------------------------------------------------------- requests
def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise api_error(400, f"{name} must be true or false, not {value!r}", "bad_query")


def _query_from_json(data: Any, where: str = "the request body") -> tuple[dict[str, Any], bool]:
    """(query arguments, explain) of one JSON query object; a wrong field or type is a 400."""
    if not isinstance(data, dict):
        raise api_error(400, f"{where} must be a JSON object of query fields", "bad_query")
    unknown = sorted(set(data) - {*QUERY_FIELDS, "explain"})
    if unknown:
        media = {"image", "video"} & set(unknown)
        hint = "; images and videos are uploaded as files (multipart/form-data), never named by path" if media else ""
        raise api_error(
            400, f"{where}: unknown field(s) {unknown}; a search takes {[*QUERY_FIELDS, 'explain']}{hint}", "bad_query"
        )
    explain = data.get("explain")
    if explain is not None and not isinstance(explain, bool):
        raise api_error(400, f"explain must be true or false, not {explain!r}", "bad_query")
    query = {key: data[key] for key in QUERY_FIELDS if data.get(key) is not None}
    for key in ("text", "like", "where", "instruction"):
        if key in query and not isinstance(query[key], str):
            raise api_error(400, f"{key} must be a string, not {type(query[key]).__name__}", "bad_query")
    return query, bool(explain)


def _sniffed(head: bytes, path: str) -> str | None:
    """The Content-Type a file's first bytes (and, for texts, its extension) announce."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    ext = Path(path).suffix.lower()
    if ext == ".md":
        return "text/markdown; charset=utf-8"
    if ext == ".txt":
        return "text/plain; charset=utf-8"
    return None


def _content_type(head: bytes, path: str) -> str:
    guessed = _sniffed(head, path) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    return guessed


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end]`` a ``Range`` header asks of a file of ``size`` bytes, or None to send the
    whole file (no header, or one this server ignores as RFC 9110 allows: malformed, several ranges).
    Raises a 416 error (:func:`api_error`) when the range lies past the end of the file."""
    if not header:
        return None
    m = _RANGE.fullmatch(header)
    if not m or not any(m.groups()):
        return None
    first, last = m.groups()
    unsatisfiable = api_error(
        416,
        f"range {header.strip()!r} lies outside the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not first:  # bytes=-N: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise unsatisfiable
    return start, min(int(last), size - 1) if last else size - 1


def _file_chunks(fd: int, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of an open file from ``start``; closes the file when done or abandoned."""
    try:
        left = length
        while left > 0:
            chunk = os.pread(fd, min(CHUNK, left), start)
            if not chunk:
                return
            start += len(chunk)
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------- server
class Server:
    """The state behind the app: the index, the batcher, metrics, upload and thumbnail folders."""

    def __init__(
        self,
        index,
        *,
        token: str | None,
        max_image_bytes: int,
        max_video_bytes: int,
        batch_window_ms: float,
        max_batch: int,
        max_json_bytes: int,
        max_batch_queries: int,
        decode_workers: int,
        upload_dir: str | os.PathLike | None,
        thumbs_dir: str | os.PathLike | None,
    ):
        self.index = index
        self.token = token
        self.max_image_bytes = max_image_bytes
        self.max_video_bytes = max_video_bytes
        self.max_json_bytes = max_json_bytes
        self.max_batch_queries = max_batch_queries
        self.metrics = Metrics()
        self.batcher = QueryBatcher(index, batch_window_ms / 1000.0, max_batch, self.metrics)
        # Query images and videos are decoded and preprocessed by a few threads, not one per request:
        # more would not encode faster (the batcher is the one consumer), only hold more frames at once.
        self.decode_workers = decode_workers
        self._decode_pool: ThreadPoolExecutor | None = None
        self.own_upload_dir = upload_dir is None  # a temporary folder made on the first upload, gone at shutdown
        self.upload_dir = Path(upload_dir) if upload_dir is not None else None
        self._upload_lock = threading.Lock()
        self.thumbs_dir = Path(thumbs_dir) if thumbs_dir is not None else Path(index.path) / "thumbs"
        self._refresh_lock = threading.Lock()
        self._stamp = self._manifest_stamp()

    def upload_folder(self) -> Path:
        """A new folder for one request's uploads (removed by the request)."""
        with self._upload_lock:
            if self.upload_dir is None:
                self.upload_dir = Path(tempfile.mkdtemp(prefix="unite-search-uploads-"))
            self.upload_dir.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(dir=self.upload_dir))

    def decode_pool(self) -> ThreadPoolExecutor:
        with self._upload_lock:
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="unite-search-decode")
            return self._decode_pool

    def close_decode_pool(self) -> None:
        with self._upload_lock:
            pool, self._decode_pool = self._decode_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def remove_upload_dir(self) -> None:
        with self._upload_lock:
            if self.own_upload_dir and self.upload_dir is not None:
                shutil.rmtree(self.upload_dir, ignore_errors=True)
                self.upload_dir = None

    # ------------------------------------------------------------------ guards
    def authorized(self, scope) -> bool:
        """Whether a request may pass the token guard. Open: ``/healthz`` and the page's own files (``/``,
        ``/static/...``: no index data in them). ``/media`` and ``/thumbs`` also take ``?token=``, as
        ``<img>`` and ``<video>`` cannot send a header; the API takes only the header."""
        path = scope["path"]
        if not self.token or path in ("/healthz", "/") or path.startswith("/static/"):
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())
        if scope.get("method") in ("GET", "HEAD") and path.startswith(("/media/", "/thumbs/")):
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())
        return False

    def _manifest_stamp(self):
        try:
            st = os.stat(Path(self.index.path) / MANIFEST)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    async def follow(self) -> None:
        """Refresh the index when ``manifest.json`` changed since the last look (a stat: cheap)."""
        stamp = self._manifest_stamp()
        if stamp is not None and stamp != self._stamp:
            await run_in_threadpool(self._refresh, stamp)

    def _refresh(self, stamp) -> None:
        from . import manifest as manifests

        with self._refresh_lock:
            if stamp == self._stamp:
                return  # another request refreshed meanwhile
            try:
                current = manifests.read(Path(self.index.path))
                if current is not None and current.get("serial", 0) != self.index.manifest.get("serial", 0):
                    self.index.refresh()
                    self.metrics.refreshed()
            except Exception as exc:  # noqa: BLE001  a damaged new state: keep serving the one we have
                log.warning("index not refreshed: %s", exc)
            self._stamp = stamp

    # ----------------------------------------------------------------- queries
    def hit_json(self, hit, prefix: str) -> dict[str, Any]:
        out = hit.to_dict()
        out.update(self.urls(hit.id, hit.path, hit.modality, prefix))
        return out

    @staticmethod
    def urls(row_id: str, path: str | None, modality: str, prefix: str) -> dict[str, str | None]:
        quoted = quote(row_id, safe="")
        visual = bool({"image", "video"} & set(modality.split("+")))
        return {
            "thumb_url": f"{prefix}/thumbs/{quoted}" if path and visual else None,
            "media_url": f"{prefix}/media/{quoted}" if path else None,
        }

    def _plan_and_prepare(self, query: dict[str, Any]):
        from .modality import Item

        plan = self.index.plan(**query)
        item = Item(query.get("text"), query.get("image"), query.get("video"), query.get("instruction"))
        return plan, self.index.encoder.prepare(item)

    def _search(self, query: dict[str, Any], vector) -> list:
        try:
            return self.index.query_batch([query], vectors=[vector])[0]
        except StaleReadError:  # our snapshot was pruned under us: the newest one answers
            self.index.refresh()
            return self.index.query_batch([query], vectors=[vector])[0]

    def _answer(self, query: dict[str, Any], vector, plan, explain: bool, prefix: str) -> dict[str, Any]:
        hits = self._search(query, vector)
        return {"hits": [self.hit_json(h, prefix) for h in hits], "plan": plan.explain() if explain else None}

    def _answer_like(self, query: dict[str, Any], explain: bool, prefix: str) -> dict[str, Any]:
        """The answer of a ``like=`` query: it needs no encoding."""
        return self._answer(query, None, self.index.plan(**query), explain, prefix)

    async def run_query(self, query: dict[str, Any], explain: bool, prefix: str) -> dict[str, Any]:
        """Plan, encode (in the batcher, with the queries of other requests) and search: the JSON answer."""
        if query.get("like") is not None:  # one hop off the event loop: plan and search, no encoder
            return await run_in_threadpool(self._answer_like, query, explain, prefix)
        if query.get("image") is None and query.get("video") is None:
            plan, prepared = await run_in_threadpool(self._plan_and_prepare, query)
        else:
            loop = asyncio.get_running_loop()
            plan, prepared = await loop.run_in_executor(self.decode_pool(), self._plan_and_prepare, query)
        vector = await asyncio.wrap_future(self.batcher.submit(prepared))
        return await run_in_threadpool(self._answer, query, vector, plan, explain, prefix)

    # ----------------------------------------------------------------- uploads
    async def save_upload(self, upload: UploadFile, kind: str, folder: Path) -> str:
        """Copy an uploaded image or video into ``folder``, checking its size and content; its path."""
        from .corpus import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, sniff

        limit = self.max_image_bytes if kind == "image" else self.max_video_bytes
        ext = Path(upload.filename or "").suffix.lower()
        known = IMAGE_EXTENSIONS if kind == "image" else VIDEO_EXTENSIONS
        path = folder / f"{kind}{ext if ext in known else ''}"
        total, head = await run_in_threadpool(_copy_upload, upload.file, path, limit, kind)
        if total == 0:
            raise api_error(400, f"the {kind} upload is empty", "bad_input")
        found = sniff(head)
        if found != kind:
            what = f"an {found}" if found == "image" else f"a {found}" if found else "no image or video format we read"
            raise api_error(
                415, f"the {kind} upload is not {'an' if kind == 'image' else 'a'} {kind}: its content is {what}"
            )
        if kind == "image":
            await run_in_threadpool(_check_image, str(path))
        return str(path)

    # ----------------------------------------------------------------- files
    def row_or_404(self, row_id: str) -> dict[str, Any]:
        row = self.index.row(row_id)
        if row is None:
            raise api_error(404, f"no row with id {row_id!r} in this index")
        return row

    def file_of(self, row: dict[str, Any]) -> str:
        """The row's file, symlinks resolved, when it lies inside the corpus folder; else a 404."""
        rel = row.get("path")
        missing = api_error(404, f"row {row['id']!r} has no file this server can send")
        if not rel:
            raise missing
        from .corpus import is_inside

        root = self.index.manifest.get("corpus")
        if not root:
            raise missing
        root_real = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, rel))  # an absolute rel replaces root; checked below
        if not is_inside(real, root_real) or not os.path.isfile(real):
            raise missing  # the same answer whether the file is outside or absent
        return real

    def open_media(self, row_id: str) -> tuple[int, os.stat_result, bytes, str]:
        row = self.row_or_404(row_id)
        real = self.file_of(row)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise api_error(404, f"row {row_id!r} has no file this server can send") from None
        st = os.fstat(fd)
        return fd, st, os.pread(fd, 64, 0), real

    def thumbnail(self, row_id: str) -> bytes:
        row = self.row_or_404(row_id)
        parts = set(row["modality"].split("+"))
        if not parts & {"image", "video"}:
            raise api_error(404, f"row {row_id!r} is a text: it has no thumbnail")
        real = self.file_of(row)
        st = os.stat(real)
        tag = hashlib.sha256(row_id.encode()).hexdigest()[:24]
        cached = self.thumbs_dir / f"{tag}-{st.st_size}-{st.st_mtime_ns}.jpg"
        with contextlib.suppress(OSError):
            return cached.read_bytes()
        data = _make_thumbnail(real, row, "video" in parts)
        self._store_thumbnail(cached, tag, data)
        return data

    def _store_thumbnail(self, path: Path, tag: str, data: bytes) -> None:
        """Cache a thumbnail, replacing those of earlier versions of the file; a read-only index just skips it."""
        try:
            self.thumbs_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.thumbs_dir, prefix=".tmp-", suffix=".jpg")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            for old in self.thumbs_dir.glob(f"{tag}-*.jpg"):
                if old != path:
                    with contextlib.suppress(OSError):
                        old.unlink()
        except OSError as exc:
            log.warning("thumbnail not cached in %s: %s", self.thumbs_dir, exc)

    def info(self) -> dict[str, Any]:
        from .store import IndexStore

        payload = IndexStore(self.index.path).info()
        payload["serving_serial"] = self.index.manifest.get("serial", 0)
        return payload


def _copy_upload(source, path: Path, limit: int, kind: str) -> tuple[int, bytes]:
    """Copy an upload (already spooled by the form parser) to ``path``: (bytes, its first 64 bytes)."""
    source.seek(0)
    total, head = 0, b""
    with open(path, "wb") as out:
        while chunk := source.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise api_error(413, f"the {kind} upload is larger than {limit} bytes (the server's limit)")
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
            out.write(chunk)
    return total, head


def _check_image(path: str) -> None:
    """An uploaded image must open with PIL, within its decompression-bomb limit (warning level included)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.size  # noqa: B018  the header is read on open
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise api_error(413, f"the image upload has too many pixels to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise api_error(415, f"the image upload cannot be read as an image ({exc})") from None


def _make_thumbnail(path: str, row: dict[str, Any], video: bool) -> bytes:
    import io

    from PIL import Image, ImageOps

    from .image import to_rgb

    try:
        if video:
            img = Image.fromarray(_middle_frame(path, row))
        else:
            with Image.open(path) as opened:
                opened.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a reduced scale
                img = ImageOps.exif_transpose(opened) or opened
                img.load()
        img = to_rgb(img)
        img.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()
    except InputError as exc:
        raise api_error(422, f"no thumbnail: {exc.reason}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise api_error(422, f"no thumbnail: the file cannot be decoded ({exc})") from None


def _middle_frame(path: str, row: dict[str, Any]):
    """A frame from the middle of a video row's time range."""
    from .settings import EncoderSettings
    from .video import read_frames

    settings = EncoderSettings(frames=2)
    start = row.get("start") or 0.0
    end = row.get("end") if row.get("end") is not None else row.get("duration")
    if end is not None and end > start:
        with contextlib.suppress(InputError):  # a range too short to hold a frame after its middle
            frames, _ = read_frames(path, settings, start=(start + end) / 2, end=end)
            return frames[0]
    frames, _ = read_frames(path, settings, start=None, end=None)
    return frames[0]


# ------------------------------------------------------------------------------------------ the app
class _Guard:
    """ASGI middleware: bearer token, following the index's publishes, request metrics."""

    def __init__(self, app, server: Server, routes):
        self.app = app
        self.server = server
        self.routes = routes

    def endpoint(self, scope) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return re.sub(r":\w+\}", "}", getattr(route, "path", None) or "other")
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if not self.server.authorized(scope):
                response = _error(
                    401, "unauthorized", "this server needs an 'Authorization: Bearer <token>' header",
                    {"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
                await response(scope, receive, watched)
                return
            await self.server.follow()
            await self.app(scope, receive, watched)
        finally:
            self.server.metrics.request(self.endpoint(scope), status, time.perf_counter() - start)


def _limited(request: Request, limit: int) -> Request:
    """The request with a body that may not exceed ``limit`` bytes (413 past it, as it streams in)."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise api_error(413, f"the request body is larger than {limit} bytes (the server's limit)")
        return message

    return Request(request.scope, receive)


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _json_body(request: Request, limit: int) -> Any:
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise api_error(413, f"the request body is larger than {limit} bytes (the server's limit)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise api_error(413, f"the request body is larger than {limit} bytes (the server's limit)")
    try:
        return json.loads(bytes(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise api_error(400, f"the request body is not valid JSON ({exc})", "bad_json") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


_SEARCH_FIELDS = {
    "text": {"type": "string", "description": "Query text (alone, or composed with an image or video)."},
    "like": {"type": "string", "description": "Search with a stored row's vector (more like this row id)."},
    "target": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "Shard(s) to search: text, image, video, image+text..., or all.",
    },
    "k": {"type": "integer", "minimum": 1, "default": 10, "description": "Results to return."},
    "where": {"type": "string", "description": "One SQL condition on stored columns, e.g. width >= 1000."},
    "instruction": {"type": "string", "description": "Task instruction prepended to the text."},
    "exclude": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "Row id(s) to leave out.",
    },
    "explain": {"type": "boolean", "default": False, "description": "Also answer the query plan, in words."},
}
_SEARCH_SCHEMA = {"type": "object", "properties": _SEARCH_FIELDS, "additionalProperties": False}
_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        **_SEARCH_FIELDS,
        "image": {"type": "string", "format": "binary", "description": "Query image file."},
        "video": {"type": "string", "format": "binary", "description": "Query video file."},
    },
}
_HIT_SCHEMA = {"type": "object", "description": "Hit.to_dict() with thumb_url and media_url (null without a file)."}
_RESULT_SCHEMA = {
    "type": "object",
    "properties": {"hits": {"type": "array", "items": _HIT_SCHEMA}, "plan": {"type": ["string", "null"]}},
}


def create_app(
    index,
    *,
    token: str | None = None,
    max_image_bytes: int = 20 << 20,
    max_video_bytes: int = 200 << 20,
    batch_window_ms: float = 5,
    max_batch: int = 32,
    max_json_bytes: int = 1 << 20,
    max_batch_queries: int = 64,
    decode_workers: int | None = None,
    upload_dir: str | os.PathLike | None = None,
    thumbs_dir: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: Any = "auto",
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    encoder=None,
) -> FastAPI:
    """The HTTP API of an index (a path, opened with ``device``/``dtype``/``model``/``adapter``/``encoder``,
    or an open :class:`~unite_search.Index`).

    ``token`` (default: the ``UNITE_SEARCH_TOKEN`` environment variable) makes every endpoint but
    ``/healthz`` require ``Authorization: Bearer <token>``. Uploads above ``max_image_bytes`` /
    ``max_video_bytes`` are refused (413); they are kept in ``upload_dir`` (default: a new temporary
    folder) only while their request runs. Thumbnails are cached in ``thumbs_dir`` (default
    ``<index>/thumbs``). Queries arriving within ``batch_window_ms`` of each other share a forward
    pass of at most ``max_batch`` queries. Query images and videos are decoded by ``decode_workers``
    threads (default: the number of cores, at most 4), however many requests send them at once.
    """
    from .index import Index

    if not isinstance(index, Index):
        index = Index.open(index, device=device, dtype=dtype, model=model, adapter=adapter, encoder=encoder)
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if batch_window_ms < 0 or max_batch < 1:
        raise ConfigError("need batch_window_ms >= 0 and max_batch >= 1")
    if decode_workers is None:
        decode_workers = min(4, os.cpu_count() or 1)
    if decode_workers < 1:
        raise ConfigError(f"decode_workers must be at least 1, not {decode_workers}")
    server = Server(
        index, token=token, max_image_bytes=max_image_bytes, max_video_bytes=max_video_bytes,
        batch_window_ms=batch_window_ms, max_batch=max_batch, max_json_bytes=max_json_bytes,
        max_batch_queries=max_batch_queries, decode_workers=decode_workers, upload_dir=upload_dir,
        thumbs_dir=thumbs_dir,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.batcher.close()
        server.close_decode_pool()
        server.remove_upload_dir()

    app = FastAPI(
        title="unite-search",
        summary="Vector search over text, images and videos with the UNITE encoder.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(_Guard, server=server, routes=lambda: app.router.routes)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.detail, dict):  # ours, from api_error
            return _error(exc.status_code, exc.detail["error"], exc.detail["detail"], exc.headers)
        return _error(exc.status_code, _KINDS.get(exc.status_code, "error"), str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(400, "bad_request", "; ".join(str(e.get("msg")) for e in exc.errors()) or "bad request")

    @app.exception_handler(UniteError)
    async def unite_error(request: Request, exc: UniteError):
        if isinstance(exc, PlanError | ConfigError):
            return _error(400, "bad_query", str(exc))
        if isinstance(exc, InputError):
            return _error(400, "bad_input", str(exc))
        if isinstance(exc, StaleReadError):
            return _error(503, "unavailable", str(exc))
        kind = "index_damaged" if isinstance(exc, IndexDamagedError) else "internal"
        log.error("request failed: %s", exc)
        return _error(500, kind, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("request failed", exc_info=exc)
        return _error(500, "internal", f"internal error ({type(exc).__name__}); the server log has the details")

    # ------------------------------------------------------------------ search
    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    async def read_search(request: Request, folder_box: list) -> tuple[dict[str, Any], bool]:
        kind = _media_type(request)
        if kind in ("", "application/json") or kind.endswith("+json"):
            return _query_from_json(await _json_body(request, server.max_json_bytes))
        if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise api_error(
                415, f"send a search as application/json or multipart/form-data, not {kind}", "unsupported_media_type"
            )
        limit = server.max_image_bytes + server.max_video_bytes + FORM_SLACK
        declared = _declared_length(request)
        if declared is not None and declared > limit:
            raise api_error(413, f"the request body is larger than {limit} bytes (the server's limit)")
        async with _limited(request, limit).form(max_files=2, max_fields=64, max_part_size=1 << 20) as form:
            query: dict[str, Any] = {}
            explain = False
            for key in sorted(set(form.keys())):
                values = form.getlist(key)
                if key in ("image", "video"):
                    if len(values) != 1 or not isinstance(values[0], UploadFile):
                        raise api_error(400, f"{key} must be one uploaded file", "bad_query")
                    if not folder_box:
                        folder_box.append(server.upload_folder())
                    query[key] = await server.save_upload(values[0], key, folder_box[0])
                    continue
                if any(isinstance(v, UploadFile) for v in values):
                    raise api_error(400, f"{key} is a form field, not a file", "bad_query")
                values = [v for v in values if v.strip()]  # a blank field is a field not filled in
                if key not in (*QUERY_FIELDS, "explain"):
                    raise api_error(
                        400, f"unknown field {key!r}; a search takes {[*QUERY_FIELDS, 'explain', 'image', 'video']}",
                        "bad_query",
                    )  # fmt: skip
                if not values:
                    continue
                if key in ("target", "exclude"):
                    parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
                    query[key] = parts[0] if len(parts) == 1 and key == "target" else parts
                    continue
                if len(values) > 1:
                    raise api_error(400, f"{key} is given {len(values)} times", "bad_query")
                value = values[0]
                if key == "explain":
                    explain = _parse_bool("explain", value)
                elif key == "k":
                    try:
                        query["k"] = int(value)
                    except ValueError:
                        raise api_error(400, f"k must be a positive integer, not {value!r}", "bad_query") from None
                else:
                    query[key] = value
        return query, explain

    @app.post(
        "/search",
        summary="Search with text, an uploaded image or video, a combination, or like=<row id>",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _SEARCH_SCHEMA},
                    "multipart/form-data": {"schema": _FORM_SCHEMA},
                },
            },
            "responses": {"200": {"content": {"application/json": {"schema": _RESULT_SCHEMA}}}},
        },
    )
    async def search(request: Request):
        folder_box: list[Path] = []
        try:
            query, explain = await read_search(request, folder_box)
            return JSONResponse(await server.run_query(query, explain, prefix(request)))
        finally:
            for folder in folder_box:
                shutil.rmtree(folder, ignore_errors=True)

    @app.post(
        "/search/batch",
        summary="Several JSON searches in one request; they share encoder batches",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"queries": {"type": "array", "items": _SEARCH_SCHEMA}},
                            "required": ["queries"],
                        }
                    }
                },
            }
        },
    )
    async def search_batch(request: Request):
        kind = _media_type(request)
        if kind not in ("", "application/json") and not kind.endswith("+json"):
            raise api_error(415, f"send a batch as application/json, not {kind}")
        data = await _json_body(request, server.max_json_bytes)
        if not isinstance(data, dict) or set(data) != {"queries"} or not isinstance(data["queries"], list):
            raise api_error(400, 'a batch is a JSON object {"queries": [query, ...]}', "bad_query")
        queries = data["queries"]
        if not queries or len(queries) > server.max_batch_queries:
            raise api_error(
                400, f"a batch holds 1 to {server.max_batch_queries} queries, not {len(queries)}", "bad_query"
            )
        parsed = [_query_from_json(q, f"query {i}") for i, q in enumerate(queries)]
        tasks = [server.run_query(q, explain, prefix(request)) for q, explain in parsed]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, (PlanError, ConfigError, InputError)):
                kind = "bad_input" if isinstance(result, InputError) else "bad_query"
                raise api_error(400, f"query {i}: {result}", kind)
            if isinstance(result, BaseException):
                raise result
        return JSONResponse({"results": results})

    # ------------------------------------------------------------------- rows
    @app.get("/items/{row_id:path}", summary="A stored row: every column but the vector")
    async def item(row_id: str):
        return await run_in_threadpool(server.row_or_404, row_id)

    @app.head("/media/{row_id:path}", include_in_schema=False)
    @app.get("/media/{row_id:path}", summary="The row's original file (HTTP ranges)")
    async def media(row_id: str, request: Request):
        fd, st, head, real = await run_in_threadpool(server.open_media, row_id)
        try:
            size = st.st_size
            wanted = parse_range(request.headers.get("range"), size)
        except BaseException:
            os.close(fd)
            raise
        headers = {
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            "ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        }
        start, end, status = 0, size - 1, 200
        if wanted is not None:
            (start, end), status = wanted, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(max(0, end - start + 1))
        media_type = _content_type(head, real)
        if request.method == "HEAD":
            os.close(fd)
            return Response(status_code=status, headers=headers, media_type=media_type)
        return StreamingResponse(
            _file_chunks(fd, start, end - start + 1), status_code=status, headers=headers, media_type=media_type
        )

    @app.get(
        "/thumbs/{row_id:path}",
        summary="A JPEG thumbnail of an image or video row (at most 320 px); 404 for texts",
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def thumb(row_id: str):
        data = await run_in_threadpool(server.thumbnail, row_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # ------------------------------------------------------------------ state
    @app.get("/info", summary="Shards, rows, model, settings and the last ingest run with its failures")
    async def info():
        return await run_in_threadpool(server.info)

    @app.get("/healthz", summary="Liveness: always {ok: true}; needs no token")
    async def healthz():
        return {"ok": True}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        text = server.metrics.render(server.batcher.depth, index.shards, int(index.manifest.get("serial", 0)))
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    page = STATIC / "index.html"
    if page.is_file():
        from fastapi.responses import FileResponse
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def home_page():
            return FileResponse(page, media_type="text/html")

    else:

        @app.get("/", summary="What this server is, and where its docs are")
        async def home():
            return {"name": "unite-search", "docs": "/docs", "openapi": "/openapi.json", "search": "POST /search"}

    return app


def _version() -> str:
    from . import __version__

    return __version__
