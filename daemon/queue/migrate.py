"""`subwatch migrate-db`: a SQLite queue copied into a PostgreSQL database, nothing lost.

Every table is copied row for row with its ids (jobs, their sidecar records, stored transcripts,
owed notifications, media server updates, sidecar folders, decoder records, nodes), in one
transaction on the target, so a failure leaves it as it was. A target that already holds jobs is
refused: merging two queues would give two jobs one id. Run it with the daemon stopped.

A SQLite queue stores this host's paths; the shared one stores them as `node.path_map` says, so
each path column is written in that form (the other hosts map it to theirs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.pathmap import PathMap
from daemon.queue.database import Database
from daemon.queue.engines import QueueError
from daemon.queue.schema import SAME, key, outputs_json, path_of, paths_of_json

# In an order that keeps each foreign key's row before the rows that point at it.
TABLES = ("jobs", "sidecars", "transcripts", "outbox", "sidecar_folders", "server_updates", "decoders",
          "nodes")
IDENTITY_TABLES = ("jobs", "outbox", "server_updates")  # whose next id must follow the copied ones
# The columns that hold paths: one path (bytes) or a JSON list of them.
PATH_COLUMNS = {"jobs": {"path": "one", "folder": "one", "outputs": "list"}, "sidecars": {"path": "one"},
                "outbox": {"path": "one"}, "sidecar_folders": {"path": "one"},
                "server_updates": {"paths": "list"}}


@dataclass(frozen=True)
class Migrated:
    """How many rows of each table were copied."""

    rows: dict[str, int]


def migrate(source: Path, target_url: str, paths: PathMap = SAME) -> Migrated:
    """Given a SQLite queue's file, a postgresql:// URL and how this host's paths are stored there
    (node.path_map), copy every row there and return the counts. Raise QueueError if the source is
    missing, or the target cannot be opened or holds jobs."""
    if not source.is_file():
        raise QueueError(f"there is no SQLite queue at {source}: check state_dir in the config")
    old, new = Database(source), Database(target_url)  # both brought to the current schema
    try:
        if new.query("SELECT COUNT(*) FROM jobs").fetchone()[0]:
            raise QueueError(f"the job database {new.where} already holds jobs; migrate-db copies a queue "
                             "into an empty database only: give it a new one (createdb)")
        copied: dict[str, int] = {}
        with new.write() as conn:
            for table in TABLES:
                rows = old.query(f"SELECT * FROM {table}")
                copied[table] = len(rows)
                if not rows:
                    continue
                columns = list(rows[0].keys())
                marks = ", ".join("?" * len(columns))
                conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                                 [_stored(table, dict(zip(columns, row, strict=True)), paths)
                                  for row in rows])
            for table in IDENTITY_TABLES:
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                             f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)")
        return Migrated(copied)
    finally:
        old.close()
        new.close()


def _stored(table: str, row: dict[str, Any], paths: PathMap) -> tuple[Any, ...]:
    """Given a SQLite row by column, return its values with each path in the shared queue's form."""
    for column, kind in PATH_COLUMNS.get(table, {}).items():
        if row[column] is None:
            continue
        if kind == "one":
            row[column] = key(path_of(row[column]), paths)
        else:
            row[column] = outputs_json(paths_of_json(row[column]), paths)
    return tuple(row.values())
