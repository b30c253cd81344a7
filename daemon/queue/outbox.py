"""Notifications owed: written in the transaction that ends a job, deleted once delivered.

A daemon killed before delivering one sends it at its next start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.datatypes import Job
from daemon.queue.database import Database
from daemon.queue.engines import Connection


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


def owe(db: Database, conn: Connection, job: Job, kind: str) -> None:
    """Given a job that just ended and how (`done`, `failed`), owe its notification, inside the
    caller's transaction."""
    conn.execute(
        "INSERT INTO outbox (job_id, kind, path, language, media_duration, elapsed, error, created_at, node) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job.id, kind, db.key(job.path), job.language, job.media_duration, job.elapsed, job.error,
         time.time(), job.node),
    )


class Outbox:
    """The `outbox` table."""

    def __init__(self, db: Database, node: str) -> None:
        self._db = db
        self._node = node

    def notices(self, after: int = 0) -> list[Notice]:
        """Return the notifications this node owes (its own jobs', and those it adopted from a gone
        node) whose id is above `after`, oldest first."""
        rows = self._db.query(
            "SELECT id, job_id, kind, path, language, media_duration, elapsed, error FROM outbox "
            "WHERE id > ? AND node = ? ORDER BY id", (after, self._node),
        )
        return [Notice(row["id"], row["job_id"], row["kind"], self._db.path_of(row["path"]), row["language"],
                       row["media_duration"], row["elapsed"], row["error"]) for row in rows]

    def settled(self, ids: Iterable[int]) -> None:
        """Given owed notifications that were delivered (or given up on), owe them no longer."""
        # Not fsynced: if a power cut loses this, the notification is sent once more at the next start.
        with self._db.write(durable=False) as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
