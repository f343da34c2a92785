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

The package, one concept a module: :mod:`.app` (the FastAPI app: routes, error handlers, OpenAPI
schemas), :mod:`.state` (:class:`Server`, the state behind it), :mod:`.batcher` (queries encoded
together), :mod:`.metrics` (Prometheus text), :mod:`.guard` (token and request metrics middleware),
:mod:`.bodies` (request bodies and uploads), :mod:`.files` (sending files, byte ranges, thumbnails)
and :mod:`.http_errors` (``{"error", "detail"}`` answers).
"""

from __future__ import annotations

from .app import create_app
from .files import parse_range
from .guard import TOKEN_ENV, is_loopback

__all__ = ["TOKEN_ENV", "create_app", "is_loopback", "parse_range"]
