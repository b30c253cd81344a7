"""Sonarr, Radarr, Jellyfin, Plex and Emby tell subwatch about new files.

- `POST /hooks/sonarr`, `/hooks/radarr`: their Connect → Webhook payloads (WebhookBase in
  Sonarr's and Radarr's source). `Download` (on import and upgrade) takes `episodeFile.path`
  (Sonarr; `episodeFiles[].path` in the import-complete form) or `movieFile.path` (Radarr);
  `Rename` lets jobs and sidecars follow `renamedEpisodeFiles` / `renamedMovieFiles`
  (`previousPath` → `path`); `Test` answers 200 with one log line; any other event is
  acknowledged and ignored.
- `POST /hooks/jellyfin`: the Jellyfin webhook plugin's JSON, `NotificationType: ItemAdded` with
  the item's path (`ItemPath`/`Path`), or its `ItemId`, looked up on the first Jellyfin server of
  `media_servers` (`GET /Items?ids=ID&Fields=Path`).
- `POST /hooks/plex`: Plex's multipart `payload`, event `library.new`; the file is read from the
  first Plex server of `media_servers` by `Metadata.ratingKey`.
- `POST /hooks/emby`: `Event: library.new` with `Item.Path` (JSON, or the multipart `data` field).

Each path goes through `http.path_map`, then into the intake as a watched arrival would
(daemon.intake.Intake.hooked): settled, deduplicated, under its folder's rules. A file outside
every folder is refused with 422 and the reason, unless `http.accept_unwatched` is set.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from daemon import mediaservers
from daemon.config import MediaServer, map_path
from daemon.http.app import HttpContext
from daemon.intake import Hooked
from daemon.text import printable

log = logging.getLogger("subwatch.http")

MAX_BODY = 4 * 1024 * 1024  # a webhook payload is a few kB; Plex's multipart may hold a thumbnail


class BadRequest(Exception):
    """The request is not what the sender's documented payload looks like."""


def hook_routes(context: HttpContext) -> list[BaseRoute]:
    """Return the routes of the five hooks."""
    hooks = _Hooks(context)
    handlers: dict[str, Callable[[Request], Awaitable[Response]]] = {
        "sonarr": hooks.sonarr, "radarr": hooks.radarr, "jellyfin": hooks.jellyfin,
        "plex": hooks.plex, "emby": hooks.emby,
    }
    return [Route(f"/hooks/{name}", handler, methods=["POST"]) for name, handler in handlers.items()]


