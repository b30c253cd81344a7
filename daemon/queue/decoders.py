"""The `decoders` table: each transcriber's decoder child as the status shows it, across restarts."""

from __future__ import annotations

import time
from dataclasses import dataclass

from daemon.queue.database import Database


@dataclass(frozen=True)
class DecoderRecord:
    """One worker's decoder child: its restarts and last death (None: it never died)."""

    name: str  # the worker's device as configured
    pid: int | None
    restarts: int
    last_death: str | None
    last_death_at: float | None


class DecoderRecords:
    """The `decoders` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, name: str, pid: int | None, restarts: int, last_death: str | None,
               last_death_at: float | None) -> None:
        """Keep a decoder child's state (its restarts count over the daemon's life)."""
        with self._db.write(durable=False) as conn:  # a status, not a promise: no fsync
            conn.execute(
                "INSERT INTO decoders (name, pid, restarts, last_death, last_death_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET pid = excluded.pid, "
                "restarts = excluded.restarts, last_death = excluded.last_death, "
                "last_death_at = excluded.last_death_at, updated_at = excluded.updated_at",
                (name, pid, restarts, last_death, last_death_at, time.time()),
            )

    def all(self) -> list[DecoderRecord]:
        rows = self._db.query(
            "SELECT name, pid, restarts, last_death, last_death_at FROM decoders ORDER BY name"
        ).fetchall()
        return [DecoderRecord(r["name"], r["pid"], r["restarts"], r["last_death"], r["last_death_at"])
                for r in rows]
