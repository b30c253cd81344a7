"""Read-only sums over the job table for the status page and /metrics.

Computed from the database on each call, so they survive restarts and agree with
`subwatch status`: counts and sums of what is recorded, never in-memory tallies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.datatypes import Job
from daemon.queue.database import Database
from daemon.queue.schema import JOB_COLUMNS


@dataclass(frozen=True)
class FolderCounts:
    """One watched folder's jobs: how many in each state, and the speech its done jobs held."""

    folder: Path
    done: int = 0
    failed: int = 0
    pending: int = 0  # pending and running
    skipped: int = 0
    speech_seconds: float = 0.0


@dataclass(frozen=True)
class Finished:
    """A done or failed job with the time it ended."""

    job: Job
    finished_at: float


def _count(condition: str) -> str:
    """Given a condition on a row, return SQL counting the rows that meet it (a boolean sum in
    SQLite, which PostgreSQL refuses)."""
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


class QueueStats:
    """Sums over the `jobs` and `server_updates` tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def by_folder(self) -> list[FolderCounts]:
        """Return each folder's counts, by folder path."""
        rows = self._db.query(
            "SELECT folder, "
            + _count("state = 'done'") + " AS done, " + _count("state = 'failed'") + " AS failed, "
            + _count("state IN ('pending', 'running')") + " AS pending, "
            + _count("state = 'skipped'") + " AS skipped, "
            + "COALESCE(SUM(CASE WHEN state = 'done' THEN speech_seconds END), 0.0) AS speech "
            "FROM jobs GROUP BY folder")
        counts = [FolderCounts(self._db.path_of(r["folder"]), r["done"], r["failed"], r["pending"],
                               r["skipped"], r["speech"]) for r in rows]
        return sorted(counts, key=lambda c: str(c.folder))

    def totals(self) -> tuple[float, float]:
        """Return the seconds of media and of speech the done jobs held."""
        row = self._db.query(
            "SELECT COALESCE(SUM(media_duration), 0.0), COALESCE(SUM(speech_seconds), 0.0) FROM jobs "
            "WHERE state = 'done'").fetchone()
        return row[0], row[1]

    def done_timings(self) -> list[tuple[float, float]]:
        """Return (media seconds, seconds it took) of each done job that recorded both."""
        rows = self._db.query(
            "SELECT media_duration, elapsed FROM jobs WHERE state = 'done' "
            "AND media_duration IS NOT NULL AND elapsed IS NOT NULL")
        return [(r[0], r[1]) for r in rows]

    def oldest_pending_since(self) -> float | None:
        """Return when the oldest pending job was queued (epoch seconds), or None if none is pending."""
        sql = "SELECT MIN(created_at) FROM jobs WHERE state = 'pending'"
        return self._db.query(sql).fetchone()[0]

    def recent(self, state: str, limit: int) -> list[Finished]:
        """Return the jobs in `state` (done or failed) that ended last, newest first, at most `limit`."""
        rows = self._db.query(
            f"SELECT {JOB_COLUMNS}, finished_at FROM jobs WHERE state = ? "
            "ORDER BY COALESCE(finished_at, updated_at) DESC, id DESC LIMIT ?", (state, limit))
        return [Finished(self._db.job_of(r), r["finished_at"] or r["updated_at"]) for r in rows]

    def next_pending(self, limit: int) -> list[Job]:
        """Return the pending jobs in the order they are claimed (suspects first), at most `limit`."""
        rows = self._db.query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'pending' "
            "ORDER BY suspect DESC, next_attempt_at > ?, id LIMIT ?", (time.time(), limit))
        return [self._db.job_of(r) for r in rows]

    def media_seconds_per_day(self, days: int, now: float | None = None) -> list[tuple[str, float]]:
        """Return (YYYY-MM-DD in local time, seconds of media done that day) for the last `days` days,
        oldest first, a day with nothing done included with 0."""
        now = time.time() if now is None else now
        today = time.localtime(now)
        start = time.mktime((today.tm_year, today.tm_mon, today.tm_mday - (days - 1), 0, 0, 0, 0, 0, -1))
        rows = self._db.query(
            "SELECT finished_at, media_duration FROM jobs WHERE state = 'done' AND finished_at >= ? "
            "AND media_duration IS NOT NULL", (start,))
        done: dict[str, float] = {}
        for finished_at, seconds in rows:  # by local day here: the two engines' date functions differ
            day = time.strftime("%Y-%m-%d", time.localtime(finished_at))
            done[day] = done.get(day, 0.0) + seconds
        out = []
        for offset in range(days):
            t = time.localtime(time.mktime((today.tm_year, today.tm_mon, today.tm_mday - (days - 1) + offset,
                                            12, 0, 0, 0, 0, -1)))
            day = time.strftime("%Y-%m-%d", t)
            out.append((day, done.get(day, 0.0)))
        return out

    def server_outcomes(self) -> list[tuple[str, str, int]]:
        """Return (media server kind, told or failed, how many) of the media server notifications settled."""
        rows = self._db.query(
            "SELECT server, state, COUNT(*) FROM server_updates WHERE state IN ('told', 'failed') "
            "GROUP BY server, state")
        counts: dict[tuple[str, str], int] = {}
        for server, state, n in rows:
            kind = server.split(" ", 1)[0]  # the label is "kind URL": the URL stays out of metrics
            counts[kind, state] = counts.get((kind, state), 0) + n
        return [(kind, state, n) for (kind, state), n in sorted(counts.items())]


def realtime_factors(timings: Sequence[tuple[float, float]]) -> list[float]:
    """Given (media seconds, seconds taken) pairs, return media / taken of each that took any time."""
    return [media / taken for media, taken in timings if taken and taken > 0]
