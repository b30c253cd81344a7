"""Media servers told of a job's sidecars: owed when they are written or moved, then told or failed.

The row is the job's record of whether each server was told (`subwatch status --json` shows them);
one still owed when the daemon stops is told at its next start.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.queue.database import Database


@dataclass(frozen=True)
class ServerUpdate:
    """A media server to tell (or told) about a job's sidecars (a row of `server_updates`)."""

    id: int
    job_id: int
    server: str  # the server's label: kind and URL
    paths: tuple[Path, ...]
    state: Literal["owed", "told", "failed"]
    error: str | None


class ServerUpdates:
    """The `server_updates` table."""

    def __init__(self, db: Database, node: str) -> None:
        self._db = db
        self._node = node

    def owe(self, job_id: int, servers: Sequence[str], paths: Sequence[Path]) -> list[ServerUpdate]:
        """Given a job, the labels of the servers to tell and its sidecars, return the rows owed."""
        now = time.time()
        text = self._db.paths_json(paths)
        with self._db.write() as conn:
            ids = [
                conn.execute(
                    "INSERT INTO server_updates (job_id, server, paths, state, created_at, updated_at, node) "
                    "VALUES (?, ?, ?, 'owed', ?, ?, ?) RETURNING id",
                    (job_id, server, text, now, now, self._node),
                ).fetchone()[0]
                for server in servers
            ]
        return [ServerUpdate(i, job_id, server, tuple(paths), "owed", None)
                for i, server in zip(ids, servers, strict=True)]

    def settle(self, update_id: int, told: bool, error: str | None = None) -> None:
        """Given an owed row, record that its server was told, or given up on (with the last error)."""
        with self._db.write(durable=False) as conn:
            conn.execute("UPDATE server_updates SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                         ("told" if told else "failed", error, time.time(), update_id))

    def of_job(self, job_id: int) -> list[ServerUpdate]:
        """Return the job's rows, oldest first."""
        return self._select("WHERE job_id = ? ORDER BY id", (job_id,))

    def owed(self) -> list[ServerUpdate]:
        """Return the rows still owed by this node (its own, and those it adopted), oldest first."""
        return self._select("WHERE state = 'owed' AND node = ? ORDER BY id", (self._node,))

    def _select(self, where: str, args: tuple[object, ...]) -> list[ServerUpdate]:
        rows = self._db.query(
            f"SELECT id, job_id, server, paths, state, error FROM server_updates {where}", args)
        return [ServerUpdate(r["id"], r["job_id"], r["server"],
                             self._db.paths_of_json(r["paths"]), r["state"], r["error"])
                for r in rows]
