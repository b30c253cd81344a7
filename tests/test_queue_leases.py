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
from tests.test_notify import Receiver, notifiers, receiver, started  # noqa: F401 - fixtures
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


def test_what_a_gone_node_owed_is_adopted_by_exactly_one_other_node(
    nodes: Callable[..., JobQueue], media: Path
) -> None:
    a, b, c = nodes("a", 0.5), nodes("b"), nodes("c")
    for node in (a, b, c):
        node.recover_running()
    [job_id] = _queued(a, media, 1)
    a.claim()
    srt = media / "00.en.srt"
    a.finish(job_id, JobResult("en", None, 1.0, 0.5, (srt,)))  # a owes the notification...
    a.server_updates.owe(job_id, ["jellyfin http://jf:8096"], [srt])  # ...and the media server's news
    assert (b.adopt_owed(), c.adopt_owed()) == (0, 0)  # a is alive: they are a's to send
    assert [n.job_id for n in a.notices()] == [job_id] and b.notices() == c.notices() == []
    _lapse(0.5)  # a goes silent (killed right after the job ended)
    b.renew()
    c.renew()
    taken = {"b": b.adopt_owed(), "c": c.adopt_owed()}
    assert sorted(taken.values()) == [0, 2], taken  # one of them took both rows, the other none
    heir, other = (b, c) if taken["b"] else (c, b)
    assert [n.job_id for n in heir.notices()] == [job_id] and other.notices() == []
    assert [u.job_id for u in heir.server_updates.owed()] == [job_id] and other.server_updates.owed() == []
    assert heir.adopt_owed() == 0 and other.adopt_owed() == 0  # taken once


def test_a_notice_of_a_folder_this_node_does_not_watch_goes_to_its_global_urls(
    tmp_path: Path, media: Path, receiver: Receiver, notifiers: list  # noqa: F811 - fixtures
) -> None:
    """A notice adopted from a gone node may be of a folder only that node watched: it still goes out,
    to this node's own notify.urls, and leaves the outbox."""
    from daemon.config import load_config
    from daemon.outcomes import Outcomes
    from daemon.subtitles import SidecarLedger
    from tests.harness import write_config

    (tmp_path / "mine").mkdir()
    config = load_config(write_config(tmp_path / "subwatch.yaml", f"""
        state_dir: {tmp_path / "state"}
        notify: {{urls: ["{receiver.url}"]}}
        folders: [{{path: {tmp_path / "mine"}}}]
    """))
    q = JobQueue(config.queue_at, node="heir")
    [job_id] = _queued(q, media, 1)  # in `media`, which this config does not watch
    q.claim()
    q.finish(job_id, JobResult("en", None, 61.0, 2.0))
    notifier = started(notifiers, config.notify, settled=q.notices_settled)
    Outcomes(q, SidecarLedger(q), notifier, lambda: config, lambda: None).notify_owed()
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles ready: 000" and str(media / "000.mkv") in post["message"]
    deadline = time.monotonic() + 5
    while q.notices() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert q.notices() == []
    notifier.stop(timeout=1.0)
    q.close()
