"""Records of the sidecars subwatch wrote: path, content hash and the job they belong to.

A sidecar whose hash still matches is subwatch's to replace or move; one that was
edited since is the user's.
"""

from __future__ import annotations

from pathlib import Path

from daemon.queue.database import Database


class SidecarStore:
    """The `sidecars` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, path: Path, sha256: str, job_id: int) -> None:
        """Record that subwatch wrote `path` with content hash `sha256` for a job.

        Raise KeyError if the job does not exist.
        """
        with self._db.write() as conn:
            self._db.require(conn, job_id)
            conn.execute(
                "INSERT INTO sidecars (path, sha256, job_id) VALUES (?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, job_id = excluded.job_id",
                (self._db.key(path), sha256, job_id),
            )

    def hash(self, path: Path) -> str | None:
        """Given a sidecar path, return the sha256 subwatch recorded for it, or None if it is not ours."""
        sql = "SELECT sha256 FROM sidecars WHERE path = ?"
        row = self._db.query(sql, (self._db.key(path),)).fetchone()
        return None if row is None else row["sha256"]

    def move(self, old: Path, new: Path) -> bool:
        """Given a recorded sidecar's old and new path, move the record (replacing one at `new`)
        and the job's list of outputs; return False if `old` was not recorded."""
        was, now = self._db.key(old), self._db.key(new)
        with self._db.write() as conn:
            row = conn.execute("SELECT job_id FROM sidecars WHERE path = ?", (was,)).fetchone()
            if row is None:
                return False
            if was == now:
                return True
            conn.execute("DELETE FROM sidecars WHERE path = ?", (now,))
            conn.execute("UPDATE sidecars SET path = ? WHERE path = ?", (now, was))
            job = self._db.row_by_id(conn, row["job_id"])
            if job is not None and old in job.outputs:
                outputs = self._db.paths_json([new if p == old else p for p in job.outputs])
                conn.execute("UPDATE jobs SET outputs = ? WHERE id = ?", (outputs, job.id))
            return True

    def forget(self, path: Path) -> bool:
        """Given a sidecar path, delete subwatch's record of it; return False if there was none."""
        with self._db.write() as conn:
            sql = "DELETE FROM sidecars WHERE path = ?"
            return conn.execute(sql, (self._db.key(path),)).rowcount > 0

    def of_job(self, job_id: int) -> list[Path]:
        """Given a job id, return the sidecar paths recorded for it, sorted."""
        rows = self._db.query(
            "SELECT path FROM sidecars WHERE job_id = ? ORDER BY path", (job_id,)
        )
        return [self._db.path_of(row["path"]) for row in rows]

    def record_folder(self, path: Path) -> None:
        """Record that subwatch made the folder `path` for sidecars."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO sidecar_folders (path) VALUES (?) ON CONFLICT DO NOTHING",
                         (self._db.key(path),))

    def is_folder(self, path: Path) -> bool:
        """Given a folder, return True if subwatch recorded making it for sidecars."""
        sql = "SELECT 1 FROM sidecar_folders WHERE path = ?"
        row = self._db.query(sql, (self._db.key(path),)).fetchone()
        return row is not None

    def forget_folder(self, path: Path) -> bool:
        """Given a folder, delete subwatch's record of making it; return False if there was none."""
        with self._db.write() as conn:
            sql = "DELETE FROM sidecar_folders WHERE path = ?"
            return conn.execute(sql, (self._db.key(path),)).rowcount > 0
