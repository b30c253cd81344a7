"""Tell systemd how subwatch is doing: readiness, status text, reloads and watchdog pings.

With `Type=notify` systemd waits for READY=1 before it counts the service as
started, shows STATUS= in `systemctl status`, and, with `WatchdogSec=`, kills
and restarts the service when WATCHDOG=1 pings stop. Everything here is a
no-op outside systemd (no $NOTIFY_SOCKET), and a failed send is logged, never
raised: telling systemd is never worth stopping the daemon for.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from daemon.text import printable

logger = logging.getLogger("subwatch.sdnotify")


def status_line(state: str, current: str | None, progress: float | None, queued: int) -> str:
    """Given the daemon's state, the file in hand, its progress and the queue length, return a status line.

    `progress` is a fraction from 0.0 to 1.0.
    E.g. "idle · 0 queued" or "transcribing Movie.mkv 42% · 17 queued".
    Progress is rounded down so 99.9% never shows as 100%.
    """
    parts = [state]
    if current:
        parts.append(current)
    if progress is not None:
        parts.append(percent(progress))
    return printable(f"{' '.join(parts)} · {queued} queued")


def percent(progress: float) -> str:
    """Given a fraction from 0.0 to 1.0, return it as a whole percentage, rounded down: "42%"."""
    # The epsilon keeps 0.29 (28.999… after * 100) from showing as 28%.
    return f"{math.floor(min(max(progress, 0.0), 1.0) * 100 + 1e-9)}%"


def socket_address(value: str) -> str | None:
    """Given $NOTIFY_SOCKET, return the address to send to, or None if it is not a Unix socket.

    "@name" is a socket in the abstract namespace, written with a leading NUL.
    """
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 254's "vsock:" addresses, which only VMs use


def send_datagram(address: str, message: str) -> None:
    """Given a Unix socket address and a notify message, send it as one datagram.

    Raise OSError if it cannot be sent.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(2.0)  # systemd reads its socket promptly; never hang the caller on it
        sock.sendto(message.encode("utf-8", "backslashreplace"), address)


def _systemd_python_sender() -> Callable[[str], None] | None:
    try:
        from systemd import daemon
    except ImportError:
        return None

    def send(message: str) -> None:
        if not daemon.notify(message):
            raise OSError("systemd.daemon.notify returned False")

    return send


class SystemdNotifier:
    """Send sd_notify messages to systemd, through systemd-python when installed.

    `environ` (default os.environ) is read once, here. Safe to use from any thread.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._environ = {
            key: env[key] for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if key in env
        }
        self._send = self._pick_sender(self._environ.get("NOTIFY_SOCKET", ""))
        self._lock = threading.Lock()
        self._last_status: str | None = None
        self._failing = False

    @staticmethod
    def _pick_sender(notify_socket: str) -> Callable[[str], None] | None:
        if not notify_socket:
            return None
        address = socket_address(notify_socket)
        if address is None:
            logger.warning("NOTIFY_SOCKET=%s is not a Unix socket; not talking to systemd", notify_socket)
            return None
        return _systemd_python_sender() or (lambda message: send_datagram(address, message))

    @property
    def enabled(self) -> bool:
        """Return True if running under systemd with a notify socket."""
        return self._send is not None

    def ready(self) -> None:
        """Tell systemd start-up (or a reload) is complete."""
        self._notify("READY=1")

    def status(self, text: str) -> None:
        """Given a one-line status, show it in `systemctl status`; a repeat of the last one is not sent."""
        text = printable(text)
        with self._lock:
            if text == self._last_status:
                return
            self._last_status = text
        self._notify(f"STATUS={text}")

    def reloading(self) -> None:
        """Tell systemd a reload began; call ready() when it is done.

        systemd 253+ wants the CLOCK_MONOTONIC time in the same message, so it
        can tell this reload from an older one.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self._notify("STOPPING=1")

    def watchdog_ping(self) -> None:
        """Tell systemd's watchdog the daemon is alive."""
        self._notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Return how often to ping the watchdog in seconds (half of $WATCHDOG_USEC), or None if it is off.

        None too when $WATCHDOG_PID names another process: the watchdog is then not ours.
        """
        pid = self._environ.get("WATCHDOG_PID")
        if pid is not None and pid != str(os.getpid()):
            return None
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return None
        return usec / 2_000_000 if usec > 0 else None

    def _notify(self, message: str) -> None:
        if self._send is None:
            return
        try:
            self._send(message)
        except OSError as exc:
            # Logged once per failing spell: the watchdog would otherwise repeat it every few seconds.
            if not self._failing:
                logger.warning("cannot notify systemd (%s): %s", message.split("=", 1)[0], exc)
            self._failing = True
        else:
            self._failing = False


class WatchdogLoop:
    """Ping systemd's watchdog from a daemon thread while `healthy()` returns True.

    `healthy` should say the pipeline is not wedged (e.g. the worker's
    heartbeat is recent). When it returns False (or raises) the pings stop, so
    systemd kills and restarts the service after `WatchdogSec=`. Nothing runs
    when systemd set no watchdog.
    """

    def __init__(self, notifier: SystemdNotifier, healthy: Callable[[], bool]) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._interval = notifier.watchdog_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start pinging, if systemd asked for a watchdog."""
        if self._interval is None:
            logger.debug("no systemd watchdog requested")
            return
        self._thread = threading.Thread(
            target=self._run, args=(self._interval,), name="subwatch-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging and wait up to `timeout` seconds for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, interval: float) -> None:
        was_healthy = True
        while not self._stop.is_set():
            healthy = self._check()
            if healthy:
                self._notifier.watchdog_ping()
                if not was_healthy:
                    logger.warning("pipeline is moving again; watchdog pings resumed")
            elif was_healthy:
                logger.error(
                    "pipeline looks stuck; stopped pinging the watchdog so systemd restarts subwatch"
                )
            was_healthy = healthy
            self._stop.wait(interval)

    def _check(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:
            logger.exception("health check failed; counting it as unhealthy")
            return False
