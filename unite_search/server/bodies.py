"""Request bodies: JSON queries, size limits as the body streams in, and uploaded files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request

from .files import CHUNK
from .http_errors import api_error

QUERY_FIELDS = ("text", "like", "target", "k", "where", "instruction", "exclude")
FORM_SLACK = 1 << 20  # a multipart body may exceed its files by this much (field values, part headers)


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
    except RecursionError:  # a few thousand nested brackets
        raise api_error(400, "the request body is not valid JSON (it nests too deeply)", "bad_json") from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4,300 digits
        raise api_error(400, f"the request body is not valid JSON ({exc})", "bad_json") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


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
        with Image.open(path) as img:
            width, height = img.size  # the header is read on open
    except Image.DecompressionBombError as exc:
        raise api_error(413, f"the image upload has too many pixels to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise api_error(415, f"the image upload cannot be read as an image ({exc})") from None
    # the warning level, compared here: a warnings filter set to "error" is not thread-safe (a request's filter
    # could stay in place for every thread, failing thumbnails of large indexed images)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise api_error(413, f"the image upload has too many pixels to decode safely ({width}x{height}, above {limit})")
