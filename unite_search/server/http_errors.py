"""Errors answered as ``{"error": <kind>, "detail": <message>}``."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
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