class _Hooks:
    def __init__(self, context: HttpContext) -> None:
        self._context = context

    # ------------------------------------------------------------ the senders

    async def sonarr(self, request: Request) -> Response:
        return await self._arr(request, "sonarr", "episodeFile", "renamedEpisodeFiles", "series", "path")

    async def radarr(self, request: Request) -> Response:
        return await self._arr(request, "radarr", "movieFile", "renamedMovieFiles", "movie", "folderPath")

    async def _arr(self, request: Request, sender: str, file_key: str, renamed_key: str,
                   parent_key: str, parent_path: str) -> Response:
        try:
            payload = _mapping(await _json_body(request))
        except BadRequest as exc:
            return _bad(sender, exc)
        event = str(payload.get("eventType") or "")
        if event == "Test":
            log.info("%s: test webhook received from %s; the hook works", sender,
                     printable(str(payload.get("instanceName") or sender)))
            return JSONResponse({"event": "Test", "result": "ok"})
        parent = payload.get(parent_key) if isinstance(payload.get(parent_key), dict) else {}
        if event == "Download":
            files = payload.get(f"{file_key}s") if payload.get(file_key) is None else [payload.get(file_key)]
            paths = [p for p in (_file_path(f, parent, parent_path) for f in files or []) if p]
            if not paths:
                return _bad(sender, BadRequest(f"a Download event without {file_key}.path"))
            return await self._take(sender, event, paths)
        if event == "Rename":
            renamed = payload.get(renamed_key) or []
            pairs = [(f.get("previousPath"), _file_path(f, parent, parent_path))
                     for f in renamed if isinstance(f, dict)]
            pairs = [(old, new) for old, new in pairs if isinstance(old, str) and new]
            return await self._follow(sender, pairs)
        log.debug("%s: %s event acknowledged; nothing to do", sender, printable(event))
        return JSONResponse({"event": event, "result": "ignored: subwatch acts on Download and Rename"})

    async def jellyfin(self, request: Request) -> Response:
        try:
            payload = _mapping(await _json_body(request))
        except BadRequest as exc:
            return _bad("jellyfin", exc)
        event = str(payload.get("NotificationType") or "")
        if event != "ItemAdded":
            return JSONResponse({"event": event, "result": "ignored: subwatch acts on ItemAdded"})
        path = payload.get("ItemPath") or payload.get("Path")
        if not isinstance(path, str) or not path:
            item_id = payload.get("ItemId")
            if not isinstance(item_id, str) or not item_id:
                return _bad("jellyfin", BadRequest("an ItemAdded notification without ItemPath or ItemId"))
            found = await self._look_up("jellyfin", mediaservers.jellyfin_item_path, item_id)
            if isinstance(found, Response):
                return found
            path = found
        return await self._take("jellyfin", event, [path])

    async def plex(self, request: Request) -> Response:
        try:
            form = await request.form(max_files=4, max_fields=16)
            raw = form.get("payload")
            if not isinstance(raw, str):
                raise BadRequest("no multipart `payload` field")
            payload = _mapping(_parse(raw))
        except BadRequest as exc:
            return _bad("plex", exc)
        event = str(payload.get("event") or "")
        if event != "library.new":
            return JSONResponse({"event": event, "result": "ignored: subwatch acts on library.new"})
        metadata = payload.get("Metadata") if isinstance(payload.get("Metadata"), dict) else {}
        rating_key = metadata.get("ratingKey")
        if not isinstance(rating_key, str | int) or rating_key == "":
            return _bad("plex", BadRequest("a library.new event without Metadata.ratingKey"))
        found = await self._look_up("plex", mediaservers.plex_item_path, str(rating_key))
        if isinstance(found, Response):
            return found
        return await self._take("plex", event, [found])

    async def emby(self, request: Request) -> Response:
        try:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                form = await request.form(max_files=4, max_fields=16)
                raw = form.get("data")
                if not isinstance(raw, str):
                    raise BadRequest("no multipart `data` field")
                payload = _mapping(_parse(raw))
            else:
                payload = _mapping(await _json_body(request))
        except BadRequest as exc:
            return _bad("emby", exc)
        event = str(payload.get("Event") or "")
        if event != "library.new":
            return JSONResponse({"event": event, "result": "ignored: subwatch acts on library.new"})
        item = payload.get("Item") if isinstance(payload.get("Item"), dict) else {}
        path = item.get("Path")
        if not isinstance(path, str) or not path:
            return _bad("emby", BadRequest("a library.new event without Item.Path"))
        return await self._take("emby", event, [path])

    # ------------------------------------------------------------ into the intake

    async def _look_up(self, kind: str, look_up: Callable[[MediaServer, str], str | None],
                       item: str) -> str | Response:
        """Return the path of a library item as the first `kind` server sees it, or the answer to give."""
        server = next((s for s in self._context.config().media_servers if s.kind == kind), None)
        if server is None:
            return _refuse(kind, f"the hook names the item only, and no {kind} server is configured under "
                                 "media_servers to look up its file")
        try:
            path = await run_in_threadpool(look_up, server, item)
        except mediaservers.MediaServerError as exc:
            log.warning("%s hook: cannot look up item %s: %s", kind, printable(item), exc)
            return JSONResponse({"error": f"cannot look up the item on the server: {exc}"}, status_code=502)
        if path is None:
            return JSONResponse({"result": f"ignored: item {item} has no file (a show or a season)"})
        return path

    async def _take(self, sender: str, event: str, raw_paths: list[str]) -> Response:
        config = self._context.config()
        path_map = config.http.path_map if config.http else ()
        results = []
        for raw in raw_paths:
            path = _local(raw, path_map)
            outcome = await run_in_threadpool(self._context.intake.hooked, path)
            results.append((path, outcome))
        return _answer(sender, event, results)

    async def _follow(self, sender: str, pairs: list[tuple[str, str]]) -> Response:
        config = self._context.config()
        path_map = config.http.path_map if config.http else ()
        results = []
        for old, new in pairs:
            old_path, new_path = _local(old, path_map), _local(new, path_map)
            outcome = await run_in_threadpool(self._context.intake.hooked_move, old_path, new_path)
            results.append((new_path, outcome))
        return _answer(sender, "Rename", results)


def _answer(sender: str, event: str, results: list[tuple[Path, Hooked]]) -> Response:
    body: dict[str, Any] = {"event": event, "accepted": [], "ignored": [], "refused": []}
    for path, outcome in results:
        shown = os.fsdecode(path)
        if outcome.verdict == "accepted":
            body["accepted"].append(shown)
        else:
            body[outcome.verdict].append({"path": shown, "reason": outcome.reason})
            level = logging.WARNING if outcome.verdict == "refused" else logging.INFO
            log.log(level, "%s hook: %s %s: %s", sender, outcome.verdict, printable(shown), outcome.reason)
    return JSONResponse(body, status_code=422 if body["refused"] else 200)


def _local(raw: str, path_map: tuple[tuple[str, str], ...]) -> Path:
    """Given a path as another program sent it, return it as a path here."""
    return Path(os.path.normpath(map_path(raw, path_map)))


def _file_path(entry: Any, parent: dict[str, Any], parent_path: str) -> str | None:
    """Given an episodeFile/movieFile entry, return its absolute path (from `path`, else from the
    series' or movie's folder and `relativePath`), or None."""
    if not isinstance(entry, dict):
        return None
    path = entry.get("path")
    if isinstance(path, str) and path:
        return path
    folder, relative = parent.get(parent_path), entry.get("relativePath")
    if isinstance(folder, str) and isinstance(relative, str) and folder and relative:
        return f"{folder.rstrip('/')}/{relative}"
    return None


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequest("the payload is too large")
    return _parse(body)


def _parse(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the payload is not JSON ({exc})") from None


def _mapping(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadRequest("the payload is not a JSON object")
    return payload


def _bad(sender: str, exc: Exception) -> Response:
    log.warning("%s hook: bad request: %s", sender, exc)
    return JSONResponse({"error": str(exc)}, status_code=400)


def _refuse(sender: str, reason: str) -> Response:
    log.warning("%s hook: refused: %s", sender, reason)
    return JSONResponse({"error": reason}, status_code=422)
