"""The job database's connections and transactions, the schema brought up to date on open.

Habits (after huey and Synapse): short explicit transactions; every read-then-write is one write
transaction, so the decision and the write see the same data (SQLite: `BEGIN IMMEDIATE`;
PostgreSQL: one advisory lock, see `engines`); the schema as `CREATE ... IF NOT EXISTS`
migrations, append-only, with the version the database records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon.datatypes import Job
from daemon.pathmap import PathMap
from daemon.queue.engines import BUSY_TIMEOUT_S, Connection, QueueBusy, QueueError, ddl, engine_for
from daemon.queue.schema import (
    JOB_COLUMNS,
    MIGRATIONS,
    SAME,
    job_of,
    key,
    outputs_json,
    path_of,
    paths_of_json,
)

__all__ = ["BUSY_TIMEOUT_S", "Database", "QueueBusy", "QueueError"]


class Rows(list):
    """A query's rows, read as a cursor's would be (`fetchone`, `fetchall`, iteration)."""

    def fetchone(self) -> Any:  # noqa: ANN401 - a row, by column name or position
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


class Database:
    """The job database's connections and transactions, shared by the stores of each table.

    Safe to use from many threads and from many processes (on PostgreSQL, many hosts) at once.
    """

    def __init__(self, target: Path | str, paths: PathMap = SAME) -> None:
        """Given a SQLite file's path or a postgresql:// URL, open the database (creating a SQLite
        file if needed) and bring its schema up to date. `paths` maps the paths it stores to this
        host's (`node.path_map`); every store reads and writes paths through `key`, `job_of` & co.

        Raise QueueError if it cannot be created, opened or reached, or if it holds a schema newer
        than this code.
        """
        self.engine = engine_for(target)
        self.dialect = self.engine.dialect
        self.where = self.engine.where  # for messages: the file, or the URL without its password
        self.path = Path(target) if self.dialect == "sqlite" else None
        self.paths = paths
        self.lock_rows = self.engine.lock_rows
        self.now_sql = self.engine.now_sql
        self._closed = False
        try:
            self.engine.open()
            self._migrate()
        except QueueError:
            self.close()
            raise
        except (OSError, *self.engine.errors) as err:
            self.close()
            raise QueueError(self._cannot_open(err)) from err

    def _cannot_open(self, err: BaseException) -> str:
        if self.dialect == "sqlite":
            return (f"cannot open the job database {self.where}: {err}. Check that its folder exists and is "
                    "writable by the user subwatch runs as and that the disk is not full, "
                    "or set state_dir to a writable folder.")
        return (f"cannot open the job database {self.where}: {str(err).strip()}. Check that the server runs "
                "and lets this host in (pg_hba.conf), that the database and user exist, and that the "
                "password is in the URL, PGPASSWORD or ~/.pgpass; or set database: null for a SQLite file.")

    # -- connections and transactions -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError(f"the job database {self.where} was closed")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Yield a connection for reads outside a transaction. Raise QueueBusy if it cannot be used now."""
        self._check_open()
        with self._busy_as_queue_busy(), self.engine.reading() as conn:
            yield conn

    def query(self, sql: str, params: Sequence[object] = ()) -> Rows:
        """Given a read-only statement, return all its rows (the connection is free again at once)."""
        with self.read() as conn:
            return Rows(conn.execute(sql, params).fetchall())

    def read_job(self, *, job_id: int | None = None, path: Path | None = None) -> Job | None:
        """Given a job id or a media path, return its job as last committed, or None if none."""
        with self.read() as conn:
            if job_id is not None:
                return self.row_by_id(conn, job_id)
            assert path is not None
            return self.row_by_path(conn, path)

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[Connection]:
        """Yield a connection inside a write transaction; commit, or roll back on error.

        A durable commit is fsynced (SQLite synchronous=FULL): on power loss WAL with NORMAL keeps
        the file intact but can lose the last commits, and losing a `done` means redoing minutes of
        GPU work. Only enqueue passes durable=False: its outcome follows from the files on disk,
        so the startup scan redoes a lost one, and an fsync per file made a 2,000-file scan take
        8 s instead of 0.5 s on a busy disk. A later durable commit syncs the earlier ones too.
        """
        self._check_open()
        with self._busy_as_queue_busy(), self.engine.writing(durable) as conn:
            yield conn

    @contextmanager
    def claim(self) -> Iterator[Connection]:
        """Yield a connection inside a transaction for a claim, which locks only its own row."""
        self._check_open()
        with self._busy_as_queue_busy(), self.engine.claiming() as conn:
            yield conn

    @contextmanager
    def _busy_as_queue_busy(self) -> Iterator[None]:
        """The engine's "not now" errors (locked, busy, server gone) become QueueBusy, its text kept;
        its other errors QueueError, so callers need not know which engine they talk to."""
        try:
            yield
        except self.engine.busy_errors as err:
            raise QueueBusy(str(err).strip() or f"the job database {self.where} cannot be used now") from err
        except self.engine.errors as err:
            raise QueueError(f"the job database {self.where}: {str(err).strip()}") from err

    def _migrate(self) -> None:
        """Bring the schema up to date. Raise QueueError if the database is from a newer subwatch."""
        with self.write() as conn:
            version = self.engine.version(conn)
            if version > len(MIGRATIONS):
                raise QueueError(
                    f"the job database {self.where} has schema version {version}, newer than this "
                    f"subwatch understands ({len(MIGRATIONS)}); upgrade subwatch or set another state_dir"
                )
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(ddl(sql, self.dialect))
            self.engine.set_version(conn, len(MIGRATIONS))

    def hold_node(self, name: str) -> None:
        """Hold the node name `name` for this daemon; raise QueueError if another daemon has it."""
        self._check_open()
        try:
            self.engine.hold_node(name)
        except self.engine.errors as err:
            raise QueueError(self._cannot_open(err)) from err

    def close_thread(self) -> None:
        """Close the calling thread's connection, if it has one. A short-lived thread calls it before
        it ends: its connection (two descriptors and a page cache) is otherwise kept until close()."""
        self.engine.close_thread()

    def close(self) -> None:
        """Close every connection. Call after the threads that use the queue stopped."""
        self._closed = True
        self.engine.close()

    # -- paths: stored in the queue's form, handed out in this host's ----------------------------

    def key(self, path: Path | str) -> bytes:
        """Given a path on this host, return the bytes the database stores for it."""
        return key(path, self.paths)

    def path_of(self, blob: bytes) -> Path:
        """Given stored path bytes, return the path on this host."""
        return path_of(blob, self.paths)

    def job_of(self, row: Any) -> Job:  # noqa: ANN401 - a row by column name, of either engine
        """Given a row selected with JOB_COLUMNS, return the Job, its paths on this host."""
        return job_of(row, self.paths)

    def paths_json(self, paths: Iterable[Path]) -> str:
        """Given paths on this host, return the JSON list the database stores for them."""
        return outputs_json(paths, self.paths)

    def paths_of_json(self, text: str) -> tuple[Path, ...]:
        """Given a stored JSON list of paths, return them on this host."""
        return paths_of_json(text, self.paths)

    # -- job rows (run inside a transaction) ------------------------------------------------------

    def row_by_id(self, conn: Connection, job_id: int) -> Job | None:
        """Given a job id, return the job, or None if there is none. In a write transaction on
        PostgreSQL the row stays locked until the commit, so a claim cannot take it meanwhile."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?{self.lock_rows}"
        row = conn.execute(sql, (job_id,)).fetchone()
        return None if row is None else self.job_of(row)

    def row_by_path(self, conn: Connection, path: Path) -> Job | None:
        """Given a media path, return its job, or None if there is none (locked as `row_by_id`)."""
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE path = ?{self.lock_rows}",
                           (self.key(path),)).fetchone()
        return None if row is None else self.job_of(row)

    def require(self, conn: Connection, job_id: int) -> Job:
        """Given a job id, return the job. Raise KeyError if there is none (e.g. it was forgotten)."""
        job = self.row_by_id(conn, job_id)
        if job is None:
            raise KeyError(f"no job {job_id} in {self.where}")
        return job

    def set(self, conn: Connection, job_id: int, **fields: object) -> Job:
        """Given a job id and column values, update the row and return the job. Raise KeyError if none."""
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)  # names are ours, never input
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
        return self.require(conn, job_id)
