"""The status page at `/`: server-rendered HTML (Jinja2), no JavaScript, nothing fetched from elsewhere.

It shows the work now (file, language, progress, x realtime), the queue, recent done files and
failures (with Retry, Forget), each folder's counts, the models loaded and GPU memory, and two
inline SVG charts drawn here: hours of media subtitled per day over the last 30 days, and the
x realtime of recent jobs. While work runs it reloads itself every few seconds (a meta refresh).

Its buttons are plain HTML forms posting to /api/* (daemon.http.api); the key travels in the
page's cookie (daemon.http.app). Opened without the key, the page asks for it (`key_prompt`),
and `POST /key` checks it and sets the cookie. An action comes back as `/?said=CODE&n=N`: the
page shows the message its own table (`Said`) has for the code, and nothing for any other text,
so a link cannot make the page say what its sender wants.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from daemon import __version__
from daemon.datatypes import Job, JobState
from daemon.http.body import BodyRefused, read_form
from daemon.http.context import COOKIE, DaemonView, HttpContext, page_cookie
from daemon.http.snapshot import gpu_memory, model_name, working
from daemon.jobsjson import nodes_json
from daemon.queue.stats import realtime_factors
from daemon.text import format_duration, format_speed, printable

REFRESH_SECONDS = 5  # while work runs
CHART_DAYS = 30
CHART_JOBS = 40  # recent jobs in the x realtime chart
RECENT_DONE = 15
FAILURES_SHOWN = 50
NEXT_SHOWN = 10
COOKIE_MAX_AGE = 400 * 24 * 3600  # the longest browsers keep one
MAX_KEY_FORM = 4096  # the key prompt's form: one field

_COUNT = re.compile(r"[0-9]{1,9}")  # n in /?said=: a larger one is no count of ours


class Said(str, Enum):
    """What an action of the page did, as its redirect back says it (`/?said=CODE&n=N`)."""

    RETRIED = "retried"
    FORGOT = "forgot"
    RESCANNED = "rescanned"
    NO_SUCH_JOB = "no-such-job"
    BEING_TRANSCRIBED = "being-transcribed"
    NOT_WATCHED = "not-watched"
    NOT_UNDERSTOOD = "not-understood"
    TRY_AGAIN = "try-again"
    FAILED = "failed"


_SAID: dict[Said, str] = {  # {n}: the count the redirect carries
    Said.RETRIED: "{n} job{s} queued again",
    Said.FORGOT: "the job was forgotten",
    Said.RESCANNED: "rescan queued {n} file{s}",
    Said.NO_SUCH_JOB: "no such job (it may have finished or been forgotten meanwhile)",
    Said.BEING_TRANSCRIBED: "that file is being transcribed now; forget it once it is done",
    Said.NOT_WATCHED: "that path is in no watched folder",
    Said.NOT_UNDERSTOOD: "the request was not understood",
    Said.TRY_AGAIN: "the job queue cannot be used now; try again in a moment",
    Said.FAILED: "that could not be done; the daemon's log says why",
}


def said_text(code: str | None, count: str | None) -> str | None:
    """Given the `said` and `n` of the page's address, return the message for the code, or None for a
    code that is not one of ours (or a message that needs a count without a valid one)."""
    try:
        said = Said(code)
    except ValueError:
        return None
    message = _SAID[said]
    if "{n}" not in message:
        return message
    if count is None or not _COUNT.fullmatch(count):
        return None
    n = int(count)
    return message.format(n=n, s="" if n == 1 else "s")


_env = Environment(loader=PackageLoader("daemon.http", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)


def key_prompt(*, wrong: bool, status_code: int) -> HTMLResponse:
    """Return the page that asks for the API key (once: it is kept in a cookie)."""
    html = _env.get_template("key.html").render(wrong=wrong, version=__version__)
    return HTMLResponse(html, status_code=status_code, headers=_NO_STORE)


def key_routes(context: HttpContext) -> list[BaseRoute]:
    """Return `POST /key`: the key from the prompt's form, checked, kept in this site's cookie."""

    async def key(request: Request) -> Response:
        http = context.config().http
        try:
            form = await read_form(request, MAX_KEY_FORM, max_fields=4, max_files=0,
                                   max_part_size=MAX_KEY_FORM)
        except BodyRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        given = form.get("apikey")
        given = given if isinstance(given, str) else ""
        if http is None or http.api_key is None:
            return RedirectResponse("/", status_code=303)
        secret = http.api_key.reveal()
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return key_prompt(wrong=True, status_code=401)
        return _with_cookie(RedirectResponse("/", status_code=303), request, secret)

    return [Route("/key", key, methods=["POST"])]


def _with_cookie(response: Response, request: Request, secret: str) -> Response:
    response.set_cookie(COOKIE, page_cookie(secret), max_age=COOKIE_MAX_AGE, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


def page_routes(context: HttpContext, daemon: DaemonView) -> list[BaseRoute]:
    """Return the status page's route."""

    async def page(request: Request) -> Response:
        http = context.config().http
        if "apikey" in request.query_params and http is not None and http.api_key is not None:
            # Opened as /?apikey=KEY (the gate checked it): keep it in the cookie, off the address bar.
            return _with_cookie(RedirectResponse("/", status_code=303), request, http.api_key.reveal())
        view = await run_in_threadpool(build_view, context, daemon)
        view["said"] = said_text(request.query_params.get("said"), request.query_params.get("n"))
        html = _env.get_template("page.html").render(**view)
        return HTMLResponse(html, headers=_NO_STORE)

    return [Route("/", page, methods=["GET", "HEAD"])]


_NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
             "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                        "form-action 'self'; frame-ancestors 'none'"}


# ---------------------------------------------------------------- what the page shows


def build_view(context: HttpContext, daemon: DaemonView) -> dict[str, Any]:
    """Return the values page.html is rendered from (read on the calling thread)."""
    jobs, stats = daemon.jobs, daemon.jobs.stats
    try:
        config = context.config()
        counts = jobs.counts()
        now_working = []
        for work in working(daemon):
            running = [job for job in (jobs.get(i) for i in work.job_ids) if job is not None]
            now_working.append({
                "device": work.device,
                "label": printable(work.label),
                "files": [{"name": _name(job), "language": _language(config, job)} for job in running],
                "percent": None if work.progress is None else round(100 * work.progress),
                "realtime": _factor(work.realtime),
            })
        recent = stats.recent(JobState.DONE.value, RECENT_DONE)
        timings = [(f.job.media_duration or 0.0, f.job.elapsed or 0.0)
                   for f in reversed(stats.recent(JobState.DONE.value, CHART_JOBS))]
        folders = {str(c.folder): c for c in stats.by_folder()}
        for rules in config.folders:
            folders.setdefault(str(rules.path), None)  # type: ignore[arg-type]
        view = {
            "version": __version__,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "refresh": REFRESH_SECONDS if counts[JobState.RUNNING] or counts[JobState.PENDING] else None,
            "counts": {state.value: n for state, n in counts.items()},
            "working": now_working,
            "queue": [{"name": _name(job), "folder": printable(str(job.folder)), "waiting": _waiting(job)}
                      for job in stats.next_pending(NEXT_SHOWN)],
            "done": [_done(f.job, f.finished_at) for f in recent],
            "failed": [_failed(f.job, f.finished_at)
                       for f in stats.recent(JobState.FAILED.value, FAILURES_SHOWN)],
            "folders": [_folder(path, folders[path]) for path in sorted(folders)],
            "models": [{"name": model_name(m.spec), "device": m.device, "engine": m.engine,
                        "size": _bytes(m.size), "busy": m.users > 0} for m in daemon.models.loaded()],
            "gpu": [{"device": d, "used": _bytes(n)} for d, n in gpu_memory().items()],
            "nodes": [{"name": n["name"], "gone": n["gone"], "silent": f"{n['silent_seconds']:.0f} s",
                       "running": len(n["running"]), "this": n["name"] == jobs.node,
                       "workers": ", ".join(n["workers"]),
                       "transcribing": [printable(os.path.basename(p)) for p in n["transcribing"]]}
                      for n in nodes_json(jobs)],
            "decoders": [{"name": d.name, "pid": d.pid, "restarts": d.restarts,
                          "last_death": d.last_death.cause if d.last_death else None}
                         for d in daemon.models.states()],
            "days_chart": day_chart(stats.media_seconds_per_day(CHART_DAYS)),
            "speed_chart": speed_chart(realtime_factors(timings)),
        }
    finally:
        jobs.close_thread()
    return view


def _name(job: Job) -> str:
    return printable(os.fsdecode(job.path.name))


def _language(config: Any, job: Job) -> str:
    if job.language:
        return job.language
    rules = config.folder_for(job.path)
    wanted = rules.transcribe.language if rules is not None else None
    return wanted or "detecting"


def _waiting(job: Job) -> str:
    if job.next_attempt_at and job.next_attempt_at > time.time():
        return "retry at " + time.strftime("%H:%M", time.localtime(job.next_attempt_at))
    return _ago(job.created_at)


