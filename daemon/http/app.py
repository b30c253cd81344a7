"""The Starlette application: the API key gate, /healthz and the hooks, plus routes others add.

Every endpoint asks for `http.api_key` (as `X-Api-Key: KEY` or `?apikey=KEY`, the way Sonarr and
Radarr send custom headers and URLs), except /healthz and Bazarr's two (/asr, /detect-language:
Bazarr cannot send a key) unless `http.asr_requires_key` is set. Without a configured key (only
allowed on a loopback address) nothing is asked.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.config import Config
from daemon.intake import Intake

log = logging.getLogger("subwatch.http")

OPEN_PATHS = frozenset({"/healthz"})
ASR_PATHS = frozenset({"/asr", "/detect-language"})  # Bazarr's, served by daemon.http.bazarr


@dataclass(frozen=True)
class HttpContext:
    """What the endpoints reach in the running daemon."""

    config: Callable[[], Config]  # the config in force (a reload replaces it)
    healthy: Callable[[], bool]  # the systemd watchdog's check: the pipeline is not wedged
    intake: Intake  # hooked files go in as watched ones do


def build_app(context: HttpContext, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Given the daemon's context and routes others add (Bazarr's), return the application."""
    from daemon.http.hooks import hook_routes

    async def healthz(request: Request) -> Response:
        if context.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "wedged", "detail": "a transcriber has made no progress for an hour"},
                            status_code=503)

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET", "HEAD"])]
    routes += hook_routes(context)
    routes += list(extra_routes)
    app = Starlette(routes=routes)
    app.add_middleware(ApiKeyGate, config=context.config)
    return app


class ApiKeyGate:
    """ASGI middleware: a request without the configured key gets 401 (see the module)."""

    def __init__(self, app: ASGIApp, config: Callable[[], Config]) -> None:
        self.app = app
        self._config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(Request(scope)):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "missing or wrong API key: send it as the X-Api-Key header or ?apikey="},
            status_code=401)
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        http = self._config().http
        if http is None or http.api_key is None:
            return True
        path = request.url.path.rstrip("/") or "/"
        if path in OPEN_PATHS or (path in ASR_PATHS and not http.asr_requires_key):
            return True
        given = request.headers.get("x-api-key") or request.query_params.get("apikey") or ""
        if hmac.compare_digest(given.encode(), http.api_key.reveal().encode()):
            return True
        log.warning("refused %s %s from %s: missing or wrong API key", request.method, path,
                    request.client.host if request.client else "?")
        return False
