"""The SQLite file: one connection per thread, short transactions, the schema brought up to date.

SQLite habits (after huey): WAL so readers never block the writer, a busy
timeout so two processes wait instead of failing, short explicit transactions,
`BEGIN IMMEDIATE` for every read-then-write so the decision and the write see
the same data, schema as `CREATE ... IF NOT EXISTS` plus `PRAGMA user_version`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.datatypes import Job
from daemon.queue.schema import JOB_COLUMNS, MIGRATIONS, job_of, key

BUSY_TIMEOUT_S = 15.0  # transactions are milliseconds long; this only rides out a slow disk


class QueueError(Exception):
    """The job database cannot be opened or used."""


class Database:
    """The job file's connections and transactions, shared by the stores of each table.

    Safe to use from many threads (each gets its own connection) and from many
    processes at once (SQLite locking; every read-then-write is one
    `BEGIN IMMEDIATE` transaction).
    """

    def __init__(self, db_path: Path) -> None:
        """Given the database path, open (creating if needed) the file and bring its schema up to date.

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
            conn = self.conn()
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

    def conn(self) -> sqlite3.Connection:
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
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside BEGIN IMMEDIATE; commit, or roll back on error.

        A durable commit is fsynced (synchronous=FULL): on power loss WAL with NORMAL keeps the
        file intact but can lose the last commits, and losing a `done` means redoing minutes of
        GPU work. Only enqueue passes durable=False: its outcome follows from the files on disk,
        so the startup scan redoes a lost one, and an fsync per file made a 2,000-file scan take
        8 s instead of 0.5 s on a busy disk. A later durable commit syncs the earlier ones too.
        """
        conn = self.conn()
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
        with self.write():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise QueueError(
                    f"the job database {self.path} has schema version {version}, newer than this "
                    f"subwatch understands ({len(MIGRATIONS)}); upgrade subwatch or set another state_dir"
                )
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

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

    # -- job rows (run inside a transaction) ------------------------------------------------------

    @staticmethod
    def row_by_id(conn: sqlite3.Connection, job_id: int) -> Job | None:
        """Given a job id, return the job, or None if there is none."""
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_of(row)

    @staticmethod
    def row_by_path(conn: sqlite3.Connection, path: Path) -> Job | None:
        """Given a media path, return its job, or None if there is none."""
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE path = ?", (key(path),)).fetchone()
        return None if row is None else job_of(row)

    def require(self, conn: sqlite3.Connection, job_id: int) -> Job:
        """Given a job id, return the job. Raise KeyError if there is none (e.g. it was forgotten)."""
        job = self.row_by_id(conn, job_id)
        if job is None:
            raise KeyError(f"no job {job_id} in {self.path}")
        return job

    def set(self, conn: sqlite3.Connection, job_id: int, **fields: object) -> Job:
        """Given a job id and column values, update the row and return the job. Raise KeyError if none."""
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)  # names are ours, never input
        conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
        return self.require(conn, job_id)
