"""The state behind the app: the index (followed as ingests publish), the token check, queries,
the uploads folder and the thumbnail cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import IndexMismatchError, StaleReadError
from ..manifest import MANIFEST
from .batcher import QueryBatcher
from .bodies import _check_image, _copy_upload
from .files import THUMB_BYTES_MAX, Digests, _make_thumbnail
from .http_errors import api_error
from .metrics import Metrics

log = logging.getLogger("unite_search.server")
REFRESH_RETRY_S = 2.0  # a newer state that failed to open is tried again this long after


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
        loopback_only: bool = False,
    ):
        self.index = index
        self.token = token
        self.loopback_only = loopback_only
        self.max_image_bytes = max_image_bytes
        self.max_video_bytes = max_video_bytes
        self.max_json_bytes = max_json_bytes
        self.max_batch_queries = max_batch_queries
        self.metrics = Metrics()
        self.digests = Digests()
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
        # None: the first request compares the manifest on disk with the one served (an ingest may have
        # published while the model loaded); after a failed refresh, the next request tries again
        self._stamp = None
        self._retry_at = 0.0  # after a failed refresh, no new try before this time (time.monotonic)
        self.refresh_error: str | None = None  # why the newest state is not served, until it is

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
    def addressed_here(self, scope) -> bool:
        """Whether the request names this machine in its Host header (always, unless ``loopback_only``)."""
        if not self.loopback_only:
            return True
        from .guard import is_loopback

        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
        name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return bool(name) and is_loopback(name)

    def authorized(self, scope) -> bool:
        """Whether a request may pass the token guard. Open: ``/healthz`` and the page's own files (``/``,
        ``/static/...``: no index data in them). ``/media`` and ``/thumbs`` also take ``?token=``, as
        ``<img>`` and ``<video>`` cannot send a header; the API takes only the header."""
        path, prefix = scope["path"], scope.get("root_path", "")
        if prefix and path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] == "/":
            path = path[len(prefix) :]  # served under a path prefix (a proxy, a mount), as the router strips it
        if not self.token or path in ("/healthz", "/") or path.startswith("/static/"):
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                # the header's own bytes (a client sends a non-ASCII token in UTF-8), against the token's UTF-8
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip(" \t").encode("latin-1"), self.token.encode()
                )
        if scope.get("method") in ("GET", "HEAD") and (
            path in ("/media", "/thumbs") or path.startswith(("/media/", "/thumbs/"))
        ):
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
        if stamp is not None and stamp != self._stamp and time.monotonic() >= self._retry_at:
            await run_in_threadpool(self._refresh, stamp)

    def _refresh(self, stamp) -> None:
        from .. import manifest as manifests

        with self._refresh_lock:
            if stamp == self._stamp:
                return  # another request refreshed meanwhile
            try:
                current = manifests.read(Path(self.index.path))
                # not the serial alone: an index removed and built again starts over at serial 1
                if current is not None and manifests.published_state(current) != manifests.published_state(
                    self.index.manifest
                ):
                    self.index.refresh()
                    self.metrics.refreshed()
            except Exception as exc:  # noqa: BLE001  a damaged new state: keep serving the one we have
                why = f"{type(exc).__name__}: {exc}"
                if why != self.refresh_error:  # said once, not at every try
                    log.warning("index not refreshed: %s", why)
                self.refresh_error, self._retry_at = why, time.monotonic() + REFRESH_RETRY_S
                if isinstance(exc, IndexMismatchError):  # built with another model: no use trying this one again
                    self._stamp = stamp
                return
            self._stamp, self.refresh_error = stamp, None

    # ----------------------------------------------------------------- queries
    def hit_json(self, hit, prefix: str) -> dict[str, Any]:
        out = hit.to_dict()
        out.update(self.urls(hit.id, hit.path, hit.modality, prefix))
        return out

    @staticmethod
    def urls(row_id: str, path: str | None, modality: str, prefix: str) -> dict[str, str | None]:
        # an id that is a dot segment ("." or "..") would be resolved away by the browser: named by ?id= then
        tail = ("?id=" if row_id.strip(".") == "" else "/") + quote(row_id, safe="")
        visual = bool({"image", "video"} & set(modality.split("+")))
        return {
            "thumb_url": f"{prefix}/thumbs{tail}" if path and visual else None,
            "media_url": f"{prefix}/media{tail}" if path else None,
        }

    def _plan_and_prepare(self, index, query: dict[str, Any]):
        from ..modality import Item

        plan = index.plan(**query)
        item = Item(query.get("text"), query.get("image"), query.get("video"), query.get("instruction"))
        return plan, index.encoder.prepare(item)

    def _answer(self, index, query: dict[str, Any], vector, plan, explain: bool, prefix: str) -> dict[str, Any]:
        """Search ``index`` (pinned: the state ``plan`` was made on) and answer the hits and the plan."""
        try:
            hits = index.query_batch([query], vectors=[vector])[0]
        except StaleReadError:  # our state was pruned under us: the newest one answers, and explains itself
            self.index.refresh()
            index = self.index.pinned()
            plan, hits = index.plan(**query), index.query_batch([query], vectors=[vector])[0]
        return {"hits": [self.hit_json(h, prefix) for h in hits], "plan": plan.explain() if explain else None}

    def _answer_like(self, index, query: dict[str, Any], explain: bool, prefix: str) -> dict[str, Any]:
        """The answer of a ``like=`` query: it needs no encoding."""
        return self._answer(index, query, None, index.plan(**query), explain, prefix)

    async def run_query(self, query: dict[str, Any], explain: bool, prefix: str) -> dict[str, Any]:
        """Plan, encode (in the batcher, with the queries of other requests) and search, on one published
        state whatever is published meanwhile: the JSON answer."""
        index = self.index.pinned()
        if query.get("like") is not None:  # one hop off the event loop: plan and search, no encoder
            return await run_in_threadpool(self._answer_like, index, query, explain, prefix)
        if query.get("image") is None and query.get("video") is None:
            plan, prepared = await run_in_threadpool(self._plan_and_prepare, index, query)
        else:
            loop = asyncio.get_running_loop()
            plan, prepared = await loop.run_in_executor(self.decode_pool(), self._plan_and_prepare, index, query)
        vector = await asyncio.wrap_future(self.batcher.submit(prepared))
        return await run_in_threadpool(self._answer, index, query, vector, plan, explain, prefix)

    # ----------------------------------------------------------------- uploads
    async def save_upload(self, upload: UploadFile, kind: str, folder: Path) -> str:
        """Copy an uploaded image or video into ``folder``, checking its size and content; its path."""
        from ..corpus import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, sniff

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

    def open_file(self, row: dict[str, Any]) -> tuple[int, os.stat_result, str]:
        """The row's file, open (its descriptor, stat and real path), when it lies inside the corpus folder and
        holds the bytes the row was made from (its sha256 is the row's content_hash); else a 404, the same
        whether the file is absent, outside the corpus or another file. An index's manifest and rows say
        where its corpus lies and which files it holds; the hash keeps an index edited to name other files
        (a shared one, say) from having this server send them."""
        rel = row.get("path")
        missing = api_error(404, f"row {row['id']!r} has no file this server can send (absent, outside the corpus, "
                                 "or changed since it was indexed)")  # fmt: skip
        root = self.index.manifest.get("corpus")
        if not rel or not root or not isinstance(rel, str) or not isinstance(root, str):
            raise missing
        from ..corpus import is_inside

        root_real = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, rel))  # an absolute rel replaces root; checked below
        if not is_inside(real, root_real):
            raise missing
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise missing from None
        try:
            st = os.fstat(fd)
            size = row.get("size")  # (a manifest item's row records none)
            if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
                raise missing
            if self.digests.of(fd, st) != row.get("content_hash"):
                raise missing
        except BaseException:
            os.close(fd)
            raise
        return fd, st, real

    def open_media(self, row_id: str) -> tuple[int, os.stat_result, bytes, str]:
        fd, st, real = self.open_file(self.row_or_404(row_id))
        return fd, st, os.pread(fd, 64, 0), real

    def thumbnail(self, row_id: str) -> bytes:
        row = self.row_or_404(row_id)
        parts = set(row["modality"].split("+"))
        if not parts & {"image", "video"}:
            raise api_error(404, f"row {row_id!r} is a text: it has no thumbnail")
        fd, st, real = self.open_file(row)
        os.close(fd)
        tag = hashlib.sha256(row_id.encode()).hexdigest()[:24]
        cached = self.thumbs_dir / f"{tag}-{st.st_size}-{st.st_mtime_ns}.jpg"
        data = _cached_thumbnail(cached)
        if data is not None:
            return data
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
        from ..store import IndexStore

        payload = IndexStore(self.index.path).info()
        payload["serving_serial"] = self.index.manifest.get("serial", 0)
        payload["refresh_error"] = self.refresh_error
        return payload


def _cached_thumbnail(path: Path) -> bytes | None:
    """A thumbnail this server cached: a JPEG in a plain file, never through a link (its name is predictable
    from a row: a link planted there by whoever edited the index would send the file it leads to)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(THUMB_BYTES_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if data.startswith(b"\xff\xd8\xff") and len(data) <= THUMB_BYTES_MAX else None
