"""What only a PostgreSQL queue has, on a real server the tests start (tests/postgres.py): claims that
skip a locked row instead of waiting, a server that goes away and comes back, a URL whose password
never shows, and a schema newer than this code refused. (Every other queue test runs on both
backends: tests/test_queue.py.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from daemon.datatypes import JobResult, JobState
from daemon.queue import JobQueue, QueueBusy, QueueError
from daemon.queue.engines import shown_url
from daemon.queue.lifecycle import pick_sql
from tests.postgres import PostgresServer


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return postgres_server.fresh_url()


def _files(media: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = media / f"{i:02}.mkv"
        path.write_bytes(f"film {i}".encode())
        paths.append(path)
    return paths


def test_a_claim_skips_a_job_another_transaction_holds_instead_of_waiting(url: str, media: Path) -> None:
    q = JobQueue(url)
    first, second = (q.enqueue(p, media).job for p in _files(media, 2))
    with psycopg.connect(url) as other:  # another host's transaction, holding the first job's row
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
        started = time.monotonic()
        claimed = q.claim()
        waited = time.monotonic() - started
        assert claimed is not None and claimed.id == second.id
        assert q.claim() is None  # the held one is not claimable until the other lets go
    assert waited < 5.0, "the claim waited for the lock instead of skipping the row"
    assert q.claim().id == first.id
    q.close()


def test_the_server_going_away_is_queue_busy_and_the_queue_works_again_when_it_is_back(
    postgres_server: PostgresServer, media: Path
) -> None:
    url = postgres_server.fresh_url()
    q = JobQueue(url)
    film, later = _files(media, 2)
    job = q.enqueue(film, media).job
    assert q.claim().id == job.id
    postgres_server.stop()
    try:
        with pytest.raises(QueueBusy):
            q.enqueue(later, media)
        with pytest.raises(QueueBusy):
            q.counts()
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 30
    while True:  # the pool replaces its dead connections; no new JobQueue is needed
        try:
            done = q.finish(job.id, JobResult("en", None, 1.0, 0.5))
            break
        except QueueBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert done.state is JobState.DONE  # the work finished while the server was down is not lost
    assert q.enqueue(later, media).action == "queued"
    assert q.counts()[JobState.PENDING] == 1 and q.counts()[JobState.DONE] == 1
    q.close()


def test_an_unreachable_server_is_a_queue_error_that_names_it_without_the_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://subwatch:hunter2-s3cret@127.0.0.1:{port}/subwatch"
    with pytest.raises(QueueError) as caught:
        JobQueue(url)
    message = str(caught.value)
    assert "hunter2-s3cret" not in message
    assert f"postgresql://subwatch:****@127.0.0.1:{port}/subwatch" in message
    assert "pg_hba.conf" in message and "database: null" in message


def test_shown_url_hides_only_the_password() -> None:
    assert shown_url("postgresql://u:p%40ss@db.lan:5433/sw?sslmode=require") == (
        "postgresql://u:****@db.lan:5433/sw?sslmode=require")
    assert shown_url("postgresql://u@db.lan/sw") == "postgresql://u@db.lan/sw"
    assert shown_url("postgresql:///sw?host=/run/postgresql") == "postgresql:///sw?host=/run/postgresql"


def test_a_schema_newer_than_this_code_is_refused(url: str) -> None:
    JobQueue(url).close()
    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute("UPDATE subwatch_schema SET version = 999")
    with pytest.raises(QueueError, match="newer"):
        JobQueue(url)


def test_two_queues_opening_one_new_database_at_once_both_work(url: str, media: Path) -> None:
    """Two hosts started together both bring the schema up: the write lock makes one wait for the other."""
    queues: list[JobQueue] = []
    errors: list[BaseException] = []

    def open_queue() -> None:
        try:
            queues.append(JobQueue(url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_queue) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    [film] = _files(media, 1)
    job = queues[0].enqueue(film, media).job
    assert [q.find(film) for q in queues] == [job, job, job]
    for q in queues:
        q.close()


def test_the_claim_reads_the_claimable_index_not_the_whole_table(url: str) -> None:
    """pgqueuer's guard: with thousands of rows the claim's plan must stay an index scan."""
    q = JobQueue(url)
    now = time.time()
    with psycopg.connect(url, autocommit=True) as raw:
        with raw.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, created_at, updated_at) "
                "VALUES (%s, %s, %s, 1, 0, %s, %s, %s)",
                [(f"/m/{i:05}.mkv".encode(), b"/m", "done" if i % 3 else "pending", f"1:{i:x}", now, now)
                 for i in range(6000)])
        raw.execute("ANALYZE jobs")
        plan = "\n".join(row[0] for row in raw.execute(
            "EXPLAIN " + pick_sql("postgresql").replace("?", "%s"), (now,)).fetchall())
    assert "Index Scan using jobs_claimable" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert q.claim() is not None
    q.close()