def _done(job: Job, finished_at: float) -> dict[str, Any]:
    media, taken = job.media_duration or 0.0, job.elapsed or 0.0
    return {
        "name": _name(job), "language": job.language or "?",
        "duration": format_duration(media), "taken": format_duration(taken),
        "speed": format_speed(media, taken) or "?", "when": _ago(finished_at),
        "sidecars": [printable(os.fsdecode(p.name)) for p in job.outputs],
        "note": printable(job.error or ""),  # a done job's note: "no speech found" (JobQueue.finish)
    }


def _failed(job: Job, finished_at: float) -> dict[str, Any]:
    reason = (job.error or "failed").strip().splitlines()[0] if (job.error or "").strip() else "failed"
    return {"name": _name(job), "qpath": form_path(job.path), "reason": printable(reason),
            "attempts": job.attempts, "when": _ago(finished_at)}


def _folder(path: str, counts: Any) -> dict[str, Any]:
    shown = {"path": printable(path), "qpath": form_path(Path(path))}
    if counts is None:
        return {**shown, "done": 0, "failed": 0, "pending": 0, "hours": "0.00"}
    return {**shown, "done": counts.done, "failed": counts.failed, "pending": counts.pending,
            "hours": f"{counts.speech_seconds / 3600:.2f}"}


def form_path(path: Path) -> str:
    """Given a path, return it as the page's forms send it (`qpath`): its bytes percent-encoded, so a
    name that is not UTF-8 reaches daemon.http.api exactly (HTML cannot carry such a name as text)."""
    return quote(os.fsencode(path), safe="/")


def _ago(when: float) -> str:
    seconds = max(0.0, time.time() - when)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(when))


def _factor(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.0f}x" if value >= 9.95 else f"{value:.1f}x"


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# ---------------------------------------------------------------- charts (inline SVG, drawn here)

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 400, 150, 52, 22, 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # its tooltip
    value: float  # the data, as a number (data-value in the SVG)


def _scale(peak: float) -> float:
    """Return a round top for an axis whose highest value is `peak`."""
    if peak <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(peak))
    for multiple in (1, 2, 2.5, 5, 10):
        if peak <= multiple * step:
            return multiple * step
    return 10 * step


def day_chart(per_day: list[tuple[str, float]]) -> dict[str, Any]:
    """Given (day, seconds of media done) oldest first, return the bars of the hours-per-day chart."""
    hours = [(day, seconds / 3600) for day, seconds in per_day]
    top = _scale(max((h for _, h in hours), default=0.0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 6, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(hours), 1)
    bars = []
    for index, (day, value) in enumerate(hours):
        height = plot_h * value / top
        if value > 0:
            height = max(height, 1.5)  # a few minutes still show
        bars.append(Bar(PAD_LEFT + index * slot + 1, PAD_TOP + plot_h - height, max(slot - 2, 1), height,
                        f"{day}: {value:.2f} h", round(value, 4)))
    ticks = [(PAD_LEFT + i * slot + slot / 2, day[5:], "middle") for i, (day, _) in enumerate(hours)
             if (len(hours) - 1 - i) % 7 == 0]  # today and each week back
    if ticks:  # today's, at the right edge: anchored there so it is not cut off
        ticks[-1] = (PAD_LEFT + len(hours) * slot, ticks[-1][1], "end")
    total = hours_text(sum(h for _, h in hours))
    return {"bars": bars, "top": hours_text(top), "ticks": ticks, "total": total,
            "width": WIDTH, "height": HEIGHT, "left": PAD_LEFT, "base": PAD_TOP + plot_h, "pad_top": PAD_TOP}


def speed_chart(factors: list[float]) -> dict[str, Any]:
    """Given the x realtime of recent jobs oldest first, return the bars of their chart."""
    top = _scale(max(factors, default=0.0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 6, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(factors), CHART_JOBS // 2, 1)
    bars = [Bar(PAD_LEFT + i * slot + 1, PAD_TOP + plot_h - max(plot_h * f / top, 1.5), max(slot - 2, 1),
                max(plot_h * f / top, 1.5), f"job {i + 1}: {_factor(f)}", round(f, 3))
            for i, f in enumerate(factors)]
    median = sorted(factors)[len(factors) // 2] if factors else None
    return {"bars": bars, "top": _trim(top), "median": _factor(median), "count": len(factors),
            "width": WIDTH, "height": HEIGHT, "left": PAD_LEFT, "base": PAD_TOP + plot_h, "pad_top": PAD_TOP}


def _trim(value: float) -> str:
    return f"{value:g}"


def hours_text(hours: float) -> str:
    """Given hours, return them in the unit that reads best: "2.5 h", "12 min", "7 s"."""
    if hours >= 1 or hours == 0:
        return f"{hours:.3g} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.3g} min"
    return f"{hours * 3600:.3g} s"

