"""The Starlette application: the API key gate, /healthz and the hooks, plus routes others add.

Every endpoint asks for `http.api_key` (as `X-Api-Key: KEY` or `?apikey=KEY`, the way Sonarr and
Radarr send custom headers and URLs), except /healthz and Bazarr's two (/asr, /detect-language:
Bazarr cannot send a key) unless `http.asr_requires_key` is set, and /metrics when
`http.metrics_without_key` is. Without a configured key (only allowed on a loopback address)
nothing is asked.

A browser gives the key once (`POST /key`, or `/?apikey=KEY`) and gets a cookie made from it
(`page_cookie`: HttpOnly, SameSite=Strict, so only this site's own pages send it back). A request
the cookie lets in that changes something (a POST) must also come from this site's own page: a
browser's Origin and Sec-Fetch-Site headers are checked, and a cross-site one gets 403. A request
with the key in the X-Api-Key header cannot be forged cross-site (a custom header makes the browser
ask first, and nothing here answers CORS preflights).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.config import Config
from daemon.intake import Intake

if TYPE_CHECKING:
    from daemon.queue import JobQueue
    from daemon.subtitles import SidecarLedger
    from daemon.transcribe.store import ModelStore
    from daemon.transcribers import Activity

log = logging.getLogger("subwatch.http")

OPEN_PATHS = frozenset({"/healthz", "/key"})  # /key checks the key itself
COOKIE = "subwatch_key"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ASR_PATHS = frozenset({"/asr", "/detect-language"})  # Bazarr's, served by daemon.http.bazarr


@dataclass(frozen=True)
class HttpContext:
    """What the endpoints reach in the running daemon."""

    config: Callable[[], Config]  # the config in force (a reload replaces it)
    healthy: Callable[[], bool]  # the systemd watchdog's check: the pipeline is not wedged
    intake: Intake  # hooked files go in as watched ones do
    daemon: DaemonView | None = None  # the status page, /api and /metrics; without it they are not served


@dataclass(frozen=True)
class DaemonView:
    """What the status page, /api and /metrics read and act on in the running daemon."""

    jobs: JobQueue
    ledger: SidecarLedger  # forget goes through it: it removes the folders subwatch made
    models: ModelStore
    activities: Callable[[], list[tuple[str, Activity]]]  # (worker device, what it does now)
    wake: Callable[[], None]  # a retried job is due now: the loader looks at once


def page_cookie(api_key: str) -> str:
    """Given the API key, return the status page's cookie value: derived from the key, not the key
    itself, so the cookie does not give the key away, and changing the key ends every cookie."""
    return hmac.new(api_key.encode(), b"subwatch status page", hashlib.sha256).hexdigest()


def build_app(context: HttpContext, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Given the daemon's context and routes others add (Bazarr's), return the application."""
    from daemon.http.hooks import hook_routes
    from daemon.http.page import key_routes

    async def healthz(request: Request) -> Response:
        if context.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "wedged", "detail": "a transcriber has made no progress for an hour"},
                            status_code=503)

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET", "HEAD"])]
    routes += hook_routes(context)
    routes += key_routes(context)
    if context.daemon is not None:
        from daemon.http.api import api_routes
        from daemon.http.metrics import metrics_routes
        from daemon.http.page import page_routes

        routes += page_routes(context, context.daemon)
        routes += api_routes(context, context.daemon)
        routes += metrics_routes(context.daemon)
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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        verdict = self._verdict(request)
        if verdict == "ok":
            await self.app(scope, receive, send)
            return
        path = request.url.path.rstrip("/") or "/"
        if verdict == "cross-site":
            response: Response = JSONResponse(
                {"error": "refused: this request came from another site's page"}, status_code=403)
        elif path == "/" and request.method in SAFE_METHODS:
            from daemon.http.page import key_prompt  # the page asks for the key once

            response = key_prompt(wrong=False, status_code=401)
        else:
            response = JSONResponse(
                {"error": "missing or wrong API key: send it as the X-Api-Key header or ?apikey="},
                status_code=401)
        await response(scope, receive, send)

    def _verdict(self, request: Request) -> str:
        """Return "ok", "no key" or "cross-site" (the cookie let it in, but another site sent it)."""
        http = self._config().http
        if http is None or http.api_key is None:
            return "ok" if request.method in SAFE_METHODS or not cross_site(request) else "cross-site"
        path = request.url.path.rstrip("/") or "/"
        if path in OPEN_PATHS or (path in ASR_PATHS and not http.asr_requires_key):
            return "ok"
        if path == "/metrics" and http.metrics_without_key:
            return "ok"
        key = http.api_key.reveal()
        given = request.headers.get("x-api-key") or request.query_params.get("apikey") or ""
        if hmac.compare_digest(given.encode(), key.encode()):
            return "ok"
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), page_cookie(key).encode()):
            return "ok" if request.method in SAFE_METHODS or not cross_site(request) else "cross-site"
        if path != "/":  # the page opened without the key only asks for it: nothing to warn of
            log.warning("refused %s %s from %s: missing or wrong API key", request.method, path,
                        request.client.host if request.client else "?")
        return "no key"


def cross_site(request: Request) -> bool:
    """Return True if a browser says the request comes from another site's page (its Origin is not
    this site, or Sec-Fetch-Site says cross-site or same-site). A client that is no browser sends
    neither header, and is not cross-site."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    host = request.headers.get("host", "")
    return origin.rstrip("/") not in (f"http://{host}", f"https://{host}")
