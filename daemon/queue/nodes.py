"""The `nodes` table: each daemon that uses the queue, its heartbeat by the database's clock.

A daemon beats every few seconds (`JobQueue.renew`, with its leases); one whose last beat is older
than its lease is gone: its running jobs are put back by the other nodes (`recovery.reap_lapsed`),
and the notifications and media server updates it owed are adopted by one of them (`adopt`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.queue.database import Database


@dataclass(frozen=True)
class NodeRecord:
    """One daemon as the queue last heard of it."""

    name: str
    started_at: float
    heartbeat_at: float
    lease_seconds: float
    stopped_at: float | None  # a clean stop; None while it runs or after it died
    silent_for: float  # seconds since its last beat, by the database's clock
    workers: tuple[str, ...] = ()  # the devices its transcribers run on, as configured

    @property
    def gone(self) -> bool:
        """True once it stopped, or went silent for longer than its lease (died, hung, cut off)."""
        return self.stopped_at is not None or self.silent_for > self.lease_seconds


def orphaned(db: Database) -> str:
    """Return the SQL condition for rows no live node owes: of no node (written before nodes were
    recorded), or of a node that stopped or went silent for longer than its lease."""
    return ("(node IS NULL OR node NOT IN (SELECT name FROM nodes WHERE stopped_at IS NULL "
            f"AND heartbeat_at + lease_seconds >= {db.now_sql}))")


class NodeRecords:
    """The `nodes` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def beat(self, name: str, lease_seconds: float, workers: Sequence[str] | None = None, *,
             starting: bool = False) -> None:
        """Record that the node `name` is alive now (`starting`: its run began now), and the devices
        its transcribers run on (None: as last recorded)."""
        now = self._db.now_sql
        started = f"started_at = {now}, stopped_at = NULL, " if starting else ""
        devices = None if workers is None else json.dumps(list(workers))
        with self._db.write(durable=False) as conn:
            conn.execute(
                "INSERT INTO nodes (name, started_at, heartbeat_at, lease_seconds, workers) "
                f"VALUES (?, {now}, {now}, ?, ?) "
                f"ON CONFLICT (name) DO UPDATE SET {started}heartbeat_at = {now}, "
                "lease_seconds = excluded.lease_seconds, "
                "workers = COALESCE(excluded.workers, nodes.workers)", (name, lease_seconds, devices))

    def adopt(self, name: str) -> int:
        """Make the node `name` owe what no live node owes (a gone node's notifications and media
        server updates); return how many rows it took. One write transaction, so of several nodes
        that adopt at once exactly one takes each row, and each is sent once."""
        with self._db.write() as conn:
            taken = conn.execute(f"UPDATE outbox SET node = ? WHERE {orphaned(self._db)}", (name,)).rowcount
            taken += conn.execute(f"UPDATE server_updates SET node = ? WHERE state = 'owed' AND "
                                  f"{orphaned(self._db)}", (name,)).rowcount
            return taken

    def stopped(self, name: str) -> None:
        """Record that the node `name` stopped cleanly (its jobs were released)."""
        with self._db.write() as conn:
            conn.execute(f"UPDATE nodes SET stopped_at = {self._db.now_sql} WHERE name = ?", (name,))

    def all(self) -> list[NodeRecord]:
        """Return every node the queue has heard of, by name."""
        rows = self._db.query(
            "SELECT name, started_at, heartbeat_at, lease_seconds, stopped_at, workers, "
            f"{self._db.now_sql} - heartbeat_at AS silent FROM nodes ORDER BY name")
        return [NodeRecord(r["name"], r["started_at"], r["heartbeat_at"], r["lease_seconds"], r["stopped_at"],
                           max(r["silent"], 0.0), tuple(json.loads(r["workers"] or "[]"))) for r in rows]
