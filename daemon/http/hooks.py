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

Everything a sender sends is hostile until checked: the body is read under MAX_BODY (413 at once
for a Content-Length over it, and as soon as a chunked one passes it), JSON that cannot be parsed
(or nests too deep) is a 400, and a path that cannot name a file here (not text, relative, a NUL
byte, too long, a loop of links) is a 422 with the reason, as is a rename that did not happen here.
Nothing a sender sends becomes a 500; the log says each kind of refusal once a minute at most.
"""


from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from daemon import mediaservers
from daemon.config import MediaServer, map_path
from daemon.http.body import BodyRefused, read_body, read_form
from daemon.http.context import HttpContext
from daemon.http.ratelimit import RateLimitedLog
from daemon.intake import Hooked
from daemon.jobsjson import json_text
from daemon.queue import QueueError
from daemon.text import printable

log = logging.getLogger("subwatch.http")
refusals = RateLimitedLog(log)  # one line per sender and kind of reason a minute

MAX_BODY = 4 * 1024 * 1024  # a webhook payload is a few kB; Plex's multipart may hold a thumbnail
MAX_FILES = 1_000  # files in one event: a season pack is tens
MAX_PATH_BYTES = 4_096  # PATH_MAX on Linux: no longer path can name a file
SHOWN = 120  # characters of a sender's text (an event name, a too-long path) put in an answer or a log line
_ITEM_ID = re.compile(r"[0-9A-Za-z._-]{1,64}")  # Jellyfin's GUIDs, Plex's ratingKeys


class BadRequest(Exception):
    """The request is not what the sender's documented payload looks like (`status` 400), or its
    body cannot be taken (413: too large)."""

    def __init__(self, message: str, detail: str = "", status: int = 400) -> None:
        super().__init__(f"{message} ({detail})" if detail else message)
        self.kind = message  # without the detail: log lines are counted per kind
        self.status = status


def hook_routes(context: HttpContext) -> list[BaseRoute]:
    """Return the routes of the five hooks."""
    hooks = _Hooks(context)
    handlers: dict[str, Callable[[Request], Awaitable[Response]]] = {
        "sonarr": hooks.sonarr, "radarr": hooks.radarr, "jellyfin": hooks.jellyfin,
        "plex": hooks.plex, "emby": hooks.emby,
    }
    return [Route(f"/hooks/{name}", _guarded(name, handler), methods=["POST"])
            for name, handler in handlers.items()]


def _guarded(sender: str, handler: Callable[[Request], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
    """Given a hook's handler, return it answering a request it cannot read with 400 or 413."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            refusals.warning((sender, exc.status, exc.kind), "%s hook: bad request: %s", sender, exc)
            return _json({"error": str(exc)}, exc.status)

    return endpoint


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
        payload = _mapping(_parse(await _read(request)))
        event = _text(payload.get("eventType"))
        if event == "Test":
            log.info("%s: test webhook received from %s; the hook works", sender,
                     _shown(_text(payload.get("instanceName")) or sender))
            return _json({"event": "Test", "result": "ok"})
        parent = payload.get(parent_key) if isinstance(payload.get(parent_key), dict) else {}
        if event == "Download":
            files = payload.get(f"{file_key}s") if payload.get(file_key) is None else [payload.get(file_key)]
            files = _listed(files, f"{file_key}s")
            paths = [p for p in (_file_path(f, parent, parent_path) for f in files) if p is not None]
            if not paths:
                raise BadRequest(f"a Download event without {file_key}.path")
            return await self._take(sender, event, paths)
        if event == "Rename":
            renamed = _listed(payload.get(renamed_key) or [], renamed_key)
            pairs = [(f.get("previousPath"), _file_path(f, parent, parent_path))
                     for f in renamed if isinstance(f, dict)]
            return await self._follow(sender, [(old, new) for old, new in pairs if old is not None and new])
        log.debug("%s: %s event acknowledged; nothing to do", sender, _shown(event))
        return _json({"event": _shown(event), "result": "ignored: subwatch acts on Download and Rename"})

    async def jellyfin(self, request: Request) -> Response:
        payload = _mapping(_parse(await _read(request)))
        event = _text(payload.get("NotificationType"))
        if event != "ItemAdded":
            return _json({"event": _shown(event), "result": "ignored: subwatch acts on ItemAdded"})
        path = payload.get("ItemPath") or payload.get("Path")
        if not path:
            item_id = payload.get("ItemId")
            if not item_id:
                raise BadRequest("an ItemAdded notification without ItemPath or ItemId")
            found = await self._look_up("jellyfin", mediaservers.jellyfin_item_path, _item_id(item_id))
            if isinstance(found, Response):
                return found
            path = found
        return await self._take("jellyfin", event, [path])

    async def plex(self, request: Request) -> Response:
        payload = _mapping(_parse(await _form_field(request, "payload")))
        event = _text(payload.get("event"))
        if event != "library.new":
            return _json({"event": _shown(event), "result": "ignored: subwatch acts on library.new"})
        metadata = payload.get("Metadata") if isinstance(payload.get("Metadata"), dict) else {}
        rating_key = metadata.get("ratingKey")
        if isinstance(rating_key, bool) or not isinstance(rating_key, str | int) or rating_key == "":
            raise BadRequest("a library.new event without Metadata.ratingKey")
        found = await self._look_up("plex", mediaservers.plex_item_path, _item_id(str(rating_key)))
        if isinstance(found, Response):
            return found
        return await self._take("plex", event, [found])

    async def emby(self, request: Request) -> Response:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            payload = _mapping(_parse(await _form_field(request, "data")))
        else:
            payload = _mapping(_parse(await _read(request)))
        event = _text(payload.get("Event"))
        if event != "library.new":
            return _json({"event": _shown(event), "result": "ignored: subwatch acts on library.new"})
        item = payload.get("Item") if isinstance(payload.get("Item"), dict) else {}
        path = item.get("Path")
        if not path:
            raise BadRequest("a library.new event without Item.Path")
        return await self._take("emby", event, [path])

    # ------------------------------------------------------------ into the intake

    async def _look_up(self, kind: str, look_up: Callable[[MediaServer, str], str | None],
                       item: str) -> str | Response:
        """Return the path of a library item as the first `kind` server sees it, or the answer to give."""
        server = next((s for s in self._context.config().media_servers if s.kind == kind), None)
        if server is None:
            return _refuse(kind, "no server", f"the hook names the item only, and no {kind} server is "
                           "configured under media_servers to look up its file")
        try:
            path = await run_in_threadpool(look_up, server, item)
        except Exception as exc:  # noqa: BLE001 - MediaServerError, or whatever its answer made of us
            refusals.warning((kind, "look-up"), "%s hook: cannot look up item %s: %s", kind, item,
                             printable(str(exc)[:500]))
            return _json({"error": f"cannot look up the item on the server: {printable(str(exc)[:500])}"},
                         502)
        if path is None:
            return _json({"result": f"ignored: item {item} has no file (a show or a season)"})
        return path

    async def _take(self, sender: str, event: str, raw_paths: list[Any]) -> Response:
        path_map = self._path_map()
        results = []
        for raw in raw_paths:
            path = _local(raw, path_map)
            if isinstance(path, Hooked):
                results.append((_raw_shown(raw), path))
                continue
            outcome = await self._intake(sender, path, self._context.intake.hooked, path)
            if isinstance(outcome, Response):
                return outcome
            results.append((os.fsdecode(path), outcome))
        return _answer(sender, event, results)

    async def _follow(self, sender: str, pairs: list[tuple[Any, Any]]) -> Response:
        path_map = self._path_map()
        results = []
        for old, new in pairs:
            old_path, new_path = _local(old, path_map), _local(new, path_map)
            if isinstance(old_path, Hooked) or isinstance(new_path, Hooked):
                results.append((_raw_shown(new), old_path if isinstance(old_path, Hooked) else new_path))
                continue
            outcome = await self._intake(sender, new_path, self._context.intake.hooked_move,
                                         old_path, new_path)
            if isinstance(outcome, Response):
                return outcome
            results.append((os.fsdecode(new_path), outcome))
        return _answer(sender, "Rename", results)

    async def _intake(self, sender: str, path: Path, act: Callable[..., Hooked],
                      *args: Path) -> Hooked | Response:
        """Given the path a hook is about and the intake's act on it, return what became of it, or the
        answer to give when the intake could not say (nothing the sender sends becomes a 500)."""
        try:
            return await run_in_threadpool(act, *args)
        except (OSError, ValueError, UnicodeError) as exc:  # what the path did to a filesystem call
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            return Hooked("refused", f"cannot look at {_shown(os.fsdecode(path))} here ({what}); check "
                          "the path the other program sends", what)
        except QueueError as exc:
            refusals.warning((sender, "queue"), "%s hook: the job queue cannot be used now: %s", sender, exc)
            return _json({"error": "the job queue cannot be used now; send it again later"}, 503)
        except Exception:  # a fault of ours: said in full, once a minute
            if refusals.warning((sender, "internal"), "%s hook: internal error taking in %s", sender,
                                _shown(os.fsdecode(path))):
                log.exception("%s hook: the error", sender)
            return _json({"error": "an internal error in subwatch (logged); send it again later"}, 503)

    def _path_map(self) -> tuple[tuple[str, str], ...]:
        config = self._context.config()
        return config.http.path_map if config.http else ()


