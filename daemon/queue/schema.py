"""The tables in the job file, their migrations, and how rows and paths are stored.

Paths are stored as `os.fsencode` bytes (BLOB), so names with newlines, quotes
or bytes that are not valid UTF-8 round-trip exactly; in the queue's form, which a host's
`node.path_map` (a `PathMap`) turns into its own and back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from daemon.datatypes import Job, JobState
from daemon.pathmap import PathMap

MAX_ATTEMPTS = 3  # tries of a failing job before it stays failed (the config's max_attempts)
BACKOFF_BASE_S = 30.0  # the first retry's wait; each further one waits longer
LEASE_SECONDS = 60.0  # a claim's lease, renewed every few seconds (the config's node.lease_seconds)

JOB_COLUMNS = (
    "id, path, folder, state, size, mtime, fingerprint, attempts, error, language, "
    "language_probability, outputs, media_duration, elapsed, speech_seconds, uncovered_seconds, "
    "created_at, updated_at, next_attempt_at, in_model_since, suspect, crashes, "
    "node, lease_token, lease_until"
)

# Each entry moves the schema from version i to i + 1; append, never edit. Column types are tokens
# ({id}, {blob}, {real}, {int}) that `engines.ddl` spells for SQLite or PostgreSQL.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS jobs (
            -- AUTOINCREMENT: a forgotten job's id is never reused by a new one
            id {id},
            path {blob} NOT NULL UNIQUE,
            folder {blob} NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
            size {int} NOT NULL,
            mtime {real} NOT NULL,
            fingerprint TEXT NOT NULL,
            attempts {int} NOT NULL DEFAULT 0,
            error TEXT,
            language TEXT,
            language_probability {real},
            outputs TEXT NOT NULL DEFAULT '[]',
            media_duration {real},
            elapsed {real},
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            started_at {real},
            finished_at {real},
            next_attempt_at {real} NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint)",
        "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_at, id)",
        """CREATE TABLE IF NOT EXISTS sidecars (
            path {blob} PRIMARY KEY,
            sha256 TEXT NOT NULL,
            job_id {int} NOT NULL REFERENCES jobs (id) ON DELETE CASCADE
        )""",
        "CREATE INDEX IF NOT EXISTS sidecars_job ON sidecars (job_id)",
    ),
    (
        # A finished transcript, stored for copies of the same content and for `subwatch rewrite`.
        # `rules` is transcripts.key_text(TranscriptKey); `transcript` is transcripts.transcript_json(...).
        """CREATE TABLE IF NOT EXISTS transcripts (
            fingerprint TEXT NOT NULL,
            rules TEXT NOT NULL,
            transcript TEXT NOT NULL,
            created_at {real} NOT NULL,
            PRIMARY KEY (fingerprint, rules)
        )""",
        # The rules of the transcript a done job's sidecars were written from (NULL: none stored).
        "ALTER TABLE jobs ADD COLUMN transcript_rules TEXT",
        "ALTER TABLE jobs ADD COLUMN speech_seconds {real}",
        "ALTER TABLE jobs ADD COLUMN uncovered_seconds {real}",
    ),
    (
        # Crashes are blamed on a file only when it is the likely cause (see recover_running).
        # When the model began transcribing the job; NULL while it is queued, claimed, decoded or
        # waiting for a worker, so a crash then never counts against it.
        "ALTER TABLE jobs ADD COLUMN in_model_since {real}",
        # 1: the job was in the model when the daemon died; it is transcribed alone until it has
        # been through the model once without the daemon dying.
        "ALTER TABLE jobs ADD COLUMN suspect {int} NOT NULL DEFAULT 0",
        # How often the daemon died while this job, a suspect, was the only one in the model.
        "ALTER TABLE jobs ADD COLUMN crashes {int} NOT NULL DEFAULT 0",
        # Notifications owed: written in the transaction that ends the job (done, failed), deleted
        # once delivered or given up, so a daemon killed before delivering sends them at its next start.
        # No foreign key: a failure is still told after `subwatch forget` removed its job.
        """CREATE TABLE IF NOT EXISTS outbox (
            id {id},
            job_id {int} NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('done', 'failed')),
            path {blob} NOT NULL,
            language TEXT,
            media_duration {real},
            elapsed {real},
            error TEXT,
            created_at {real} NOT NULL
        )""",
    ),
    (
        # Folders subwatch made for sidecars (a name_template's "Subs/"): removed once empty. Not
        # tied to a job: one folder holds the sidecars of many.
        "CREATE TABLE IF NOT EXISTS sidecar_folders (path {blob} PRIMARY KEY)",
    ),
    (
        # Media servers (Jellyfin, Emby, Plex) told of a job's new or moved sidecars: one row per
        # server and event, 'owed' until the server answered ('told') or was given up on ('failed'),
        # so the job records whether each server was told and a kill does not lose what is owed.
        # `server` is the server's kind and URL (never its token); `paths` a JSON list of the
        # sidecars as this machine sees them.
        """CREATE TABLE IF NOT EXISTS server_updates (
            id {id},
            job_id {int} NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            server TEXT NOT NULL,
            paths TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('owed', 'told', 'failed')),
            error TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS server_updates_job ON server_updates (job_id)",
    ),
    (
        # Each transcriber's decoder child (daemon.decoders), as `subwatch status` shows it: how often
        # it was started again, and how it died last. `name` is the worker's device as configured.
        """CREATE TABLE IF NOT EXISTS decoders (
            name TEXT PRIMARY KEY,
            pid {int},
            restarts {int} NOT NULL DEFAULT 0,
            last_death TEXT,
            last_death_at {real},
            updated_at {real} NOT NULL
        )""",
    ),
    (
        # Leases (see lifecycle and recovery): the node that claimed a job, a random token per claim
        # that every later write of that node's names (a node whose lease lapsed and was taken over
        # writes nothing), and when the lease lapses by the database's clock unless renewed.
        "ALTER TABLE jobs ADD COLUMN node TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_token TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until {real}",
        # Claims and lapsed leases read only these rows; partial indexes keep them cheap at 10,000+.
        "CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs (suspect DESC, id) WHERE state = 'pending'",
        "CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_until) WHERE state = 'running'",
        # The node that owes a notification or a media server update sends it, so each is sent once
        # however many nodes share the queue; a gone node's are adopted by one other (`nodes.adopt`).
        "ALTER TABLE outbox ADD COLUMN node TEXT",
        "ALTER TABLE server_updates ADD COLUMN node TEXT",
        # Each daemon that uses the queue, as `status` shows it: its last heartbeat by the database's
        # clock (its workers came in the next migration).
        """CREATE TABLE IF NOT EXISTS nodes (
            name TEXT PRIMARY KEY,
            started_at {real} NOT NULL,
            heartbeat_at {real} NOT NULL,
            lease_seconds {real} NOT NULL,
            stopped_at {real}
        )""",
    ),
    (
        # The devices this node's transcribers run on (a JSON list), for the cluster's status.
        "ALTER TABLE nodes ADD COLUMN workers TEXT",
        # A node's beat looks for a gone node's owed updates (nodes.adopt): only the owed rows.
        "CREATE INDEX IF NOT EXISTS server_updates_owed ON server_updates (node) WHERE state = 'owed'",
    ),
)


