"""The job queue: one SQLite file that is the only source of truth.

The watcher thread enqueues files that finished arriving, worker threads claim
and finish jobs, and CLI processes (`subwatch status/retry/forget`) read and
edit the same file while the daemon runs. Nothing is kept in memory between
calls, so a crash or power loss can neither lose a queued file nor redo a
finished one: a claimed job stays in the table as `running` until it is
finished, and `recover_running()` puts it back at the next start. (The one
write not fsynced is enqueue's, which the startup scan redoes; see `_write`.)
While the model transcribes a job it is marked so (`enter_model`), so a crash
is held only against the files that were in the model, and a file is failed
for crashing the daemon only once it did so alone (see `recover_running`). The
notification a finished or failed job is owed is written with it (`notices`)
and deleted once delivered, so a kill cannot lose it either.

SQLite habits (after huey): WAL so readers never block the writer, a busy
timeout so two processes wait instead of failing, short explicit transactions,
`BEGIN IMMEDIATE` for every read-then-write so the decision and the write see
the same data, schema as `CREATE ... IF NOT EXISTS` plus `PRAGMA user_version`.

Paths are stored as `os.fsencode` bytes (BLOB), so names with newlines, quotes
or bytes that are not valid UTF-8 round-trip exactly.

Finished transcripts are stored too (`transcripts`), keyed by content
fingerprint and the rules that shape decoding (`TranscriptKey`): a copy of the
same content at another path, and `subwatch rewrite` after a layout change,
write sidecars from them without decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from daemon.datatypes import Job, JobResult, JobState, Segment, Transcript, TranscriptKey, Word
from daemon.text import printable

SAMPLE_BYTES = 1 << 20  # bytes hashed at each of start, middle and end
BUSY_TIMEOUT_S = 15.0  # transactions are milliseconds long; this only rides out a slow disk

_JOB_COLUMNS = (
    "id, path, folder, state, size, mtime, fingerprint, attempts, error, language, "
    "language_probability, outputs, media_duration, elapsed, speech_seconds, uncovered_seconds, "
    "created_at, updated_at, next_attempt_at, in_model_since, suspect, crashes"
)

# Each entry moves the schema from version i to i + 1; append, never edit.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS jobs (
            -- AUTOINCREMENT: a forgotten job's id is never reused by a new one
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path BLOB NOT NULL UNIQUE,
            folder BLOB NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            fingerprint TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            language TEXT,
            language_probability REAL,
            outputs TEXT NOT NULL DEFAULT '[]',
            media_duration REAL,
            elapsed REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            next_attempt_at REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint)",
        "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_at, id)",
        """CREATE TABLE IF NOT EXISTS sidecars (
            path BLOB PRIMARY KEY,
            sha256 TEXT NOT NULL,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE
        )""",
        "CREATE INDEX IF NOT EXISTS sidecars_job ON sidecars (job_id)",
    ),
    (
        # A finished transcript, stored for copies of the same content and for `subwatch rewrite`.
        # `rules` is _key_text(TranscriptKey); `transcript` is _transcript_json(Transcript).
        """CREATE TABLE IF NOT EXISTS transcripts (
            fingerprint TEXT NOT NULL,
            rules TEXT NOT NULL,
            transcript TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (fingerprint, rules)
        )""",
        # The rules of the transcript a done job's sidecars were written from (NULL: none stored).
        "ALTER TABLE jobs ADD COLUMN transcript_rules TEXT",
        "ALTER TABLE jobs ADD COLUMN speech_seconds REAL",
        "ALTER TABLE jobs ADD COLUMN uncovered_seconds REAL",
    ),
    (
        # Crashes are blamed on a file only when it is the likely cause (see recover_running).
        # When the model began transcribing the job; NULL while it is queued, claimed, decoded or
        # waiting for a worker, so a crash then never counts against it.
        "ALTER TABLE jobs ADD COLUMN in_model_since REAL",
        # 1: the job was in the model when the daemon died; it is transcribed alone until it has
        # been through the model once without the daemon dying.
        "ALTER TABLE jobs ADD COLUMN suspect INTEGER NOT NULL DEFAULT 0",
        # How often the daemon died while this job, a suspect, was the only one in the model.
        "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0",
        # Notifications owed: written in the transaction that ends the job (done, failed), deleted
        # once delivered or given up, so a daemon killed before delivering sends them at its next start.
        # No foreign key: a failure is still told after `subwatch forget` removed its job.
        """CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('done', 'failed')),
            path BLOB NOT NULL,
            language TEXT,
            media_duration REAL,
            elapsed REAL,
            error TEXT,
            created_at REAL NOT NULL
        )""",
    ),
    (
        # Folders subwatch made for sidecars (a name_template's "Subs/"): removed once empty. Not
        # tied to a job: one folder holds the sidecars of many.
        "CREATE TABLE IF NOT EXISTS sidecar_folders (path BLOB PRIMARY KEY)",
    ),
)

EnqueueAction = Literal[
    "queued", "requeued", "copied", "duplicate", "already_done", "already_failed", "moved"
]


RecoveryCause = Literal["waiting", "in_model", "crashed_alone"]


@dataclass(frozen=True)
class Recovered:
    """A job the last daemon left running (it was killed, crashed or lost power), as
    `JobQueue.recover_running` put it back.

    - waiting: claimed, but the model had not begun transcribing it (start-up, model loading,
      decoding, waiting for a worker): pending again, the attempt not counted.
    - in_model: in the model when the daemon died, together with `together - 1` other files or
      alone but not yet suspected: pending again as a suspect, to be transcribed alone next; the
      attempt not counted.
    - crashed_alone: a suspect, and the only file in the model when the daemon died: the attempt
      and a crash count; pending again (still a suspect), or failed (`job.state`) once it has
      `max_attempts` crashes.
    """

    job: Job
    cause: RecoveryCause
    together: int = 0  # how many jobs were in the model when the daemon died


@dataclass(frozen=True)
class Notice:
    """A notification owed for a job that ended (a row of the outbox)."""

    id: int
    job_id: int
    kind: Literal["done", "failed"]
    path: Path
    language: str | None
    media_duration: float | None
    elapsed: float | None
    error: str | None


class QueueError(Exception):
    """The job database cannot be opened or used."""


@dataclass(frozen=True)
class EnqueueOutcome:
    """What `JobQueue.enqueue` did with a file.

    - queued: a new pending job (`job`).
    - requeued: the path had a done/skipped/failed job but the content changed;
      that job is pending again with attempts 0.
    - copied: a new pending job (`job`) for a copy of content that is done (or
      skipped) at `copy_of`, another path that still exists: the same film in
      a second library, a hard link. The copy gets its own sidecars, written
      from the transcript stored for its content and its folder's rules when
      there is one (no decoding), else transcribed.
    - duplicate: this path's job is pending or running, or the same content is
      pending or running at another existing path and done nowhere; `job` is
      that job (its path may differ from the one given). No job is made for a
      copy then: the caller enqueues it again once that job has finished,
      and it is `copied` (or `already_failed`) then.
    - already_done: this path's job is done or skipped and its content has
      not changed; `job` is that job.
    - already_failed: this path's job failed, or the same content failed at
      another existing path and is done, pending and running nowhere; it
      stays failed until `subwatch retry` (or new content).
    - moved: a job for the same content sat at `previous_path`, which no longer
      exists; the job now has the new path and keeps its state. The caller
      moves the sidecars and calls `move_sidecar` for each.
    """

    job: Job
    action: EnqueueAction
    previous_path: Path | None = None
    copy_of: Path | None = None

    @property
    def queued(self) -> bool:
        """Return True if a worker has new work because of this call."""
        return self.action in ("queued", "requeued", "copied")


def fingerprint(path: Path) -> tuple[int, float, str]:
    """Given a file, return (size, mtime, content fingerprint).

    The fingerprint is the size plus a blake2b hash of up to 1 MiB at the start,
    middle and end: a few reads even on a 50 GB file, and the same for the same
    content under any name. Raise FileNotFoundError/PermissionError as is.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = _sampled_digest(f, st.st_size)
    if st.st_size == 0:
        # Every empty file has the same content; only its path tells two apart.
        return 0, st.st_mtime, f"0:{hashlib.blake2b(_key(path), digest_size=16).hexdigest()}"
    return st.st_size, st.st_mtime, f"{st.st_size}:{digest}"


