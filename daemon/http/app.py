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

import functools
import hmac
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.config import Config, HttpRules
from daemon.http.context import COOKIE, HttpContext, page_cookie
from daemon.http.ratelimit import RateLimitedLog
from daemon.text import printable

if TYPE_CHECKING:
    pass

log = logging.getLogger("subwatch.http")

# A request head's size at most: an incomplete one is cut off by h11 (daemon.http.server), a whole
# one that came in one piece is answered 431 here.
HEADER_BYTES = 16 * 1024
OPEN_PATHS = frozenset({"/healthz", "/key"})  # /key checks the key itself
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ASR_PATHS = frozenset({"/asr", "/detect-language"})  # Bazarr's, served by daemon.http.bazarr


def build_app(context: HttpContext, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Given the daemon's context and routes others add (Bazarr's), return the application."""
    from daemon.http.hooks import hook_routes
    from daemon.http.page import key_routes

    async def healthz(request: Request) -> Response:
        problems = []
        if not context.healthy():
            problems.append("a transcriber has made no progress for an hour")
        if not context.requests_healthy():
            problems.append("decoding HTTP requests is stuck: a decode ran far past its time limit")
        if not context.database_ok():
            problems.append("the job database cannot be reached")
        if not problems:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "wedged", "detail": "; ".join(problems)}, status_code=503)

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
    """ASGI middleware in front of every route: the Host header, cross-site browser requests, the key.

    1. The Host header must name this server (see `host_allowed`): a web page under a rebinding name
       (evil.example resolving to this address) is answered 400 and never reaches a route.
    2. A browser request that changes something (any POST, Bazarr's /asr included) and says it comes
       from another site's page (Origin, Sec-Fetch-Site) gets 403, key or no key.
    3. Without the configured key: 401 (see the module for the routes open without it).
    """

    def __init__(self, app: ASGIApp, config: Callable[[], Config]) -> None:
        self.app = app
        self._config = config
        self._refusals = RateLimitedLog(log)

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
        client = request.client.host if request.client else "?"
        if verdict == "head too large":
            response: Response = JSONResponse({"error": f"the request head is over {HEADER_BYTES} bytes"},
                                              status_code=431)
        elif verdict == "bad host":
            host = printable(request.headers.get("host", ""))[:100]
            self._refusals.warning("host", "refused %s %s from %s: Host %r is not this server's name",
                                   request.method, path, client, host)
            response = JSONResponse(
                {"error": f"the Host header {host!r} does not name this server; "
                          "add the name to http.allowed_hosts if it is one of this machine's"},
                status_code=400)
        elif verdict == "cross-site":
            self._refusals.warning("cross-site", "refused %s %s from %s: sent by another site's page",
                                   request.method, path, client)
            response = JSONResponse(
                {"error": "refused: this request came from another site's page"}, status_code=403)
        elif path == "/" and request.method in SAFE_METHODS:
            from daemon.http.page import key_prompt  # the page asks for the key once

            response = key_prompt(wrong=False, status_code=401)
        else:
            self._refusals.warning("key", "refused %s %s from %s: missing or wrong API key",
                                   request.method, path, client)
            response = JSONResponse(
                {"error": "missing or wrong API key: send it as the X-Api-Key header or ?apikey="},
                status_code=401)
        await response(scope, receive, send)

    def _verdict(self, request: Request) -> str:
        """Return "ok", "head too large", "bad host", "cross-site" or "no key"."""
        if sum(len(name) + len(value) for name, value in request.scope["headers"]) > HEADER_BYTES:
            return "head too large"
        http = self._config().http or HttpRules()
        if not host_allowed(request, http):
            return "bad host"
        if request.method not in SAFE_METHODS and cross_site(request):
            return "cross-site"
        if http.api_key is None:
            return "ok"
        path = request.url.path.rstrip("/") or "/"
        if path in OPEN_PATHS or (path in ASR_PATHS and not http.asr_requires_key):
            return "ok"
        if path == "/metrics" and http.metrics_without_key:
            return "ok"
        if has_key(request, http):
            return "ok"
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), page_cookie(http.api_key.reveal()).encode()):
            return "ok"
        return "no key"


def has_key(request: Request, http: HttpRules) -> bool:
    """Return whether the request carries the configured key (X-Api-Key or ?apikey=), compared in
    constant time; False when no key is configured."""
    if http.api_key is None:
        return False
    given = request.headers.get("x-api-key") or request.query_params.get("apikey") or ""
    return hmac.compare_digest(given.encode("utf-8", "replace"), http.api_key.reveal().encode())


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_allowed(request: Request, http: HttpRules) -> bool:
    """Return whether the Host header names this server: a loopback name, the listen address, the
    address the client connected to, this machine's host name, or one of `http.allowed_hosts`.

    A browser always sends Host; a page served under a name its owner points at this address
    (DNS rebinding) sends that name, which is none of these. A client with no Host (HTTP/1.0
    tools) is no browser and is let through.
    """
    raw = request.headers.get("host")
    if raw is None:
        return True
    name = _host_name(raw)
    if name in LOOPBACK_NAMES or name in http.allowed_hosts or name == http.host.lower():
        return True
    server = request.scope.get("server")
    if server and name == str(server[0]).lower():
        return True
    return name in _machine_names()


def _host_name(raw: str) -> str:
    """Given a Host header, return its name without the port and brackets, lower-cased."""
    raw = raw.strip().lower()
    if raw.startswith("["):
        return raw[1:].split("]", 1)[0]
    return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


@functools.lru_cache(maxsize=1)
def _machine_names() -> frozenset[str]:
    """This machine's host name, short and as set (what a LAN user types: http://nas:9000)."""
    name = socket.gethostname().lower()
    return frozenset({name, name.split(".")[0]})


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
