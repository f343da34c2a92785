"""The FastAPI app of an index: its routes, error handlers and OpenAPI schemas."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import (
    ConfigError,
    IndexDamagedError,
    IndexMismatchError,
    InputError,
    ModelLoadError,
    PlanError,
    StaleReadError,
    UniteError,
    UnknownRowError,
)
from .bodies import (
    FORM_SLACK,
    QUERY_FIELDS,
    _declared_length,
    _json_body,
    _limited,
    _media_type,
    _parse_bool,
    _query_from_json,
)
from .files import _content_type, _file_chunks, parse_range
from .guard import TOKEN_ENV, _Guard
from .http_errors import _KINDS, _error, api_error
from .state import Server

log = logging.getLogger("unite_search.server")
STATIC = Path(__file__).parent.parent / "static"


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
    gpu_search: bool = False,
    loopback_only: bool = False,
) -> FastAPI:
    """The HTTP API of an index (a path, opened with ``device``/``dtype``/``model``/``adapter``/``encoder``,
    or an open :class:`~unite_search.Index`).

    ``token`` (default: the ``UNITE_SEARCH_TOKEN`` environment variable) makes every endpoint but
    ``/healthz`` and the search page's own files (``/``, ``/static/...``) require ``Authorization: Bearer
    <token>``. Uploads above ``max_image_bytes`` /
    ``max_video_bytes`` are refused (413); they are kept in ``upload_dir`` (default: a new temporary
    folder) only while their request runs. Thumbnails are cached in ``thumbs_dir`` (default
    ``<index>/thumbs``). Queries arriving within ``batch_window_ms`` of each other share a forward
    pass of at most ``max_batch`` queries. Query images and videos are decoded by ``decode_workers``
    threads (default: the number of cores, at most 4), however many requests send them at once.
    ``gpu_search`` (a path only): see :meth:`unite_search.Index.open`. ``loopback_only``: answer only
    requests addressed to this machine by name (a ``Host`` of localhost, 127.0.0.1 or ::1), so that a
    web page whose name was made to point here (DNS rebinding) cannot read the index through a
    visitor's browser; ``unite-search serve`` sets it when it serves the loopback without a token.
    """
    from ..index import Index

    if not isinstance(index, Index):
        index = Index.open(
            index, device=device, dtype=dtype, model=model, adapter=adapter, encoder=encoder, gpu_search=gpu_search
        )
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
        thumbs_dir=thumbs_dir, loopback_only=loopback_only,
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
        if isinstance(exc, UnknownRowError):
            return _error(404, "not_found", str(exc))
        if isinstance(exc, PlanError | ConfigError):
            return _error(400, "bad_query", str(exc))
        if isinstance(exc, InputError):
            return _error(400, "bad_input", str(exc))
        # pruned under us; rebuilt for another model; the model cannot load (its folder moved: like= still works)
        if isinstance(exc, StaleReadError | IndexMismatchError | ModelLoadError):
            return _error(503, "unavailable", str(exc))
        kind = "index_damaged" if isinstance(exc, IndexDamagedError) else "internal"
        log.error("request failed: %s", exc)
        return _error(500, kind, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):
        return Response(status_code=499)  # nobody reads it: counted apart from the server's own errors

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
        except InputError as exc:
            if folder_box and os.fspath(folder_box[0]) in str(exc.source or ""):  # not the server's own folders
                raise exc.located(f"the {Path(str(exc.source)).stem} upload") from None
            raise
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
            if isinstance(result, UnknownRowError):
                raise api_error(404, f"query {i}: {result}")
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

    # the same two by ?id=, for the ids a path segment cannot carry: a browser resolves "/media/.." to "/"
    @app.head("/media", include_in_schema=False)
    @app.get("/media", summary="The file of the row ?id= names (for ids such as '.' and '..')")
    async def media_by_id(id: str, request: Request):
        return await media(id, request)

    @app.get("/thumbs", summary="The thumbnail of the row ?id= names (for ids such as '.' and '..')")
    async def thumb_by_id(id: str):
        return await thumb(id)

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
    from .. import __version__

    return __version__