def _sampled_digest(f: BinaryIO, size: int) -> str:
    """Given an open file and its size, return the hex blake2b of its sampled bytes."""
    h = hashlib.blake2b(digest_size=16)
    for offset in _sample_offsets(size):
        f.seek(offset)
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _sample_offsets(size: int) -> tuple[int, int, int]:
    """Given a file size, return where to read the three samples.

    Files up to three samples long are read whole (reads past the end are empty).
    """
    if size <= 3 * SAMPLE_BYTES:
        return 0, SAMPLE_BYTES, 2 * SAMPLE_BYTES
    return 0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES


def _key(path: os.PathLike[str] | str) -> bytes:
    """Given a path, return the exact bytes stored for it."""
    return os.fsencode(path)


def _path(blob: bytes) -> Path:
    """Given stored path bytes, return the Path they came from."""
    return Path(os.fsdecode(blob))


def _job(row: sqlite3.Row) -> Job:
    """Given a row selected with _JOB_COLUMNS, return it as a Job."""
    return Job(
        id=row["id"],
        path=_path(row["path"]),
        folder=_path(row["folder"]),
        state=JobState(row["state"]),
        size=row["size"],
        mtime=row["mtime"],
        fingerprint=row["fingerprint"],
        attempts=row["attempts"],
        error=row["error"],
        language=row["language"],
        language_probability=row["language_probability"],
        outputs=tuple(Path(p) for p in json.loads(row["outputs"])),
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
    )


