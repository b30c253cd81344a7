"""The job queue: one SQLite file, or one PostgreSQL database, that is the only source of truth.

The watcher thread enqueues files that finished arriving, worker threads claim
and finish jobs, and CLI processes (`subwatch status/retry/forget`) read and
edit the same file while the daemon runs. Nothing is kept in memory between
calls, so a crash or power loss can neither lose a queued file nor redo a
finished one: a claimed job stays in the table as `running` until it is
finished, and `recover_running()` puts it back at the next start. (The one
write not fsynced is enqueue's, which the startup scan redoes; see
`Database.write`.)

The modules, in the order the data flows through them:

- `schema`: the tables and their migrations (append-only, column types as
  tokens each engine spells), and how paths (`os.fsencode` bytes) and job rows
  are stored.
- `engines`: what differs between SQLite (one connection per thread,
  `BEGIN IMMEDIATE`) and PostgreSQL (a pool, writes under one advisory lock,
  claims by `FOR UPDATE SKIP LOCKED`); `QueueError` and `QueueBusy`.
- `database`: `Database`, the transactions the stores use, the schema brought
  up to date on open.
- `identity`: a file's size, mtime and content `fingerprint`.
- `enqueue`: the rules that turn an arrived file into a job, or match it to
  the job of the same content (`EnqueueOutcome`: queued, copied, moved...).
- `lifecycle`: the worker's side: claim, in and out of the model (so a crash
  is held only against the files in it), done, failed with backoff, skipped,
  released.
- `recovery`: `recover_running`, the jobs a dead daemon left running put back;
  a file is failed for crashing the daemon only once it did so alone.
- `transcripts`: finished transcripts keyed by content fingerprint and the
  rules that shape decoding (`TranscriptKey`), for copies and `subwatch rewrite`.
- `outbox`: the notification a finished or failed job is owed, written with
  it and deleted once delivered, so a kill cannot lose it (`Notice`).
- `sidecars`: records of the sidecars subwatch wrote and their hashes.
- `servers`: the media servers owed or told of a job's sidecars (`ServerUpdate`).
- `stats`: read-only sums for the status page and /metrics (`QueueStats`).
- `jobs`: reading jobs, and the watcher's and CLI's edits (drop, move, retry, forget).
- `jobqueue`: `JobQueue`, the one object callers hold, a thin front over the above.
"""

from daemon.queue.database import BUSY_TIMEOUT_S, Database, QueueBusy, QueueError
from daemon.queue.enqueue import EnqueueAction, EnqueueOutcome
from daemon.queue.identity import SAMPLE_BYTES, fingerprint
from daemon.queue.jobqueue import JobQueue
from daemon.queue.lifecycle import LeaseLost
from daemon.queue.outbox import Notice
from daemon.queue.patience import until_answered
from daemon.queue.recovery import Recovered, RecoveryCause, crashed_error

__all__ = [
    "BUSY_TIMEOUT_S",
    "SAMPLE_BYTES",
    "Database",
    "EnqueueAction",
    "EnqueueOutcome",
    "JobQueue",
    "LeaseLost",
    "Notice",
    "QueueBusy",
    "QueueError",
    "Recovered",
    "RecoveryCause",
    "crashed_error",
    "fingerprint",
    "until_answered",
]
