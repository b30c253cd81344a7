"""uvicorn on a thread of its own: bound at start (so a taken port is said at once), stopped at shutdown."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette

from daemon.config import HttpRules

log = logging.getLogger("subwatch.http")


class HttpServer:
    """Serves `app` on `rules.listen` from a daemon thread.

    `bind()` opens the socket (raise OSError if it cannot be had), `start()` serves on it,
    `stop()` lets requests in flight finish for a few seconds and closes it.
    """

    def __init__(self, app: Starlette, rules: HttpRules) -> None:
        self.rules = rules
        # No access log: a query string may hold ?apikey=. No signal handlers (not the main thread).
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3, server_header=False)
        self._server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop lines: ours say it
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
            sock.listen(128)
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