def _outputs_json(outputs: Iterable[Path]) -> str:
    """Given output paths, return them as a JSON list.

    json escapes the lone surrogates that `os.fsdecode` makes of non-UTF-8
    bytes (`\\udce9`) and reads them back, so such paths survive too.
    """
    return json.dumps([os.fsdecode(p) for p in outputs])


def _key_text(key: TranscriptKey) -> str:
    """Given the rules that shape a transcript, return the text stored for them (equal for equal rules)."""
    return json.dumps(asdict(key), sort_keys=True)


def _transcript_json(transcript: Transcript) -> str:
    """Given a transcript, return it as compact JSON (each word as [start, end, text, probability]).

    Floats are written with repr's shortest exact digits, so `_transcript_from_json` gives back
    an equal Transcript.
    """
    return json.dumps({
        "language": transcript.language,
        "language_probability": transcript.language_probability,
        "duration": transcript.duration,
        "speech_seconds": transcript.speech_seconds,
        "uncovered_seconds": transcript.uncovered_seconds,
        "segments": [
            {"start": s.start, "end": s.end, "text": s.text,
             "words": [[w.start, w.end, w.text, w.probability] for w in s.words]}
            for s in transcript.segments
        ],
    }, separators=(",", ":"))


def _transcript_from_json(text: str) -> Transcript:
    """Given text made by `_transcript_json`, return the Transcript. Raise ValueError if it is not."""
    try:
        data = json.loads(text)
        segments = tuple(
            Segment(s["start"], s["end"], s["text"], tuple(Word(*w) for w in s["words"]))
            for s in data["segments"]
        )
        return Transcript(
            segments, data["language"], data["language_probability"], data["duration"],
            data["speech_seconds"], data["uncovered_seconds"],
        )
    except (TypeError, KeyError) as err:
        raise ValueError(f"not a stored transcript: {err!r}") from err