SAME = PathMap()  # no path_map: a path is stored as it is


def key(path: os.PathLike[str] | str, paths: PathMap = SAME) -> bytes:
    """Given a path on this host, return the exact bytes stored for it."""
    return os.fsencode(paths.stored(path))


def path_of(blob: bytes, paths: PathMap = SAME) -> Path:
    """Given stored path bytes, return the Path on this host they stand for."""
    return paths.here(os.fsdecode(blob))


def job_of(row: Any, paths: PathMap = SAME) -> Job:  # noqa: ANN401 - a row by column name, of either engine
    """Given a row selected with JOB_COLUMNS, return it as a Job, its paths on this host."""
    return Job(
        id=row["id"],
        path=path_of(row["path"], paths),
        folder=path_of(row["folder"], paths),
        state=JobState(row["state"]),
        size=row["size"],
        mtime=row["mtime"],
        fingerprint=row["fingerprint"],
        attempts=row["attempts"],
        error=row["error"],
        language=row["language"],
        language_probability=row["language_probability"],
        outputs=paths_of_json(row["outputs"], paths),
        media_duration=row["media_duration"],
        elapsed=row["elapsed"],
        speech_seconds=row["speech_seconds"],
        uncovered_seconds=row["uncovered_seconds"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_attempt_at=row["next_attempt_at"],
        in_model_since=row["in_model_since"],
        suspect=bool(row["suspect"]),
        crashes=row["crashes"],
        node=row["node"],
        lease_token=row["lease_token"],
        lease_until=row["lease_until"],
    )


def outputs_json(outputs: Iterable[Path], paths: PathMap = SAME) -> str:
    """Given paths on this host, return them as a JSON list in the stored form.

    json escapes the lone surrogates that `os.fsdecode` makes of non-UTF-8
    bytes (`\\udce9`) and reads them back, so such paths survive too.
    """
    return json.dumps([paths.stored(p) for p in outputs])


def paths_of_json(text: str, paths: PathMap = SAME) -> tuple[Path, ...]:
    """Given a JSON list of stored paths (`outputs_json`), return them on this host."""
    return tuple(paths.here(p) for p in json.loads(text))
