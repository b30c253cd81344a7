"""The status page's actions and the jobs as JSON: /api/jobs, /api/retry, /api/forget, /api/rescan.

- `GET /api/jobs` (`?state=failed`): the JSON of `subwatch status --json` (daemon.jobsjson).
- `POST /api/retry`: `{"path": P}` queues the failed job at P again, `{"all_failed": true}` every
  failed job; answers `{"retried": N}` (404 when P has no failed job).
- `POST /api/forget`: `{"path": P}` forgets P's job as `subwatch forget` does (409 while it runs).
- `POST /api/rescan`: `{"path": P}` scans the watched folder (or part of one) at P, no path every
  folder; answers `{"queued": [paths]}` (422 when P is in no watched folder).

Paths are as `/api/jobs` shows them (this machine's). The body is JSON, or the status page's form
fields (`path`, `all_failed`); a form is answered with a redirect back to the page, saying what was done.
Every one needs the key (daemon.http.app: the gate, and cross-site requests refused).
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
from daemon.http.app import DaemonView, HttpContext
from daemon.jobsjson import jobs_json, json_text
from daemon.text import printable

log = logging.getLogger("subwatch.http")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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

    def retry(fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
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
        return {"retried": count}, f"{count} job{'s' if count != 1 else ''} queued again"

    def forget(fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
        path = _path(fields)
        try:
            forgot = daemon.ledger.forget(path)
        except ValueError as exc:  # being transcribed now
            raise _Refused(409, printable(str(exc))) from None
        if not forgot:
            raise _Refused(404, f"no job for {_shown(path)}")
        log.info("http: forgot %s", printable(os.fsdecode(path)))
        return {"forgot": os.fsdecode(path)}, f"forgot {printable(path.name)}"

    def rescan(fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
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
        return {"queued": [os.fsdecode(p) for p in queued]}, f"rescan queued {len(queued)} file(s)"

    return [
        Route("/api/jobs", jobs, methods=["GET"]),
        Route("/api/retry", _action(retry), methods=["POST"]),
        Route("/api/forget", _action(forget), methods=["POST"]),
        Route("/api/rescan", _action(rescan), methods=["POST"]),
    ]


def _action(do: Callable[[dict[str, Any]], tuple[dict[str, Any], str]]) -> Callable[[Request], Any]:
    """Given an action (fields in, its JSON answer and a line for the page out), return its endpoint."""

    async def endpoint(request: Request) -> Response:
        form = request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data"))
        try:
            fields = await _fields(request, form)
            answer, said = await run_in_threadpool(do, fields)
        except _Refused as exc:
            if form:
                return _back(str(exc))
            return _json({"error": str(exc)}, exc.status)
        if form:
            return _back(said)
        return _json(answer)

    return endpoint


async def _fields(request: Request, form: bool) -> dict[str, Any]:
    if form:
        return dict(await request.form())
    body = await request.body()
    if not body.strip():
        return {}
    try:
        fields = json.loads(body)
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None
    if not isinstance(fields, dict):
        raise _Refused(400, 'send a JSON object, e.g. {"path": "/media/tv/a.mkv"}')
    return fields


def _path(fields: dict[str, Any]) -> Path:
    quoted = fields.get("qpath")  # the page's forms: the path's bytes, percent-encoded (page.form_path)
    if isinstance(quoted, str) and quoted.startswith("/"):
        return Path(os.fsdecode(unquote_to_bytes(quoted)))
    path = fields.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise _Refused(400, 'give the file\'s absolute path as "path", as /api/jobs shows it')
    # A name that is not UTF-8 comes as /api/jobs wrote it (lone surrogates, \\udcXX): the same bytes.
    return Path(path)


def _shown(path: Path) -> str:
    """Return a path for a message: on one line, bytes that are not UTF-8 as \\xNN."""
    return printable(os.fsdecode(path))


def _json(value: object, status_code: int = 200) -> Response:
    """Return `value` as JSON written as /api/jobs writes it (a name that is not UTF-8 as \\udcXX)."""
    return Response(json_text(value), status_code=status_code, media_type="application/json")


def _true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "on", "yes"))


def _back(said: str) -> Response:
    """Answer a form of the status page: back to the page, which shows what was done."""
    return RedirectResponse("/?" + urlencode({"said": said}), status_code=303)
