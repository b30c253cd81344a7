"""The status page's actions and the jobs as JSON: /api/jobs, /api/retry, /api/forget, /api/rescan.

- `GET /api/jobs` (`?state=failed`): the JSON of `subwatch status --json` (daemon.jobsjson).
- `GET /api/decoders`: each transcriber's decoder child, its restarts and last death
  (`subwatch status --json --decoders`).
- `GET /api/nodes`: each daemon sharing the queue, its heartbeat and the files it holds
  (`subwatch status --json --nodes`).
- `POST /api/retry`: `{"path": P}` queues the failed job at P again, `{"all_failed": true}` every
  failed job; answers `{"retried": N}` (404 when P has no failed job).
- `POST /api/forget`: `{"path": P}` forgets P's job as `subwatch forget` does (409 while it runs).
- `POST /api/rescan`: `{"path": P}` scans the watched folder (or part of one) at P, no path every
  folder; answers `{"queued": [paths]}` (422 when P is in no watched folder).

Paths are as `/api/jobs` shows them (this machine's). The body is JSON, or the status page's form
fields (`path`, `all_failed`), at most MAX_BODY bytes (413 past it); a form is answered with a redirect
back to the page carrying a code for what was done (`/?said=retried&n=2`), never text: the page shows
only the message its own table has for the code (daemon.http.page.Said), so a link cannot make the
page say anything else. Every one needs the key (daemon.http.app: the gate, and cross-site requests
refused).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from daemon.datatypes import JobState
from daemon.http.body import BodyRefused, read_body, read_form
from daemon.http.context import DaemonView, HttpContext
from daemon.http.page import Said
from daemon.jobsjson import decoders_json, jobs_json, json_text, nodes_json
from daemon.queue import QueueError
from daemon.text import printable

log = logging.getLogger("subwatch.http")

MAX_BODY = 64 * 1024  # a path or two: {"path": ...}, or the page's form
MAX_PATH_BYTES = 4_096  # PATH_MAX on Linux

# What the page is told when an action is refused, by the answer's status.
_REFUSED_SAID = {400: Said.NOT_UNDERSTOOD, 404: Said.NO_SUCH_JOB, 409: Said.BEING_TRANSCRIBED,
                 413: Said.NOT_UNDERSTOOD, 422: Said.NOT_WATCHED, 503: Said.TRY_AGAIN}


class _Refused(Exception):
    def __init__(self, status: int, message: str, said: Said | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.said = said or _REFUSED_SAID.get(status, Said.FAILED)  # what the page is told


Done = tuple[dict[str, Any], Said, int | None]  # the JSON answer; the page's code and its count


def api_routes(context: HttpContext, daemon: DaemonView) -> list[BaseRoute]:
    """Return the /api routes."""

    async def jobs(request: Request) -> Response:
        state = request.query_params.get("state")
        try:
            states = [JobState(state)] if state else None
        except ValueError:
            return JSONResponse({"error": f"no such state {state!r}; one of "
                                 + ", ".join(s.value for s in JobState)}, status_code=400)
        body = await run_in_threadpool(lambda: json_text(jobs_json(daemon.jobs, states)))
        return Response(body, media_type="application/json")

    async def nodes(request: Request) -> Response:
        body = await run_in_threadpool(lambda: json_text(nodes_json(daemon.jobs)))
        return Response(body, media_type="application/json")

    async def decoders(request: Request) -> Response:
        body = await run_in_threadpool(lambda: json_text(decoders_json(daemon.jobs)))
        return Response(body, media_type="application/json")

    def retry(fields: dict[str, Any]) -> Done:
        if _true(fields.get("all_failed")):
            count = daemon.jobs.retry(all_failed=True)
            log.info("http: %d failed job(s) queued again", count)
        else:
            path = _path(fields)
            count = daemon.jobs.retry(path)
            if not count:
                raise _Refused(404, f"no failed job for {_shown(path)}")
            log.info("http: queued %s again", printable(os.fsdecode(path)))
        if count:
            daemon.wake()
        return {"retried": count}, Said.RETRIED, count

    def forget(fields: dict[str, Any]) -> Done:
        path = _path(fields)
        try:
            forgot = daemon.ledger.forget(path)
        except ValueError as exc:  # being transcribed now
            raise _Refused(409, printable(str(exc))) from None
        if not forgot:
            raise _Refused(404, f"no job for {_shown(path)}")
        log.info("http: forgot %s", printable(os.fsdecode(path)))
        return {"forgot": os.fsdecode(path)}, Said.FORGOT, None

    def rescan(fields: dict[str, Any]) -> Done:
        under = _path(fields) if fields.get("path") or fields.get("qpath") else None
        config = context.config()
        if under is not None and not any(under == f.path or f.path in under.parents or under in f.path.parents
                                         for f in config.folders):
            raise _Refused(422, f"{_shown(under)} is in no watched folder of {config.source}")
        queued: list[Path] = []
        try:
            context.intake.scan(under, queued.append)
        finally:
            daemon.jobs.close_thread()
        log.info("http: rescan of %s queued %d file(s)", printable(str(under or "every folder")), len(queued))
        return {"queued": [os.fsdecode(p) for p in queued]}, Said.RESCANNED, len(queued)

    return [
        Route("/api/jobs", jobs, methods=["GET"]),
        Route("/api/decoders", decoders, methods=["GET"]),
        Route("/api/nodes", nodes, methods=["GET"]),
        Route("/api/retry", _action(retry), methods=["POST"]),
        Route("/api/forget", _action(forget), methods=["POST"]),
        Route("/api/rescan", _action(rescan), methods=["POST"]),
    ]


def _action(do: Callable[[dict[str, Any]], Done]) -> Callable[[Request], Any]:
    """Given an action (fields in; its JSON answer, and the page's code and count out), return its
    endpoint."""

    async def endpoint(request: Request) -> Response:
        form = request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data"))
        try:
            fields = await _fields(request, form)
            answer, said, count = await run_in_threadpool(_guard, do, fields)
        except _Refused as exc:
            if form:
                return _back(exc.said)
            return _json({"error": str(exc)}, exc.status)
        if form:
            return _back(said, count)
        return _json(answer)

    return endpoint


def _guard(do: Callable[[dict[str, Any]], Done], fields: dict[str, Any]) -> Done:
    """Run an action; an error of the queue or the filesystem becomes a refusal, not a 500."""
    try:
        return do(fields)
    except QueueError as exc:
        log.warning("http: the job queue cannot be used now: %s", exc)
        raise _Refused(503, "the job queue cannot be used now; try again later") from None
    except (OSError, ValueError) as exc:
        raise _Refused(422, f"cannot do it: {printable(str(exc))[:300]}", Said.FAILED) from None


async def _fields(request: Request, form: bool) -> dict[str, Any]:
    """Given an action's request, return its fields, the body read under MAX_BODY. Raise _Refused (400,
    413) if it is too large or not a JSON object or form."""
    try:
        if form:
            got = await read_form(request, MAX_BODY, max_fields=8, max_files=0, max_part_size=MAX_BODY)
            try:
                return {name: value for name, value in got.items() if isinstance(value, str)}
            finally:
                await got.close()
        body = await read_body(request, MAX_BODY)
    except BodyRefused as exc:
        raise _Refused(exc.status, str(exc)) from None
    if not body.strip():
        return {}
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        raise _Refused(400, "the body is not JSON") from None
    if not isinstance(fields, dict):
        raise _Refused(400, 'send a JSON object, e.g. {"path": "/media/tv/a.mkv"}')
    return fields


def _path(fields: dict[str, Any]) -> Path:
    """Given an action's fields, return the path they name. Raise _Refused(400) if it is none: not
    absolute, a NUL byte, text that stands for no bytes (\\ud800), longer than any path."""
    quoted = fields.get("qpath")  # the page's forms: the path's bytes, percent-encoded (page.form_path)
    if isinstance(quoted, str) and quoted.startswith("/"):
        path = os.fsdecode(unquote_to_bytes(quoted))
    else:
        path = fields.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise _Refused(400, 'give the file\'s absolute path as "path", as /api/jobs shows it')
    # A name that is not UTF-8 comes as /api/jobs wrote it (lone surrogates, \\udcXX): the same bytes.
    try:
        size = len(os.fsencode(path))
    except UnicodeError:
        raise _Refused(400, "the path is not valid text (a lone surrogate that stands for no byte)") from None
    if "\0" in path or size > MAX_PATH_BYTES:
        raise _Refused(400, "no file can have that path (a NUL byte, or longer than any path here)")
    return Path(path)


def _shown(path: Path) -> str:
    """Return a path for a message: on one line, bytes that are not UTF-8 as \\xNN."""
    return printable(os.fsdecode(path))


def _json(value: object, status_code: int = 200) -> Response:
    """Return `value` as JSON written as /api/jobs writes it (a name that is not UTF-8 as \\udcXX)."""
    return Response(json_text(value), status_code=status_code, media_type="application/json")


def _true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "on", "yes"))


def _back(said: Said, count: int | None = None) -> Response:
    """Answer a form of the status page: back to the page, with the code of what was done (and how
    many), for which the page shows its own message."""
    query = {"said": said.value} | ({"n": str(count)} if count is not None else {})
    return RedirectResponse("/?" + urlencode(query), status_code=303)