def _answer(sender: str, event: str, results: list[tuple[str, Hooked]]) -> Response:
    body: dict[str, Any] = {"event": event, "accepted": [], "ignored": [], "refused": []}
    for shown, outcome in results:
        if outcome.verdict == "accepted":
            body["accepted"].append(shown)
            continue
        body[outcome.verdict].append({"path": shown, "reason": outcome.reason})
        level = logging.WARNING if outcome.verdict == "refused" else logging.INFO
        refusals.log(level, (sender, outcome.verdict, outcome.key), "%s hook: %s %s: %s", sender,
                 outcome.verdict, _shown(shown), outcome.reason)
    return _json(body, 422 if body["refused"] else 200)


def _local(raw: Any, path_map: tuple[tuple[str, str], ...]) -> Path | Hooked:
    """Given a path as another program sent it, return it as a path here, or why it cannot be one."""
    if not isinstance(raw, str):
        return Hooked("refused", f"the path is not text but {type(raw).__name__}: send the file's full path",
                      "not text")
    if "\0" in raw:
        return Hooked("refused", f"{_shown(raw)} holds a NUL byte, which no file name can: check what the "
                      "other program sends", "NUL byte")
    try:
        size = len(os.fsencode(raw))
    except UnicodeError:  # a lone surrogate that stands for no byte (\ud800)
        return Hooked("refused", f"{_shown(raw)} is not valid text (a lone surrogate): send it as UTF-8",
                      "not valid text")
    if size > MAX_PATH_BYTES:
        return Hooked("refused", f"{_shown(raw)} is {size} bytes long, longer than any path here "
                      f"({MAX_PATH_BYTES}): check what the other program sends", "too long")
    local = os.path.normpath(map_path(raw, path_map))
    if not os.path.isabs(local):
        return Hooked("refused", f"{_shown(raw)} is not an absolute path: send the file's full path (map "
                      "another machine's with http.path_map)", "not absolute")
    return Path(local)


