"""uvicorn on a thread of its own: bound at start (so a taken port is said at once), stopped at shutdown.

Connections are bounded, since anyone on the LAN can open them (descriptors are what a flood of
idle sockets takes away, and with them the queue's database file):
- a request's head (request line and headers) must arrive within HEADER_SECONDS of the connection
  opening or of the previous response, and may be at most HEADER_BYTES;
- at most MAX_CONNECTIONS are open; a new one past that closes the one that has waited longest
  without sending a request, so a flood of idle sockets cannot lock out a client that talks;
- an idle keep-alive connection is closed after KEEP_ALIVE_SECONDS.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from daemon.config import HttpRules
from daemon.http.app import HEADER_BYTES
from daemon.http.ratelimit import OncePerMinute

log = logging.getLogger("subwatch.http")

HEADER_SECONDS = 10.0
MAX_CONNECTIONS = 512
KEEP_ALIVE_SECONDS = 5.0
# Connections taken from the kernel's queue in one go: the cap is applied between goes, so at most
# this many more than MAX_CONNECTIONS are ever open (the descriptors a flood can take).
ACCEPT_BACKLOG = 128


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head and a connection cap."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def, override]
        super().connection_made(transport)
        self._head_timer: object | None = None
        self._opened = time.monotonic()
        if sum(not c.transport.is_closing() for c in self.connections) > MAX_CONNECTIONS:
            _close_longest_waiting(self.connections, keep=self)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._waiting_since = time.monotonic()
        self._head_timer = self.loop.call_later(HEADER_SECONDS, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()  # type: ignore[attr-defined]
            self._head_timer = None

    def waiting_for_head(self) -> bool:
        """Whether this connection waits for a request's head (nothing in progress)."""
        return self.cycle is None or (self.cycle.response_complete and self.conn.their_state is h11.IDLE)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.waiting_for_head() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a whole request head arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already start a pipelined request: then no deadline
        if not self.transport.is_closing() and self.waiting_for_head():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def _close_longest_waiting(connections: set, keep: object) -> None:  # type: ignore[type-arg]
    """Close the connection that has waited longest for a request head (never `keep`)."""
    idle = [c for c in connections if c is not keep and not c.transport.is_closing()
            and getattr(c, "waiting_for_head", lambda: False)()]
    if idle:
        oldest = min(idle, key=lambda c: c._waiting_since)
        oldest.transport.close()


class HttpServer:
    """Serves `app` on `rules.listen` from a daemon thread.

    `bind()` opens the socket (raise OSError if it cannot be had), `start()` serves on it,
    `stop()` lets requests in flight finish for a few seconds and closes it.
    """

    def __init__(self, app: Starlette, rules: HttpRules) -> None:
        self.rules = rules
        # No access log: a query string may hold ?apikey=. No signal handlers (not the main thread).
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3, server_header=False, http=GuardedH11Protocol,
                                timeout_keep_alive=KEEP_ALIVE_SECONDS,
                                h11_max_incomplete_event_size=HEADER_BYTES,
                                # A backstop (it counts closing connections too): GuardedH11Protocol
                                # already keeps the open ones under the cap.
                                limit_concurrency=2 * MAX_CONNECTIONS, backlog=ACCEPT_BACKLOG)
        self._server = uvicorn.Server(config)
        # Its start/stop lines: ours say them. Its warnings (a bad request, a full server) come at a
        # stranger's pace: one line per kind a minute; so do asyncio's (an accept that failed).
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        for name in ("uvicorn.error", "asyncio"):
            if not any(isinstance(f, OncePerMinute) for f in logging.getLogger(name).filters):
                logging.getLogger(name).addFilter(OncePerMinute())
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        """Open the listening socket. Raise OSError (address in use, no such address) if it cannot be."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.rules.host, self.rules.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(ACCEPT_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._socket = sock

    @property
    def port(self) -> int:
        """The port listened on (the configured one; the one given when it was 0)."""
        return self._socket.getsockname()[1] if self._socket else self.rules.port

    def start(self, timeout: float = 10.0) -> None:
        """Serve on the bound socket from a thread; return once it serves (at most `timeout` s)."""
        if self._socket is None:
            self.bind()
        self._thread = threading.Thread(target=self._run, name="subwatch-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._server.started:
            log.info("http: listening on %s", self.rules.listen)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket] if self._socket else None)
        except BaseException:  # SystemExit from uvicorn included: the daemon goes on without HTTP
            log.exception("http: the server stopped with an error; the daemon goes on without it")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (briefly), and close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(1.0)
        if self._socket is not None:
            self._socket.close()

