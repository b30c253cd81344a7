"""Jellyfin, Emby and Plex: told of a job's new or moved sidecars, and asked where a hooked item is.

Each server is told about the one folder or item that changed, never asked to rescan the whole
library:

- Jellyfin and Emby: `POST {url}/Library/Media/Updated` with the sidecars' paths as the server
  sees them (its `path_map`); Jellyfin authenticates with `Authorization: MediaBrowser
  Token="…"` (its legacy X-Emby-Token is off by default from 10.12), Emby with `X-Emby-Token`.
- Plex: the library section whose location holds the file (`GET /library/sections`), then
  `GET /library/sections/{id}/refresh?path=<folder>`, with `X-Plex-Token`.

What is owed is written to the job queue first (`server_updates`: the job's record of whether each
server was told), then handed to the notifier's delivery thread as a `notify.Call`: a server that
is down or answers an error is retried there with the notifications' backoff, and never fails or
delays a job. A row still owed when the daemon stops is told at its next start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from daemon.config import MediaServer, map_path
from daemon.notify import Call, Notifier
from daemon.queue import JobQueue
from daemon.queue.servers import ServerUpdate
from daemon.text import printable

log = logging.getLogger("subwatch.mediaservers")

TIMEOUT_S = 10.0


class MediaServerError(Exception):
    """A media server could not be reached, or answered something other than what was asked."""


def auth_headers(server: MediaServer) -> dict[str, str]:
    """Given a server, return the headers that authenticate a request to it (they hold its token)."""
    token = server.token.reveal()
    if server.kind == "jellyfin":
        return {"Authorization": f'MediaBrowser Token="{token}"'}
    if server.kind == "emby":
        return {"X-Emby-Token": token}
    return {"X-Plex-Token": token, "Accept": "application/json"}


def _request(server: MediaServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Send one request to the server; raise MediaServerError (never showing the token) on failure."""
    url = server.url + path
    try:
        response = httpx.request(method, url, headers=auth_headers(server), timeout=TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        raise MediaServerError(f"{server.label}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 400:
        raise MediaServerError(f"{server.label}: {method} {path.split('?')[0]} answered "
                               f"{response.status_code} {response.reason_phrase}")
    return response


def _json(server: MediaServer, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise MediaServerError(f"{server.label}: the answer is not JSON") from None


def tell(server: MediaServer, sidecars: Sequence[Path]) -> None:
    """Given a server and sidecars that were written or moved (paths here), tell the server of them.

    Raise MediaServerError if it cannot be told.
    """
    paths = [map_path(os.fsdecode(p), server.path_map) for p in sidecars]
    if server.kind in ("jellyfin", "emby"):
        body = {"Updates": [{"Path": path, "UpdateType": "Created"} for path in paths]}
        _request(server, "POST", "/Library/Media/Updated", json=body)
        return
    sections = _plex_sections(server)
    for folder in dict.fromkeys(path.rsplit("/", 1)[0] or "/" for path in paths):
        section = _plex_section_of(sections, folder)
        if section is None:
            raise MediaServerError(f"{server.label}: no library section holds {folder}; check the "
                                   "server's path_map")
        refresh = f"/library/sections/{quote(section, safe='')}/refresh?path={quote(folder, safe='')}"
        _request(server, "GET", refresh)


def _plex_sections(server: MediaServer) -> list[tuple[str, list[str]]]:
    """Return Plex's library sections: (key, location paths)."""
    data = _json(server, _request(server, "GET", "/library/sections"))
    try:
        directories = data["MediaContainer"].get("Directory") or []
        return [(str(d["key"]), [str(loc["path"]) for loc in d.get("Location") or []]) for d in directories]
    except (KeyError, TypeError, AttributeError):
        raise MediaServerError(f"{server.label}: /library/sections did not list sections") from None


def _plex_section_of(sections: list[tuple[str, list[str]]], folder: str) -> str | None:
    """Given sections and a folder (as Plex sees it), return the key of the section holding it."""
    best: tuple[int, str] | None = None
    for key, locations in sections:
        for location in locations:
            root = location.rstrip("/") or "/"
            if folder == root or folder.startswith(root.rstrip("/") + "/"):
                if best is None or len(root) > best[0]:
                    best = (len(root), key)
    return None if best is None else best[1]


def jellyfin_item_path(server: MediaServer, item_id: str) -> str | None:
    """Given a Jellyfin server and an item id, return the item's path as the server sees it (None
    if it has none). Raise MediaServerError if the server cannot say."""
    response = _request(server, "GET", "/Items", params={"ids": item_id, "Fields": "Path"})
    items = (_json(server, response) or {}).get("Items") or []
    path = items[0].get("Path") if items and isinstance(items[0], dict) else None
    return path if isinstance(path, str) else None


def plex_item_path(server: MediaServer, rating_key: str) -> str | None:
    """Given a Plex server and an item's ratingKey, return its first file as the server sees it
    (None if it has none). Raise MediaServerError if the server cannot say."""
    data = _json(server, _request(server, "GET", f"/library/metadata/{quote(rating_key, safe='')}"))
    try:
        path = data["MediaContainer"]["Metadata"][0]["Media"][0]["Part"][0]["file"]
    except (KeyError, IndexError, TypeError):
        return None
    return path if isinstance(path, str) else None


class MediaServers:
    """Tells the configured servers of sidecars; `servers` returns those of the config in force."""

    def __init__(self, servers: Callable[[], tuple[MediaServer, ...]], jobs: JobQueue, notifier: Notifier,
                 attempts: int = 6) -> None:
        self._servers = servers
        self._jobs = jobs
        self._notifier = notifier
        self._attempts = attempts
        self._handed: set[int] = set()  # owed rows handed to the delivery thread, not yet settled
        self._handed_lock = threading.Lock()

    def sidecars_changed(self, job_id: int, paths: Sequence[Path]) -> None:
        """Given a job whose sidecars were just written or moved, owe each server the news and hand
        it to the delivery thread. Never raises: a job is never failed by its servers."""
        servers = self._servers()
        if not servers or not paths:
            return
        # Recorded and marked handed under one lock: tell_owed (after a takeover) must not hand the
        # same rows over between the two.
        with self._handed_lock:
            try:
                owed = self._jobs.server_updates.owe(job_id, [s.label for s in servers], paths)
            except Exception:
                log.warning("could not record the media servers to tell of job %d; telling them anyway",
                            job_id, exc_info=True)
                owed = [ServerUpdate(0, job_id, s.label, tuple(paths), "owed", None) for s in servers]
            self._handed |= {update.id for update in owed if update.id}
        for update in owed:
            self._hand_over(update)

    def tell_owed(self) -> None:
        """Hand over what this node owes the servers and has not handed yet: at start, what a stopped
        daemon left; later, what it took over from a gone node."""
        with self._handed_lock:  # read and marked at once: see sidecars_changed
            try:
                owed = self._jobs.server_updates.owed()
            except Exception:
                log.warning("could not read the media server updates owed", exc_info=True)
                return
            owed = [update for update in owed if update.id not in self._handed]
            self._handed |= {update.id for update in owed}
        for update in owed:
            self._hand_over(update)

    def _hand_over(self, update: ServerUpdate) -> None:
        def attempt() -> None:
            server = next((s for s in self._servers() if s.label == update.server), None)
            if server is None:
                raise _Gone(f"{update.server} is no longer in the config")
            tell(server, update.paths)

        def settled(told: bool, error: str | None) -> None:
            names = ", ".join(printable(p.name) for p in update.paths)
            if told:
                log.info("told %s of %s", update.server, names)
            if update.id:
                self._jobs.server_updates.settle(update.id, told, error)
                with self._handed_lock:
                    self._handed.discard(update.id)

        self._notifier.call(Call(update.server, attempt, settled, attempts=self._attempts))


class _Gone(MediaServerError):
    pass
