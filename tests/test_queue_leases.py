"""Leases, on both backends (a SQLite file, and a real PostgreSQL server): a claim holds a lease by the
database's clock, renewed by its node; a lapsed one is put back by another node; a node that lost its
lease writes nothing for that job; each node recovers only its own jobs at start."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.datatypes import JobResult, JobState
from daemon.queue import JobQueue, LeaseLost
from tests.test_queue import enqueue_many


@pytest.fixture
def nodes(target: Path | str) -> Iterator[Callable[..., JobQueue]]:
    """Open queues as nodes of one database (a name and a lease each); all closed at the end."""
    opened: list[JobQueue] = []

    def node(name: str, lease_seconds: float = 30) -> JobQueue:
        opened.append(JobQueue(target, node=name, lease_seconds=lease_seconds))
        return opened[-1]

    yield node
    for queue in opened:
        queue.close()


def _queued(q: JobQueue, media: Path, n: int) -> list[int]:
    return sorted(enqueue_many(q, media, n))


def _lapse(seconds: float) -> None:
    time.sleep(seconds + 0.3)


def test_a_claim_holds_a_lease_of_its_node(nodes: Callable[..., JobQueue], media: Path) -> None:
    q = nodes("gpu-box")
    [job_id] = _queued(q, media, 1)
    before = time.time()
    job = q.claim()
    assert (job.id, job.node, job.state) == (job_id, "gpu-box", JobState.RUNNING)
    assert job.lease_token and len(job.lease_token) == 32
    assert before + 29 < job.lease_until < time.time() + 31  # the database's clock, this host's here
    done = q.finish(job.id, JobResult("en", None, 1.0, 0.5))
    assert (done.node, done.lease_token, done.lease_until) == ("gpu-box", None, None)  # who did it stays


def test_a_lapsed_lease_is_put_back_by_another_node_and_the_first_writes_nothing(
    nodes: Callable[..., JobQueue], media: Path
) -> None:
    a, b = nodes("a", 0.5), nodes("b")
    [job_id] = _queued(a, media, 1)
    assert a.claim().id == job_id
    assert b.reap_lapsed() == []  # not lapsed yet
    _lapse(0.5)
    [back] = b.reap_lapsed()
    assert (back.job.id, back.job.state, back.job.node, back.cause) == (
        job_id, JobState.PENDING, "a", "waiting")
    taken = b.claim()
    assert (taken.id, taken.node) == (job_id, "b")
    assert a.holds(a.get(job_id)) is False and b.holds(b.get(job_id)) is True
    with pytest.raises(LeaseLost, match="node b has it now"):
        a.finish(job_id, JobResult("en", None, 1.0, 0.5))
    for late in (lambda: a.fail(job_id, "boom", permanent=True), lambda: a.release(job_id),
                 lambda: a.skip(job_id, "nothing to do")):
        with pytest.raises(LeaseLost):
            late()
    assert a.suspect([job_id]) == [b.get(job_id)]  # left as it is: b's now
    assert a.charge_crash(job_id, "killed by SIGSEGV") == b.get(job_id)
    assert a.renew() == 0  # a's beat does not renew what b holds
    now = b.get(job_id)
    assert (now.state, now.node, now.lease_token) == (JobState.RUNNING, "b", taken.lease_token)
    assert b.notices() == []  # nothing a wrote was recorded, not even a notification
    assert b.finish(job_id, JobResult("en", None, 1.0, 0.5)).state is JobState.DONE


def test_a_renewed_lease_never_lapses(nodes: Callable[..., JobQueue], media: Path) -> None:
    a, b = nodes("a", 0.6), nodes("b")
    [job_id] = _queued(a, media, 1)
    first = a.claim().lease_until
    for _ in range(6):  # 1.2 s in all, twice the lease
        time.sleep(0.2)
        assert a.renew() == 1
        assert b.reap_lapsed() == []
    assert a.get(job_id).lease_until > first
    assert a.finish(job_id, JobResult("en", None, 1.0, 0.5)).state is JobState.DONE


def test_a_job_in_the_model_when_its_node_went_silent_comes_back_a_suspect(
    nodes: Callable[..., JobQueue], media: Path
) -> None:
    a, b = nodes("a", 0.5), nodes("b")
    ids = _queued(a, media, 2)
    claimed = [a.claim().id, a.claim().id]
    a.enter_model(claimed)
    _lapse(0.5)
    reaped = b.reap_lapsed()
    assert sorted(r.job.id for r in reaped) == sorted(ids)
    assert {(r.cause, r.together, r.job.suspect, r.job.attempts, r.job.crashes) for r in reaped} == {
        ("in_model", 2, True, 0, 0)}  # no crash charged: a node's death is no evidence against a file


def test_each_node_recovers_its_own_running_jobs_at_start(postgres_server, media: Path) -> None:  # noqa: ANN001
    url = postgres_server.fresh_url()
    a = JobQueue(url, node="a")
    b = JobQueue(url, node="b")
    first, second = _queued(a, media, 2)
    assert a.claim().id == first
    assert b.claim().id == second
    a.close()  # a dies; b runs on
    restarted = JobQueue(url, node="a")
    assert [r.job.id for r in restarted.recover_running()] == [first]
    assert restarted.get(second).state is JobState.RUNNING  # b's, until b's lease lapses
    assert b.finish(second, JobResult("en", None, 1.0, 0.5)).state is JobState.DONE
    restarted.close()
    b.close()


def test_nodes_are_seen_with_their_heartbeat_and_gone_once_silent_past_their_lease(
    nodes: Callable[..., JobQueue], media: Path
) -> None:
    a, b = nodes("a", 0.5), nodes("b")
    a.recover_running()
    b.recover_running()
    seen = {n.name: n for n in b.nodes.all()}
    assert set(seen) == {"a", "b"} and not seen["a"].gone and not seen["b"].gone
    _lapse(0.5)
    b.renew()
    seen = {n.name: n for n in b.nodes.all()}
    assert seen["a"].gone and seen["a"].silent_for > 0.5 and not seen["b"].gone
    b.nodes.stopped("b")
    assert {n.name: n.gone for n in a.nodes.all()} == {"a": True, "b": True}