def _file_path(entry: Any, parent: dict[str, Any], parent_path: str) -> Any:
    """Given an episodeFile/movieFile entry, return its path as sent (from `path`, else from the
    series' or movie's folder and `relativePath`; not checked here), or None."""
    if not isinstance(entry, dict):
        return None
    path = entry.get("path")
    if path:
        return path
    folder, relative = parent.get(parent_path), entry.get("relativePath")
    if isinstance(folder, str) and isinstance(relative, str) and folder and relative:
        return f"{folder.rstrip('/')}/{relative}"
    return None


async def _read(request: Request) -> bytes:
    """Return the request's body, read under MAX_BODY. Raise BadRequest(413) if it is larger."""
    try:
        return await read_body(request, MAX_BODY)
    except BodyRefused as exc:
        raise BadRequest(str(exc), status=exc.status) from None


async def _form_field(request: Request, name: str) -> str:
    """Given a multipart request, return its text field `name` (the body read under MAX_BODY first).
    Raise BadRequest if it cannot be read or has no such field."""
    try:
        form = await read_form(request, MAX_BODY, max_fields=16, max_files=4, max_part_size=MAX_BODY)
    except BodyRefused as exc:
        raise BadRequest(str(exc), status=exc.status) from None
    try:
        value = form.get(name)
    finally:
        await form.close()  # spooled file parts (a thumbnail) go at once
    if not isinstance(value, str):
        raise BadRequest(f"no multipart `{name}` field")
    return value


def _parse(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:  # "[[[[..." 100,000 deep
        raise BadRequest("the payload is not JSON", "nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included: bytes that are not UTF-8
        raise BadRequest("the payload is not JSON", printable(str(exc)[:200])) from None


def _mapping(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadRequest("the payload is not a JSON object")
    return payload


def _listed(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} is not a list")
    if len(value) > MAX_FILES:
        raise BadRequest(f"more than {MAX_FILES} files in one event")
    return value


def _item_id(value: Any) -> str:
    """Given a library item's id from a payload, return it. Raise BadRequest if it is not an id."""
    if not isinstance(value, str) or not _ITEM_ID.fullmatch(value):
        raise BadRequest("the item id is not one (letters, digits, '.', '_', '-', at most 64)")
    return value


def _text(value: Any) -> str:
    """Given a field that should be text (an event name), return it, or "" if it is not text."""
    return value if isinstance(value, str) else ""


def _shown(text: str) -> str:
    """Given a sender's text, return it fit for one line of an answer or the log (and not too long)."""
    text = printable(text)
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def _raw_shown(raw: Any) -> str:
    return _shown(raw) if isinstance(raw, str) else f"({type(raw).__name__})"


def _json(value: object, status_code: int = 200) -> Response:
    """Return `value` as JSON; a name that is not UTF-8 is written as \\udcXX (daemon.jobsjson)."""
    return Response(json_text(value), status_code=status_code, media_type="application/json")


def _refuse(sender: str, kind: str, reason: str) -> Response:
    refusals.warning((sender, "refused", kind), "%s hook: refused: %s", sender, reason)
    return _json({"error": reason}, 422)
