"""The shared queue on a real PostgreSQL server: claim latency with a deep backlog, the connections
one node holds, and how long a dead node's file waits before another node takes it (issue #21).

    python bench/cluster.py                  # 10,000 queued jobs, 300 claims, 8 claiming threads
    python bench/cluster.py --jobs 2000 --claims 100

Starts its own server (Debian's postgresql, as tests/postgres.py does), fills a fresh database
with `--jobs` pending jobs, and times claims (each claim, then its finish, as a worker does) from
one thread and from several at once; the same on a SQLite file for comparison. Prints a table, the
plan PostgreSQL picks for the claim, and the connections a node held at its busiest.

The takeover: node "dead" claims a file and stops renewing (as a killed daemon does); node "alive"
runs the daemon's own LeaseKeeper and claims the file as soon as it is put back. Timed from the dead
node's last renewal to the other's claim, `--takeovers` times with `--lease` seconds.

Not measured here yet: throughput with 1, 2 and 3 daemons sharing the queue (the rest of #21).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.datatypes import JobResult  # noqa: E402
from daemon.queue import JobQueue  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402


def fill(q: JobQueue, jobs: int) -> None:
    """Insert `jobs` pending jobs in one transaction (enqueue would hash files: not what is timed)."""
    now = time.time()
    with q._db.write() as conn:  # noqa: SLF001 - a bench seeds the table directly
        conn.executemany(
            "INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, created_at, updated_at) "
            "VALUES (?, ?, 'pending', 1, 0, ?, ?, ?)",
            [(f"/media/{i:06}.mkv".encode(), b"/media", f"1:{i:x}", now, now) for i in range(jobs)])


def timed_claims(q: JobQueue, claims: int, threads: int) -> list[float]:
    """Claim and finish `claims` jobs from `threads` threads; return each claim's seconds."""
    took: list[float] = []
    lock = threading.Lock()
    left = [claims]

    def work() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            started = time.perf_counter()
            job = q.claim()
            seconds = time.perf_counter() - started
            with lock:
                took.append(seconds)
            q.finish(job.id, JobResult("en", None, 1.0, 0.1))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return took


def takeover(url: str, lease: float) -> float:
    """Return seconds from a node's last renewal of a claimed file's lease to another node's claim."""
    from daemon.leases import LeaseKeeper

    dead = JobQueue(url, node="dead", lease_seconds=lease)
    alive = JobQueue(url, node="alive", lease_seconds=lease)
    fill(dead, 1)
    job = dead.claim()
    dead.renew()
    last_beat = time.monotonic()  # the node dies here: nothing renews its lease again
    keeper = LeaseKeeper(alive, reaped=lambda: None)
    keeper.start()
    while (taken := alive.claim()) is None:
        time.sleep(0.02)
    waited = time.monotonic() - last_beat
    keeper.stop()
    assert taken.id == job.id and taken.node == "alive"
    dead.close()
    alive.close()
    return waited


def row(name: str, took: list[float]) -> str:
    ms = sorted(t * 1000 for t in took)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p95:.1f} | {ms[-1]:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--lease", type=float, default=10.0, help="seconds (the config's minimum: 10)")
    parser.add_argument("--takeovers", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        server = PostgresServer(Path(scratch) / "postgres")
        try:
            url = server.fresh_url()
            q = JobQueue(url, node="bench")
            fill(q, args.jobs)
            import psycopg

            with psycopg.connect(url) as raw:
                raw.execute("ANALYZE jobs")
                plan = raw.execute(
                    "EXPLAIN SELECT id FROM jobs WHERE state = 'pending' AND next_attempt_at <= %s "
                    "ORDER BY suspect DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED", (time.time(),)).fetchall()
            rows.append(row(f"PostgreSQL, {args.jobs:,} queued, 1 thread", timed_claims(q, args.claims, 1)))
            busiest = [0]
            stop = threading.Event()

            def count_connections() -> None:
                with psycopg.connect(server.url(), autocommit=True) as watcher:
                    while not stop.wait(0.05):
                        n = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                                            "= 'subwatch'").fetchone()[0]
                        busiest[0] = max(busiest[0], n)

            watcher = threading.Thread(target=count_connections)
            watcher.start()
            rows.append(row(f"PostgreSQL, {args.jobs - args.claims:,} queued, {args.threads} threads",
                            timed_claims(q, args.claims, args.threads)))
            stop.set()
            watcher.join()
            q.close()
            waits = [takeover(server.fresh_url(), args.lease) for _ in range(args.takeovers)]
        finally:
            server.stop()
        sqlite = JobQueue(Path(scratch) / "jobs.sqlite3", node="bench")
        fill(sqlite, args.jobs)
        rows.append(row(f"SQLite, {args.jobs:,} queued, 1 thread", timed_claims(sqlite, args.claims, 1)))
        rows.append(row(f"SQLite, {args.jobs - args.claims:,} queued, {args.threads} threads",
                        timed_claims(sqlite, args.claims, args.threads)))
        sqlite.close()
    print("| queue | claims | median ms | p95 ms | max ms |\n|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nconnections one node held at its busiest ({args.threads} threads claiming): {busiest[0]}")
    print("the claim's plan:\n  " + "\n  ".join(line[0] for line in plan))
    print(f"\na dead node's file taken by another, {args.lease:g} s lease, beats every "
          f"{args.lease / 6:.1f} s: " + ", ".join(f"{w:.1f} s" for w in waits) + " after its last renewal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
