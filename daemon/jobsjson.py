"""The jobs as JSON: `subwatch status --json` prints it and the HTTP side's `GET /api/jobs` serves it.

One definition for both, so a script reading either sees the same fields.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from daemon.datatypes import Job, JobState

if TYPE_CHECKING:
    from daemon.queue import JobQueue


def jobs_json(queue: JobQueue | None, states: Iterable[JobState] | None = None) -> list[dict[str, Any]]:
    """Given the queue (None: no database yet) and the states wanted (None: all), return each job's
    fields and whether each media server was told of its sidecars, oldest first."""
    jobs = queue.jobs(states) if queue is not None else []
    return [{**job_json(job), "media_servers": servers_json(queue, job)} for job in jobs]


def job_json(job: Job) -> dict[str, Any]:
    """Return one job's fields as JSON values."""
    return {
        "id": job.id,
        "path": os.fsdecode(job.path),
        "folder": str(job.folder),
        "state": job.state.value,
        "attempts": job.attempts,
        "node": job.node,  # the daemon that claimed it last (did it, once done)
        "suspect": job.suspect,
        "crashes": job.crashes,
        # A done job's `error` column holds its note ("no speech found"), shown as `note`, never as an error.
        "error": None if job.state is JobState.DONE else job.error,
        "language": job.language,
        "language_probability": job.language_probability,
        "outputs": [str(p) for p in job.outputs],
        "media_duration": job.media_duration,
        "elapsed": job.elapsed,
        "speech_seconds": job.speech_seconds,
        "uncovered_seconds": job.uncovered_seconds,
        "size": job.size,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "note": job.error if job.state is JobState.DONE else None,
    }


def servers_json(queue: JobQueue | None, job: Job) -> list[dict[str, object]]:
    """Return whether each media server was told of the job's sidecars (its latest news of them)."""
    latest = {update.server: update for update in (queue.server_updates_of(job.id) if queue else [])}
    return [{"server": u.server, "state": u.state, "error": u.error} for u in latest.values()]


def json_text(value: object) -> str:
    """Return `value` as JSON text that any terminal, pipe or HTTP body can take.

    A file name that is not UTF-8 reaches us with lone surrogates (os.fsdecode);
    printed raw they would raise UnicodeEncodeError. Escaped as \\udcXX they are
    valid JSON, and Python's json.loads + os.fsencode give the exact bytes back.
    """
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def nodes_json(queue: Any) -> list[dict[str, Any]]:
    """Each daemon that uses the queue, as `subwatch status --json --nodes` and GET /api/nodes show it:
    its last heartbeat, whether it is gone (stopped, or silent past its lease), the devices its
    transcribers run on, the files it holds (claimed: decoding, waiting or in the model) and those
    in its model now."""
    if queue is None:
        return []
    holding: dict[str | None, list[str]] = {}
    transcribing: dict[str | None, list[str]] = {}
    for job in queue.jobs([JobState.RUNNING]):
        holding.setdefault(job.node, []).append(os.fsdecode(job.path))
        if job.in_model_since is not None:
            transcribing.setdefault(job.node, []).append(os.fsdecode(job.path))
    return [{"name": n.name, "gone": n.gone, "started_at": n.started_at, "heartbeat_at": n.heartbeat_at,
             "silent_seconds": round(n.silent_for, 1), "lease_seconds": n.lease_seconds,
             "stopped_at": n.stopped_at, "workers": list(n.workers), "running": holding.get(n.name, []),
             "transcribing": transcribing.get(n.name, [])} for n in queue.nodes.all()]


def decoders_json(queue: Any) -> list[dict[str, Any]]:
    """Each transcriber's decoder child as `subwatch status --json --decoders` and GET /api/decoders
    show it: restarts since the daemon started and the last death's cause and time."""
    if queue is None:
        return []
    return [{"name": d.name, "restarts": d.restarts, "last_death": d.last_death,
             "last_death_at": d.last_death_at} for d in queue.decoders.all()]