class JobQueue:
    """The job table and sidecar records in one SQLite file.

    Safe to use from many threads (each gets its own connection) and from many
    processes at once (SQLite locking; every read-then-write is one
    `BEGIN IMMEDIATE` transaction).
    """

    def __init__(self, db_path: Path) -> None:
        """Given the database path, open (creating if needed) the queue.

        Raise QueueError if the file or its folder cannot be created or opened,
        or if it holds a schema newer than this code.
        """
        self.path = Path(db_path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            # WAL is a property of the file: set once, every later connection gets it.
            conn.execute("PRAGMA journal_mode = WAL")
            self._migrate(conn)
        except QueueError:
            self.close()
            raise
        except (OSError, sqlite3.Error) as err:
            self.close()
            raise QueueError(
                f"cannot open the job database {self.path}: {err}. Check that its folder exists and is "
                "writable by the user subwatch runs as and that the disk is not full, "
                "or set state_dir to a writable folder."
            ) from err

    # -- connections and transactions -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use. Raise QueueError if closed."""
        if self._closed:
            raise QueueError(f"the job database {self.path} was closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        """Return a new connection with subwatch's settings."""
        # isolation_level=None: no implicit transactions; every write below says BEGIN itself.
        # check_same_thread=False only so close() can close other threads' connections;
        # each connection is still used by its own thread alone.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside BEGIN IMMEDIATE; commit, or roll back on error.

        A durable commit is fsynced (synchronous=FULL): on power loss WAL with NORMAL keeps the
        file intact but can lose the last commits, and losing a `done` means redoing minutes of
        GPU work. Only enqueue passes durable=False: its outcome follows from the files on disk,
        so the startup scan redoes a lost one, and an fsync per file made a 2,000-file scan take
        8 s instead of 0.5 s on a busy disk. A later durable commit syncs the earlier ones too.
        """
        conn = self._conn()
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema up to date. Raise QueueError if the file is from a newer subwatch."""
        with self._write():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(_MIGRATIONS):
                raise QueueError(
                    f"the job database {self.path} has schema version {version}, newer than this "
                    f"subwatch understands ({len(_MIGRATIONS)}); upgrade subwatch or set another state_dir"
                )
            for statements in _MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {len(_MIGRATIONS)}")

    def close_thread(self) -> None:
        """Close the calling thread's connection, if it has one. A short-lived thread calls it before
        it ends: its connection (two descriptors and a page cache) is otherwise kept until close()."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def close(self) -> None:
        """Close every thread's connection. Call after the threads that use the queue stopped."""
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- row helpers (run inside a transaction) ---------------------------------------------------

    @staticmethod
    def _row_by_id(conn: sqlite3.Connection, job_id: int) -> Job | None:
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    @staticmethod
    def _row_by_path(conn: sqlite3.Connection, path: Path) -> Job | None:
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE path = ?", (_key(path),)).fetchone()
        return None if row is None else _job(row)

    def _require(self, conn: sqlite3.Connection, job_id: int) -> Job:
        """Given a job id, return the job. Raise KeyError if there is none (e.g. it was forgotten)."""
        job = self._row_by_id(conn, job_id)
        if job is None:
            raise KeyError(f"no job {job_id} in {self.path}")
        return job

    def _set(self, conn: sqlite3.Connection, job_id: int, **fields: object) -> Job:
        """Given a job id and column values, update the row and return the job. Raise KeyError if none."""
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)  # names are ours, never input
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
        return self._require(conn, job_id)

    # -- enqueue ----------------------------------------------------------------------------------

    def enqueue(self, path: Path, folder: Path) -> EnqueueOutcome:
        """Given a file that finished arriving and its watched folder, return what was done with it.

        Identity is the content fingerprint; see EnqueueOutcome for the rules. A file whose
        size and mtime match its job at the same path is not read again (restarts stay cheap).
        Raise FileNotFoundError/PermissionError if the file cannot be read.
        """
        st = os.stat(path)
        known = self.find(path)
        if known is not None and (known.size, known.mtime) == (st.st_size, st.st_mtime):
            size, mtime, content = known.size, known.mtime, known.fingerprint
        else:
            size, mtime, content = fingerprint(path)
        with self._write(durable=False) as conn:
            job = self._row_by_path(conn, path)
            if job is not None:
                return self._enqueue_known(conn, job, folder, size, mtime, content)
            return self._enqueue_new(conn, path, folder, size, mtime, content)

    def _enqueue_known(
        self, conn: sqlite3.Connection, job: Job, folder: Path, size: int, mtime: float, content: str
    ) -> EnqueueOutcome:
        """Given the job already at the path and the file's current identity, apply the path rules."""
        if job.fingerprint != content and job.state is JobState.PENDING:
            # Rewritten before its turn: just describe the new content.
            job = self._set(conn, job.id, size=size, mtime=mtime, fingerprint=content)
            return EnqueueOutcome(job, "duplicate")
        if job.fingerprint != content and job.state is not JobState.RUNNING:
            return EnqueueOutcome(self._requeue(conn, job.id, folder, size, mtime, content), "requeued")
        if (job.size, job.mtime) != (size, mtime) and job.fingerprint == content:
            # Same content, new mtime (touched, copied back): remember it so the next scan skips hashing.
            job = self._set(conn, job.id, size=size, mtime=mtime)
        # A running job whose file changed keeps its old fingerprint, so once it is done the
        # next scan sees a different fingerprint and requeues it.
        return EnqueueOutcome(job, _action_for_existing(job.state))

    def _enqueue_new(
        self, conn: sqlite3.Connection, path: Path, folder: Path, size: int, mtime: float, content: str
    ) -> EnqueueOutcome:
        """Given a path without a job, move a job for the same content here, or give this copy its
        own job, or report the job it waits for, or insert a new one."""
        twins = [
            _job(row)
            for row in conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE fingerprint = ? ORDER BY "
                "CASE state WHEN 'done' THEN 0 WHEN 'skipped' THEN 0 WHEN 'failed' THEN 2 ELSE 1 END, id",
                (content,),
            )
        ]
        for twin in twins:
            # A running job's worker holds the old path; leave it be and let a later scan move it.
            if twin.state is not JobState.RUNNING and not twin.path.exists():
                moved = self._set(conn, twin.id, path=_key(path), folder=_key(folder), size=size, mtime=mtime)
                return EnqueueOutcome(moved, "moved", previous_path=twin.path)
        twin = min(twins, key=lambda t: _TWIN_PREFERENCE[t.state], default=None)
        if twin is None:
            return EnqueueOutcome(self._insert(conn, path, folder, size, mtime, content), "queued")
        if twin.state in (JobState.DONE, JobState.SKIPPED):
            copy = self._insert(conn, path, folder, size, mtime, content)
            return EnqueueOutcome(copy, "copied", copy_of=twin.path)
        return EnqueueOutcome(twin, _action_for_existing(twin.state))

    def _insert(
        self, conn: sqlite3.Connection, path: Path, folder: Path, size: int, mtime: float, content: str
    ) -> Job:
        """Given a path without a job and its identity, return a new pending job for it."""
        now = time.time()
        cursor = conn.execute(
            "INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
            (_key(path), _key(folder), size, mtime, content, now, now),
        )
        return self._require(conn, cursor.lastrowid or 0)

    def _requeue(
        self, conn: sqlite3.Connection, job_id: int, folder: Path, size: int, mtime: float, content: str
    ) -> Job:
        """Given a finished job whose file was replaced, return it pending again with the new identity."""
        return self._set(
            conn,
            job_id,
            state=JobState.PENDING.value,
            folder=_key(folder),
            size=size,
            mtime=mtime,
            fingerprint=content,
            attempts=0,
            suspect=0,
            crashes=0,
            in_model_since=None,
            error=None,
            language=None,
            language_probability=None,
            outputs="[]",
            media_duration=None,
            elapsed=None,
            transcript_rules=None,
            speech_seconds=None,
            uncovered_seconds=None,
            started_at=None,
            finished_at=None,
            next_attempt_at=0.0,
        )

    # -- the worker's side ------------------------------------------------------------------------

    def claim(self, now: float | None = None) -> Job | None:
        """Return the oldest pending job that is due at `now` (a suspect before any other), marked
        running, or None if none is.

        Atomic across threads and processes: no two callers get the same job.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            # Suspects first: each is transcribed alone (see recover_running), and the sooner the
            # better, before a backlog piles up behind it.
            row = conn.execute(
                "SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY suspect DESC, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, "
                "finished_at = NULL, updated_at = ? WHERE id = ?",
                (now, now, row["id"]),
            )
            return self._require(conn, row["id"])

    def finish(self, job_id: int, result: JobResult) -> Job:
        """Given a job id and the pipeline's result, return the job marked done. Raise KeyError if gone.

        The result's transcript, if it has one with its key, is stored for the job's content in the
        same transaction, and the job records its seconds of speech and of speech left uncovered.
        Its `done` notification is owed from the same transaction on (see `notices`).
        """
        transcript, key = result.transcript, result.transcript_key
        with self._write() as conn:
            job = self._require(conn, job_id)
            if transcript is not None and key is not None:
                self._store_transcript(conn, job.fingerprint, key, transcript)
            done = self._set(
                conn,
                job_id,
                state=JobState.DONE.value,
                error=None,
                language=result.language,
                language_probability=result.language_probability,
                outputs=_outputs_json(result.outputs),
                media_duration=result.media_duration,
                elapsed=result.elapsed,
                transcript_rules=None if transcript is None or key is None else _key_text(key),
                speech_seconds=None if transcript is None else transcript.speech_seconds,
                uncovered_seconds=None if transcript is None else transcript.uncovered_seconds,
                in_model_since=None,
                finished_at=time.time(),
            )
            self._owe_notice(conn, done, "done")
            return done

    def fail(
        self,
        job_id: int,
        error: str,
        *,
        permanent: bool,
        max_attempts: int = 3,
        backoff_base: float = 30.0,
        now: float | None = None,
    ) -> Job:
        """Given a job id and why it failed, return the job failed or pending again after a backoff.

        It is failed for good if `permanent` or it has had `max_attempts` attempts, and its `failed`
        notification owed (see `notices`); otherwise it is due again at now + backoff_base *
        2**(attempts - 1). Raise KeyError if the job is gone.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            attempts = max(self._require(conn, job_id).attempts, 1)
            if permanent or attempts >= max_attempts:
                failed = self._set(
                    conn, job_id, state=JobState.FAILED.value, error=error, in_model_since=None,
                    finished_at=now,
                )
                self._owe_notice(conn, failed, "failed")
                return failed
            due = now + backoff_base * 2 ** (attempts - 1)
            return self._set(
                conn, job_id, state=JobState.PENDING.value, error=error, started_at=None, in_model_since=None,
                next_attempt_at=due,
            )

    def skip(self, job_id: int, reason: str) -> Job:
        """Given a job id and why there is nothing to do, return the job marked skipped (reason in
        `error`). Raise KeyError if the job is gone."""
        with self._write() as conn:
            self._require(conn, job_id)
            state = JobState.SKIPPED.value
            return self._set(
                conn, job_id, state=state, error=reason, in_model_since=None, finished_at=time.time()
            )

    def release(self, job_id: int) -> Job:
        """Given a running job id, return it pending again without counting the attempt.

        For a daemon that stops cleanly mid-job: it is no crash, so a suspect stays one and gains no
        crash. A job in another state is returned unchanged. Raise KeyError if the job is gone.
        """
        with self._write() as conn:
            job = self._require(conn, job_id)
            if job.state is not JobState.RUNNING:
                return job
            return self._set(
                conn, job_id, state=JobState.PENDING.value, attempts=max(job.attempts - 1, 0),
                started_at=None, in_model_since=None,
            )

    def enter_model(self, job_ids: Iterable[int], now: float | None = None) -> None:
        """Given the running jobs a worker is about to hand the model together, mark them in the
        model: if the daemon dies before `leave_model`, recover_running holds it against them."""
        now = time.time() if now is None else now
        ids = list(job_ids)
        with self._write() as conn:  # durable: after a power cut the mark must be there
            conn.executemany(
                "UPDATE jobs SET in_model_since = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                [(now, now, job_id) for job_id in ids],
            )

    def leave_model(self, job_ids: Iterable[int], *, survived: bool) -> None:
        """Given jobs the model has finished with, clear their in-model mark; with `survived` (the
        model returned or raised, the daemon lived through it) a suspect among them is cleared too,
        its crashes forgiven: the file does not bring the daemon down. Not `survived`: a stop
        abandoned the transcription, which proves nothing either way."""
        ids = list(job_ids)
        now = time.time()
        cleared = ", suspect = 0, crashes = 0" if survived else ""
        with self._write() as conn:
            conn.executemany(
                f"UPDATE jobs SET in_model_since = NULL{cleared}, updated_at = ? WHERE id = ?",
                [(now, job_id) for job_id in ids],
            )

    def recover_running(self, max_attempts: int = 3) -> list[Recovered]:
        """Return the jobs the last daemon left running, each pending again or failed, and why (call
        once at start, before any claim).

        A crash counts against a file only when that file is the likely cause. One that was not in
        the model yet (start-up, model loading, decoding, waiting for a worker) is put back as
        `release` would, the attempt not counted. The files that were in the model become suspects,
        the attempt not counted: each is transcribed alone next. A suspect that was the only file in
        the model has the attempt and a crash counted, and `max_attempts` such crashes fail it: a
        file that kills the daemon (out of memory, a decoder bug) must not make it crash at every
        start, nor condemn the files that shared its batch. A failed one's notification is owed.
        """
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id")
            running = [_job(row) for row in rows.fetchall()]
            together = sum(job.in_model_since is not None for job in running)
            recovered = []
            for job in running:
                back = {"state": JobState.PENDING.value, "started_at": None, "in_model_since": None,
                        "next_attempt_at": 0.0}
                if job.in_model_since is None:
                    cause: RecoveryCause = "waiting"
                    back["attempts"] = max(job.attempts - 1, 0)
                elif together == 1 and job.suspect:
                    cause, crashes = "crashed_alone", job.crashes + 1
                    back["crashes"] = crashes
                    if crashes >= max_attempts:
                        error = crashed_alone_error(job.path, crashes)
                        back.update(state=JobState.FAILED.value, error=error, finished_at=now)
                else:
                    cause = "in_model"
                    back.update(suspect=1, attempts=max(job.attempts - 1, 0))
                now_job = self._set(conn, job.id, **back)
                if now_job.state is JobState.FAILED:
                    self._owe_notice(conn, now_job, "failed")
                recovered.append(Recovered(now_job, cause, together))
            return recovered

    # -- notifications owed ---------------------------------------------------------------------------

    @staticmethod
    def _owe_notice(conn: sqlite3.Connection, job: Job, kind: str) -> None:
        conn.execute(
            "INSERT INTO outbox (job_id, kind, path, language, media_duration, elapsed, error, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, kind, _key(job.path), job.language, job.media_duration, job.elapsed, job.error,
             time.time()),
        )

    def notices(self, after: int = 0) -> list[Notice]:
        """Return the notifications owed whose id is above `after`, oldest first."""
        rows = self._conn().execute(
            "SELECT id, job_id, kind, path, language, media_duration, elapsed, error FROM outbox "
            "WHERE id > ? ORDER BY id", (after,),
        )
        return [Notice(row["id"], row["job_id"], row["kind"], _path(row["path"]), row["language"],
                       row["media_duration"], row["elapsed"], row["error"]) for row in rows]

    def notices_settled(self, ids: Iterable[int]) -> None:
        """Given owed notifications that were delivered (or given up on), owe them no longer."""
        # Not fsynced: if a power cut loses this, the notification is sent once more at the next start.
        with self._write(durable=False) as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def next_wakeup(self) -> float | None:
        """Return the earliest next_attempt_at of pending jobs (may be in the past), or None if none."""
        row = self._conn().execute("SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending'").fetchone()
        return row[0]

    # -- reading ----------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """Given a job id, return the job, or None if there is none."""
        return self._row_by_id(self._conn(), job_id)

    def find(self, path: Path) -> Job | None:
        """Given a media path, return its job, or None if there is none."""
        return self._row_by_path(self._conn(), path)

    def jobs(self, states: Iterable[JobState] | None = None) -> list[Job]:
        """Return the jobs in `states` (all jobs if None), oldest first."""
        if states is None:
            rows = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id")
        else:
            wanted = [JobState(s).value for s in states]
            marks = ", ".join("?" * len(wanted))
            rows = self._conn().execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY id", wanted
            )
        return [_job(row) for row in rows]

    def counts(self) -> dict[JobState, int]:
        """Return how many jobs are in each state (every state present, zero if none)."""
        counts = dict.fromkeys(JobState, 0)
        for state, n in self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = n
        return counts

    # -- edits from the watcher and the CLI -------------------------------------------------------

    def drop(self, path: Path, *, claimed: bool = False) -> Job | None:
        """Given a media path deleted before its turn, remove its pending job and return it.

        With `claimed`, a running job is removed too: the worker that claimed it
        found the file gone. Return None (and change nothing) if there is no such job.
        """
        allowed = {JobState.PENDING, JobState.RUNNING} if claimed else {JobState.PENDING}
        with self._write() as conn:
            job = self._row_by_path(conn, path)
            if job is None or job.state not in allowed:
                return None
            conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            return job

    def move(self, old: Path, new: Path, folder: Path | None = None) -> Job | None:
        """Given a media file's old and new path, return its job with the new path (and `folder`
        if given), or None if the old path has no job.

        A job already at `new` describes a file that was just overwritten, so it is deleted
        together with its sidecar records. Sidecars themselves are the caller's to move.
        """
        with self._write() as conn:
            job = self._row_by_path(conn, old)
            if job is None:
                return None
            conn.execute("DELETE FROM jobs WHERE path = ? AND id != ?", (_key(new), job.id))
            fields: dict[str, object] = {"path": _key(new)}
            if folder is not None:
                fields["folder"] = _key(folder)
            return self._set(conn, job.id, **fields)

    def retry(self, path: Path | None = None, all_failed: bool = False) -> int:
        """Put the failed job at `path` (or every failed job) back to pending with attempts 0 and
        return how many were. Raise ValueError if neither a path nor all_failed is given."""
        sql = (
            "UPDATE jobs SET state = 'pending', attempts = 0, error = NULL, next_attempt_at = 0, "
            "suspect = 0, crashes = 0, in_model_since = NULL, "
            "started_at = NULL, finished_at = NULL, updated_at = ? WHERE state = 'failed'"
        )
        params: tuple[object, ...] = (time.time(),)
        if not all_failed:
            if path is None:
                raise ValueError("retry needs a path or all_failed=True")
            sql += " AND path = ?"
            params += (_key(path),)
        with self._write() as conn:
            return conn.execute(sql, params).rowcount

    def forget(self, path: Path) -> bool:
        """Given a media path, delete its job, its sidecar records and (unless a copy's job shares
        it) the transcript stored for its content, so the file can be queued fresh and transcribed
        anew; return False if there was no job. Raise ValueError if the job is running right now."""
        with self._write() as conn:
            job = self._row_by_path(conn, path)
            if job is None:
                return False
            if job.state is JobState.RUNNING:
                raise ValueError(f"{path} is being transcribed now; wait for it or stop the daemon first")
            conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))  # sidecars go by ON DELETE CASCADE
            # Queued fresh means transcribed anew: its stored transcript goes, unless a copy uses it.
            conn.execute(
                "DELETE FROM transcripts WHERE fingerprint = ? "
                "AND NOT EXISTS (SELECT 1 FROM jobs WHERE fingerprint = ?)",
                (job.fingerprint, job.fingerprint),
            )
            return True

    # -- stored transcripts -------------------------------------------------------------------------

    def store_transcript(self, content: str, key: TranscriptKey, transcript: Transcript) -> None:
        """Given a content fingerprint, the rules that shaped a transcript of it and the transcript,
        store it (replacing one stored under the same fingerprint and rules)."""
        with self._write() as conn:
            self._store_transcript(conn, content, key, transcript)

    @staticmethod
    def _store_transcript(
        conn: sqlite3.Connection, content: str, key: TranscriptKey, transcript: Transcript
    ) -> None:
        conn.execute(
            "INSERT INTO transcripts (fingerprint, rules, transcript, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (fingerprint, rules) DO UPDATE SET transcript = excluded.transcript, "
            "created_at = excluded.created_at",
            (content, _key_text(key), _transcript_json(transcript), time.time()),
        )

    def transcript(self, content: str, key: TranscriptKey) -> Transcript | None:
        """Given a content fingerprint and the rules that shape a transcript, return the stored
        transcript, or None if there is none. Raise QueueError if the stored one cannot be read."""
        row = self._conn().execute(
            "SELECT transcript FROM transcripts WHERE fingerprint = ? AND rules = ?",
            (content, _key_text(key)),
        ).fetchone()
        return None if row is None else self._parsed(row["transcript"], content)

    def transcript_of(self, job_id: int) -> Transcript | None:
        """Given a job id, return the stored transcript its sidecars were written from, or None if
        there is none (not done, or done before transcripts were stored). Raise QueueError if the
        stored one cannot be read."""
        row = self._conn().execute(
            "SELECT t.transcript, t.fingerprint FROM jobs j JOIN transcripts t "
            "ON t.fingerprint = j.fingerprint AND t.rules = j.transcript_rules WHERE j.id = ?",
            (job_id,),
        ).fetchone()
        return None if row is None else self._parsed(row["transcript"], row["fingerprint"])

    def _parsed(self, text: str, content: str) -> Transcript:
        """Given a stored transcript's JSON, return the Transcript. Raise QueueError if it is unreadable."""
        try:
            return _transcript_from_json(text)
        except ValueError as err:
            raise QueueError(
                f"the transcript stored for content {content} in {self.path} cannot be read ({err}); "
                "`subwatch forget` its file and scan it again to transcribe it anew"
            ) from err

    # -- sidecar records --------------------------------------------------------------------------

    def record_sidecar(self, path: Path, sha256: str, job_id: int) -> None:
        """Record that subwatch wrote `path` with content hash `sha256` for a job.

        Raise KeyError if the job does not exist.
        """
        with self._write() as conn:
            self._require(conn, job_id)
            conn.execute(
                "INSERT INTO sidecars (path, sha256, job_id) VALUES (?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, job_id = excluded.job_id",
                (_key(path), sha256, job_id),
            )

    def sidecar_hash(self, path: Path) -> str | None:
        """Given a sidecar path, return the sha256 subwatch recorded for it, or None if it is not ours."""
        row = self._conn().execute("SELECT sha256 FROM sidecars WHERE path = ?", (_key(path),)).fetchone()
        return None if row is None else row["sha256"]

    def move_sidecar(self, old: Path, new: Path) -> bool:
        """Given a recorded sidecar's old and new path, move the record (replacing one at `new`)
        and the job's list of outputs; return False if `old` was not recorded."""
        with self._write() as conn:
            row = conn.execute("SELECT job_id FROM sidecars WHERE path = ?", (_key(old),)).fetchone()
            if row is None:
                return False
            if _key(old) == _key(new):
                return True
            conn.execute("DELETE FROM sidecars WHERE path = ?", (_key(new),))
            conn.execute("UPDATE sidecars SET path = ? WHERE path = ?", (_key(new), _key(old)))
            job = self._row_by_id(conn, row["job_id"])
            if job is not None and old in job.outputs:
                outputs = [new if p == old else p for p in job.outputs]
                conn.execute("UPDATE jobs SET outputs = ? WHERE id = ?", (_outputs_json(outputs), job.id))
            return True

    def forget_sidecar(self, path: Path) -> bool:
        """Given a sidecar path, delete subwatch's record of it; return False if there was none."""
        with self._write() as conn:
            return conn.execute("DELETE FROM sidecars WHERE path = ?", (_key(path),)).rowcount > 0

    def record_sidecar_folder(self, path: Path) -> None:
        """Record that subwatch made the folder `path` for sidecars."""
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO sidecar_folders (path) VALUES (?)", (_key(path),))

    def is_sidecar_folder(self, path: Path) -> bool:
        """Given a folder, return True if subwatch recorded making it for sidecars."""
        row = self._conn().execute("SELECT 1 FROM sidecar_folders WHERE path = ?", (_key(path),)).fetchone()
        return row is not None

    def forget_sidecar_folder(self, path: Path) -> bool:
        """Given a folder, delete subwatch's record of making it; return False if there was none."""
        with self._write() as conn:
            return conn.execute("DELETE FROM sidecar_folders WHERE path = ?", (_key(path),)).rowcount > 0

    def set_outputs(self, job_id: int, outputs: Iterable[Path]) -> Job:
        """Given a job id and the sidecars now written for it, return the job with them as its
        outputs. Raise KeyError if the job is gone."""
        with self._write() as conn:
            self._require(conn, job_id)
            return self._set(conn, job_id, outputs=_outputs_json(outputs))

    def sidecars_of(self, job_id: int) -> list[Path]:
        """Given a job id, return the sidecar paths recorded for it, sorted."""
        rows = self._conn().execute("SELECT path FROM sidecars WHERE job_id = ? ORDER BY path", (job_id,))
        return [_path(row["path"]) for row in rows]


def crashed_alone_error(path: Path, crashes: int) -> str:
    """Given a file that crashed the daemon each time it was transcribed alone, return why it failed."""
    shown = shlex.quote(printable(os.fsdecode(path)))
    return (
        f"the daemon crashed {crashes} times while transcribing this file alone; it may be damaged: "
        f"check it with ffprobe, then `subwatch retry {shown}`"
    )


# Which job a copy follows when its content has several: a done one (its transcript is stored), else
# one still in the works (wait for it), else a skipped one (the reason may be its path), else a failure.
_TWIN_PREFERENCE = {JobState.DONE: 0, JobState.PENDING: 1, JobState.RUNNING: 1, JobState.SKIPPED: 2,
                    JobState.FAILED: 3}


def _action_for_existing(state: JobState) -> EnqueueAction:
    """Given the state of the job that already covers a file, return the enqueue action to report."""
    if state in (JobState.DONE, JobState.SKIPPED):
        return "already_done"
    if state is JobState.FAILED:
        return "already_failed"
    return "duplicate"
