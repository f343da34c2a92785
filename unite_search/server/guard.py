"""Who may reach the server: the bearer token, loopback binding, and the middleware that guards each
request (token, following the index's publishes, request metrics)."""

from __future__ import annotations

import ipaddress
import re
import time

from starlette.routing import Match

from .http_errors import _error
from .state import Server

TOKEN_ENV = "UNITE_SEARCH_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
            if not self.server.addressed_here(scope):
                response = _error(403, "forbidden", "this server answers requests to localhost only (the Host "
                                  "header names another machine: a page made to point here?)")  # fmt: skip
                await response(scope, receive, watched)
                return
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
