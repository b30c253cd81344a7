"""What the HTTP routes share: the daemon as the endpoints reach it, and the status page's cookie.

Its own module so that `app`, which gathers the routes, and each route module (`api`, `hooks`,
`metrics`, `page`) import it and not each other.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.config import Config
from daemon.intake import Intake

if TYPE_CHECKING:
    from daemon.decoders import DecoderPool
    from daemon.queue import JobQueue
    from daemon.subtitles import SidecarLedger
    from daemon.transcribers import Activity

COOKIE = "subwatch_key"


@dataclass(frozen=True)
class HttpContext:
    """What the endpoints reach in the running daemon."""

    config: Callable[[], Config]  # the config in force (a reload replaces it)
    healthy: Callable[[], bool]  # the systemd watchdog's check: the pipeline is not wedged
    intake: Intake  # hooked files go in as watched ones do
    daemon: DaemonView | None = None  # the status page, /api and /metrics; without it they are not served
    requests_healthy: Callable[[], bool] = lambda: True  # Bazarr's request decoding is not stuck
    database_ok: Callable[[], bool] = lambda: True  # the job database answered the last heartbeat


@dataclass(frozen=True)
class DaemonView:
    """What the status page, /api and /metrics read and act on in the running daemon."""

    jobs: JobQueue
    ledger: SidecarLedger  # forget goes through it: it removes the folders subwatch made
    models: DecoderPool  # the decoder children: what models they hold, how they died
    activities: Callable[[], list[tuple[str, Activity]]]  # (worker device, what it does now)
    wake: Callable[[], None]  # a retried job is due now: the loader looks at once


def page_cookie(api_key: str) -> str:
    """Given the API key, return the status page's cookie value: derived from the key, not the key
    itself, so the cookie does not give the key away, and changing the key ends every cookie."""
    return hmac.new(api_key.encode(), b"subwatch status page", hashlib.sha256).hexdigest()


