"""The job queue against real SQLite files: enqueue rules, claiming, failure, crash recovery,
concurrency across threads and processes, odd file names and sidecar records."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.datatypes import JobResult, JobState, Segment, Transcript, TranscriptKey, Word
from daemon.queue import SAMPLE_BYTES, JobQueue, QueueError, fingerprint
from daemon.queue import enqueue as enqueue_module
from daemon.queue.engines import ddl
from daemon.queue.schema import MIGRATIONS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.sqlite"  # where conftest's `target` puts a SQLite queue


@pytest.fixture
def q(target: Path | str):
    queue = JobQueue(target)
    yield queue
    queue.close()


@pytest.fixture
def sq(db: Path):
    """A queue in a SQLite file, for what only SQLite has (WAL, descriptors, the file itself)."""
    queue = JobQueue(db)
    yield queue
    queue.close()


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def result(*outputs: Path) -> JobResult:
    return JobResult(
        language="en", language_probability=0.93, media_duration=61.5, elapsed=4.2, outputs=outputs
    )


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )


# -- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_names_content_not_path(tmp_path: Path) -> None:
    a = write(tmp_path / "a.mkv", b"x" * 5000)
    b = write(tmp_path / "sub" / "other name.mp4", b"x" * 5000)
    c = write(tmp_path / "c.mkv", b"x" * 4999 + b"y")
    size, mtime, fp_a = fingerprint(a)
    assert size == 5000
    assert mtime == os.stat(a).st_mtime
    assert fp_a.startswith("5000:")
    assert fingerprint(b)[2] == fp_a
    assert fingerprint(c)[2] != fp_a


def test_fingerprint_samples_start_middle_and_end_of_big_files(tmp_path: Path) -> None:
    size = 8 * SAMPLE_BYTES
    base = bytearray(size)
    original = fingerprint(write(tmp_path / "base.mkv", bytes(base)))[2]
    for offset in (0, size // 2, size - 1):
        changed = bytearray(base)
        changed[offset] = 1
        assert fingerprint(write(tmp_path / "changed.mkv", bytes(changed)))[2] != original, offset
    # A byte between the samples is not read: the price of hashing 3 MiB instead of 50 GB.
    between = bytearray(base)
    between[2 * SAMPLE_BYTES] = 1
    assert fingerprint(write(tmp_path / "between.mkv", bytes(between)))[2] == original


def test_fingerprint_of_a_50_gb_file_reads_only_samples(tmp_path: Path) -> None:
    huge = tmp_path / "huge.mkv"
    with open(huge, "wb") as f:
        f.truncate(50 * 10**9)  # sparse: no disk used, but a full read would take minutes
    started = time.perf_counter()
    size, _, fp = fingerprint(huge)
    print(f"fingerprint of 50 GB: {time.perf_counter() - started:.3f} s")
    assert size == 50 * 10**9
    assert fp.startswith(f"{size}:")


def test_fingerprint_raises_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fingerprint(tmp_path / "gone.mkv")


# -- enqueue rules --------------------------------------------------------------------------------


def test_enqueue_queues_a_new_file_with_its_identity(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film" * 100)
    outcome = q.enqueue(film, media)
    assert outcome.action == "queued" and outcome.queued and outcome.previous_path is None
    job = outcome.job
    assert (job.path, job.folder, job.state, job.attempts) == (film, media, JobState.PENDING, 0)
    assert (job.size, job.mtime, job.fingerprint) == fingerprint(film)
    assert job.created_at > 0 and job.next_attempt_at == 0.0
    assert q.find(film) == job == q.get(job.id)


def test_enqueue_same_path_twice_is_a_duplicate(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film")
    first = q.enqueue(film, media).job
    again = q.enqueue(film, media)
    assert again.action == "duplicate" and not again.queued
    assert again.job.id == first.id
    assert q.claim() is not None
    assert q.enqueue(film, media).action == "duplicate"  # running
    assert len(q.jobs()) == 1


def test_a_copy_waits_while_its_content_is_queued_then_gets_its_own_job(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"same bytes")
    copy = write(media / "other" / "Film copy.mkv", b"same bytes")
    job = q.enqueue(film, media).job
    pending_copy = q.enqueue(copy, media)
    assert (pending_copy.action, pending_copy.job.id, pending_copy.job.path) == ("duplicate", job.id, film)
    assert q.find(copy) is None and not pending_copy.queued
    q.finish(q.claim().id, result())
    done_copy = q.enqueue(copy, media / "other")
    assert (done_copy.action, done_copy.copy_of, done_copy.queued) == ("copied", film, True)
    own = done_copy.job
    assert own.id != job.id and (own.path, own.folder, own.state, own.attempts) == (
        copy, media / "other", JobState.PENDING, 0)
    assert own.fingerprint == job.fingerprint and q.find(copy) == own
    assert q.get(job.id).state is JobState.DONE and len(q.jobs()) == 2
    assert q.enqueue(copy, media).action == "duplicate"  # its own job, pending


def test_a_hard_link_or_a_copy_of_skipped_content_gets_its_own_job(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film bytes")
    q.finish(q.enqueue(film, media).job.id, result())
    link = media / "library" / "Film.mkv"
    link.parent.mkdir()
    os.link(film, link)
    linked = q.enqueue(link, media)
    assert (linked.action, linked.copy_of, linked.job.path) == ("copied", film, link)
    # A skip may be about the path (a subtitle beside it), so a copy of skipped content is looked at too.
    clip = write(media / "clip.mkv", b"clip bytes")
    q.skip(q.enqueue(clip, media).job.id, "already has en subtitles")
    copied = q.enqueue(write(media / "library" / "clip.mkv", b"clip bytes"), media)
    assert (copied.action, copied.copy_of, copied.job.state) == ("copied", clip, JobState.PENDING)


def test_a_copy_of_running_or_failed_content_gets_no_job(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film bytes")
    running = q.enqueue(film, media).job
    q.claim()
    copy = write(media / "copy.mkv", b"film bytes")
    assert (q.enqueue(copy, media).action, q.enqueue(copy, media).job.id) == ("duplicate", running.id)
    q.fail(running.id, "ffmpeg: invalid data", permanent=True)
    failed = q.enqueue(copy, media)
    assert (failed.action, failed.job.id, failed.queued) == ("already_failed", running.id, False)
    assert q.find(copy) is None


def test_content_done_at_two_paths_moves_the_job_whose_file_went(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film bytes")
    copy = write(media / "Film copy.mkv", b"film bytes")
    original = q.enqueue(film, media).job
    q.finish(q.claim().id, result())
    twin = q.enqueue(copy, media).job
    q.finish(q.claim().id, result())
    renamed = media / "Film (2009) copy.mkv"
    copy.rename(renamed)  # while the daemon was down
    outcome = q.enqueue(renamed, media)
    assert (outcome.action, outcome.previous_path, outcome.job.id) == ("moved", copy, twin.id)
    assert q.find(film).id == original.id and len(q.jobs()) == 2


def test_a_replaced_file_is_requeued_from_scratch(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"first cut")
    job = q.enqueue(film, media).job
    done = q.finish(q.claim().id, result(media / "Film.en.srt"))
    assert done.state is JobState.DONE and done.language == "en"
    assert q.enqueue(film, media).action == "already_done"

    write(film, b"director's cut, longer")
    outcome = q.enqueue(film, media)
    requeued = outcome.job
    assert outcome.action == "requeued" and outcome.queued
    assert requeued.id == job.id
    assert (requeued.state, requeued.attempts, requeued.error) == (JobState.PENDING, 0, None)
    assert (requeued.size, requeued.mtime, requeued.fingerprint) == fingerprint(film)
    assert requeued.fingerprint != job.fingerprint
    assert (requeued.language, requeued.outputs, requeued.elapsed) == (None, (), None)


def test_a_skipped_file_is_not_queued_again_unless_replaced(q: JobQueue, media: Path) -> None:
    clip = write(media / "silent.mkv", b"no audio")
    q.skip(q.enqueue(clip, media).job.id, "no audio stream")
    assert q.enqueue(clip, media).action == "already_done"
    assert q.find(clip).error == "no audio stream"
    write(clip, b"now with audio")
    assert q.enqueue(clip, media).action == "requeued"


def test_a_moved_done_file_moves_its_job(q: JobQueue, media: Path) -> None:
    old = write(media / "Film.mkv", b"film content")
    job = q.enqueue(old, media).job
    q.finish(q.claim().id, result(media / "Film.en.srt"))
    new = media / "Renamed" / "Film (2009).mkv"
    new.parent.mkdir()
    old.rename(new)
    outcome = q.enqueue(new, media / "Renamed")
    assert (outcome.action, outcome.previous_path, outcome.queued) == ("moved", old, False)
    assert outcome.job.id == job.id and outcome.job.path == new
    assert outcome.job.state is JobState.DONE and outcome.job.folder == media / "Renamed"
    assert q.find(old) is None and q.find(new).id == job.id
    assert q.enqueue(new, media).action == "already_done"


def test_a_pending_file_moved_while_the_daemon_was_down_moves_its_job(q: JobQueue, media: Path) -> None:
    old = write(media / "a.mkv", b"waiting")
    job = q.enqueue(old, media).job
    new = media / "b.mkv"
    old.rename(new)
    outcome = q.enqueue(new, media)
    assert (outcome.action, outcome.previous_path, outcome.job.id) == ("moved", old, job.id)
    assert outcome.job.state is JobState.PENDING and len(q.jobs()) == 1


def test_a_failed_file_stays_failed_until_retried_or_replaced(q: JobQueue, media: Path) -> None:
    broken = write(media / "broken.mkv", b"garbage")
    job = q.enqueue(broken, media).job
    q.fail(q.claim().id, "ffmpeg: invalid data", permanent=True)
    same = q.enqueue(broken, media)
    assert same.action == "already_failed" and same.job.state is JobState.FAILED
    assert same.job.error == "ffmpeg: invalid data"
    write(broken, b"a good download this time")
    fixed = q.enqueue(broken, media)
    assert (fixed.action, fixed.job.id, fixed.job.state, fixed.job.attempts) == (
        "requeued",
        job.id,
        JobState.PENDING,
        0,
    )


def test_a_pending_file_rewritten_before_its_turn_gets_the_new_identity(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"v1")
    q.enqueue(film, media)
    write(film, b"v2 is longer")
    outcome = q.enqueue(film, media)
    assert outcome.action == "duplicate"
    assert (outcome.job.size, outcome.job.fingerprint) == fingerprint(film)[::2]


def test_an_unchanged_file_is_not_hashed_again(
    q: JobQueue, media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    film = write(media / "Film.mkv", b"film")
    q.finish(q.enqueue(film, media).job.id, result())

    def no_reading(path: Path) -> tuple[int, float, str]:
        raise AssertionError(f"{path} was hashed although size and mtime did not change")

    monkeypatch.setattr(enqueue_module, "fingerprint", no_reading)
    assert q.enqueue(film, media).action == "already_done"
    monkeypatch.undo()
    os.utime(film, (1_000_000, 1_000_000))  # touched: hash again, same content, remember new mtime
    outcome = q.enqueue(film, media)
    assert outcome.action == "already_done" and outcome.job.mtime == 1_000_000


def test_enqueue_of_a_vanished_file_raises(q: JobQueue, media: Path) -> None:
    with pytest.raises(FileNotFoundError):
        q.enqueue(media / "gone.mkv", media)
    assert q.jobs() == []


# -- claim, finish, fail, backoff -----------------------------------------------------------------


def test_claim_takes_the_oldest_due_job_and_marks_it_running(q: JobQueue, media: Path) -> None:
    first = q.enqueue(write(media / "1.mkv", b"1"), media).job
    second = q.enqueue(write(media / "2.mkv", b"2"), media).job
    claimed = q.claim(now=1000.0)
    assert (claimed.id, claimed.state, claimed.attempts) == (first.id, JobState.RUNNING, 1)
    assert q.claim(now=1000.0).id == second.id
    assert q.claim(now=1000.0) is None
    assert q.counts()[JobState.RUNNING] == 2


def test_finish_records_the_result(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film")
    job = q.enqueue(film, media).job
    q.claim()
    q.fail(job.id, "cuda out of memory", permanent=False)
    job = q.claim(now=time.time() + 3600)
    srt, vtt = media / "Film.en.srt", media / "Film.en.vtt"
    done = q.finish(job.id, result(srt, vtt))
    assert done.state is JobState.DONE and done.error is None
    assert (done.language, done.language_probability, done.media_duration, done.elapsed) == (
        "en",
        0.93,
        61.5,
        4.2,
    )
    assert done.outputs == (srt, vtt) and done.attempts == 2
    assert q.get(job.id) == done


def test_transient_failures_back_off_then_fail_at_max_attempts(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    now = 10_000.0
    q.claim(now=now)
    retried = q.fail(job.id, "disk busy", permanent=False, now=now)
    assert (retried.state, retried.error) == (JobState.PENDING, "disk busy")
    assert retried.next_attempt_at == now + 30
    assert q.next_wakeup() == now + 30
    assert q.claim(now=now + 29) is None
    assert q.claim(now=now + 30).attempts == 2
    second = q.fail(job.id, "disk busy", permanent=False, now=now + 30)
    assert second.next_attempt_at == now + 30 + 60
    assert q.claim(now=now + 90).attempts == 3
    final = q.fail(job.id, "disk busy again", permanent=False, now=now + 90)
    assert (final.state, final.error, final.attempts) == (JobState.FAILED, "disk busy again", 3)
    assert q.next_wakeup() is None
    assert q.claim(now=now + 10**6) is None


def test_a_permanent_failure_is_final_at_once(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "bad.mkv", b"bad"), media).job
    q.claim()
    failed = q.fail(job.id, "no audio decoder", permanent=True, max_attempts=5)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 1)


def test_release_returns_a_job_without_counting_the_attempt(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    q.claim()
    released = q.release(job.id)
    assert (released.state, released.attempts) == (JobState.PENDING, 0)
    assert q.release(job.id) == released  # not running: unchanged
    assert q.claim().attempts == 1


def test_finish_of_a_forgotten_job_raises_key_error(q: JobQueue) -> None:
    with pytest.raises(KeyError):
        q.finish(12345, result())


# -- crash recovery -------------------------------------------------------------------------------


def test_recover_running_after_a_dropped_connection(target: Path | str, media: Path) -> None:
    daemon = JobQueue(target)
    job = daemon.enqueue(write(media / "Film.mkv", b"film"), media).job
    assert daemon.claim().id == job.id
    daemon.close()  # the daemon dies without finishing or releasing

    restarted = JobQueue(target)
    recovered = restarted.recover_running()
    # Claimed but never in the model: the attempt does not count.
    assert [(r.job.id, r.job.state, r.job.attempts, r.cause) for r in recovered] == [
        (job.id, JobState.PENDING, 0, "waiting")]
    assert restarted.finish(restarted.claim().id, result()).state is JobState.DONE
    assert restarted.claim() is None
    assert restarted.recover_running() == []
    restarted.close()


CLAIM_AND_HANG = """
import sys, time
from pathlib import Path
from daemon.queue import JobQueue
job = JobQueue(sys.argv[1] if "://" in sys.argv[1] else Path(sys.argv[1])).claim()
print(job.id, flush=True)
time.sleep(60)
"""


def test_a_job_claimed_by_a_killed_process_is_done_exactly_once(target: Path | str, media: Path) -> None:
    q = JobQueue(target)
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    worker = run_python(CLAIM_AND_HANG, str(target))
    try:
        assert worker.stdout.readline().strip() == str(job.id)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert q.get(job.id).state is JobState.RUNNING  # the claim was committed before the kill
    q.close()

    restarted = JobQueue(target)
    assert [r.job.state for r in restarted.recover_running()] == [JobState.PENDING]
    done = []
    while (claimed := restarted.claim()) is not None:
        done.append(restarted.finish(claimed.id, result()).id)
    assert done == [job.id]
    assert restarted.counts()[JobState.DONE] == 1
    restarted.close()


def test_a_kill_before_the_model_began_never_counts(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    for _ in range(10):  # killed at start-up, while decoding, while the model loaded, ...
        assert q.claim().id == job.id
        [back] = q.recover_running()
        assert (back.cause, back.job.state, back.job.attempts, back.job.suspect, back.job.crashes) == (
            "waiting", JobState.PENDING, 0, False, 0)


def test_files_in_the_model_at_a_crash_become_suspects_and_go_first(q: JobQueue, media: Path) -> None:
    a, b, c, d = (q.enqueue(write(media / f"{n}.mkv", n.encode()), media).job for n in "abcd")
    for _ in range(3):
        q.claim()  # a, b, c claimed; d still pending
    q.enter_model([a.id, b.id])  # c waits for a worker
    backs = {r.job.id: (r.cause, r.together, r.job.suspect, r.job.attempts, r.job.crashes)
             for r in q.recover_running()}
    assert backs == {a.id: ("in_model", 2, True, 0, 0), b.id: ("in_model", 2, True, 0, 0),
                     c.id: ("waiting", 2, False, 0, 0)}
    # The suspects are claimed before older and newer pending files alike.
    assert [q.claim().id for _ in range(4)] == [a.id, b.id, c.id, d.id]


def test_the_daemons_death_never_charges_a_file_even_alone(q: JobQueue, media: Path) -> None:
    # 40 kills while one file was alone in the model: the daemon's death is no evidence against it
    job = q.enqueue(write(media / "Episode.mkv", b"fine"), media).job
    for _ in range(40):
        assert q.claim().id == job.id
        q.enter_model([job.id])
        [back] = q.recover_running()
        assert (back.cause, back.job.state, back.job.suspect, back.job.crashes, back.job.attempts) == (
            "in_model", JobState.PENDING, True, 0, 0)
    assert q.notices() == []


def test_a_decoder_fault_alone_is_charged_and_fails_the_file_at_max_attempts(
    q: JobQueue, media: Path
) -> None:
    job = q.enqueue(write(media / "huge.mkv", b"segfaults"), media).job
    for crash in (1, 2):
        q.claim()
        q.enter_model([job.id])
        q.leave_model([job.id], survived=False)
        charged = q.charge_crash(job.id, f"the decoder crashed (SIGSEGV) {crash} times on this file alone", 3)
        assert (charged.state, charged.crashes, charged.suspect, charged.attempts) == (
            JobState.PENDING, crash, True, 0)
    q.claim()
    failed = q.charge_crash(job.id, "the decoder crashed (SIGSEGV) 3 times on this file alone", 3)
    assert (failed.state, failed.crashes) == (JobState.FAILED, 3)
    assert failed.error == (
        "the decoder crashed (SIGSEGV) 3 times on this file alone; it may be damaged: "
        f"check it with ffprobe, then `subwatch retry {media / 'huge.mkv'}`")
    [notice] = q.notices()
    assert (notice.job_id, notice.kind, notice.error) == (job.id, "failed", failed.error)
    assert q.retry(media / "huge.mkv") == 1
    again = q.get(job.id)
    assert (again.state, again.attempts, again.suspect, again.crashes) == (JobState.PENDING, 0, False, 0)


def test_a_decoder_fault_with_several_files_makes_suspects_and_charges_none(q: JobQueue, media: Path) -> None:
    a, b, c = (q.enqueue(write(media / f"{n}.mkv", n.encode()), media).job for n in "abc")
    q.claim(), q.claim()
    q.enter_model([a.id, b.id])
    q.leave_model([a.id, b.id], survived=False)
    backs = q.suspect([a.id, b.id])
    assert [(j.id, j.state, j.suspect, j.crashes, j.attempts) for j in backs] == [
        (a.id, JobState.PENDING, True, 0, 0), (b.id, JobState.PENDING, True, 0, 0)]
    assert [q.claim().id for _ in range(3)] == [a.id, b.id, c.id]  # suspects first


def test_a_suspect_in_the_model_with_another_file_is_not_counted(q: JobQueue, media: Path) -> None:
    a, b = (q.enqueue(write(media / f"{n}.mkv", n.encode()), media).job for n in "ab")
    for _ in range(2):
        assert {q.claim().id, q.claim().id} == {a.id, b.id}
        q.enter_model([a.id, b.id])  # one batch, or two workers: neither alone
        assert {r.cause for r in q.recover_running()} == {"in_model"}
    assert [(j.suspect, j.crashes) for j in q.jobs()] == [(True, 0), (True, 0)]


def test_a_suspect_that_leaves_the_model_alive_is_cleared(q: JobQueue, media: Path) -> None:
    a, b = (q.enqueue(write(media / f"{n}.mkv", n.encode()), media).job for n in "ab")
    q.claim(), q.claim()
    q.enter_model([a.id, b.id])
    q.recover_running()
    q.claim()
    q.enter_model([a.id])
    q.leave_model([a.id], survived=False)  # a clean stop abandoned it: still suspected
    assert q.release(a.id).suspect
    q.claim()
    q.enter_model([a.id])
    q.leave_model([a.id], survived=False)
    assert q.charge_crash(a.id, "the decoder crashed (SIGABRT) 1 times on this file alone").crashes == 1
    q.claim()
    q.enter_model([a.id])
    q.leave_model([a.id], survived=True)
    cleared = q.get(a.id)
    assert (cleared.suspect, cleared.crashes, cleared.in_model_since, cleared.state) == (
        False, 0, None, JobState.RUNNING)
    assert q.get(b.id).suspect


def test_a_clean_stop_in_the_model_is_no_crash(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    q.claim()
    q.enter_model([job.id])
    released = q.release(job.id)  # SIGTERM: the daemon gave it back
    assert (released.state, released.in_model_since, released.suspect, released.attempts) == (
        JobState.PENDING, None, False, 0)
    assert q.recover_running() == []


def test_the_notification_of_a_job_that_ends_is_owed_until_settled(q: JobQueue, media: Path) -> None:
    a, b, c = (q.enqueue(write(media / f"{n}.mkv", n.encode()), media).job for n in "abc")
    q.claim(), q.claim(), q.claim()
    q.finish(a.id, result())
    assert q.fail(b.id, "disk full", permanent=False).state is JobState.PENDING  # retried: nothing owed
    q.fail(c.id, "no audio stream", permanent=True)
    owed = q.notices()
    assert [(n.job_id, n.kind, n.path, n.language, n.media_duration, n.elapsed, n.error) for n in owed] == [
        (a.id, "done", media / "a.mkv", "en", 61.5, 4.2, None),
        (c.id, "failed", media / "c.mkv", None, None, None, "no audio stream")]
    assert q.notices(after=owed[0].id) == owed[1:]
    q.forget(media / "c.mkv")  # told even so: the notice outlives the job
    q.notices_settled([owed[0].id])
    assert q.notices() == owed[1:]


def test_an_old_database_gains_the_crash_columns(db: Path, media: Path) -> None:
    conn = sqlite3.connect(db.parent.mkdir(parents=True) or db)
    for statements in MIGRATIONS[:2]:
        for sql in statements:
            conn.execute(ddl(sql, "sqlite"))
    conn.execute("PRAGMA user_version = 2")
    now = time.time()
    conn.execute("INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, attempts, created_at, "
                 "updated_at) VALUES (?, ?, 'running', 4, 0, 'x', 1, ?, ?)",
                 (os.fsencode(media / "Old.mkv"), os.fsencode(media), now, now))
    conn.commit()
    conn.close()
    q = JobQueue(db)
    [back] = q.recover_running()  # left running by the old version: not known to be in the model
    assert (back.cause, back.job.state, back.job.suspect, back.job.crashes) == (
        "waiting", JobState.PENDING, False, 0)
    q.close()


def test_a_short_lived_thread_leaves_no_connection_open(sq: JobQueue, db: Path, media: Path) -> None:
    q = sq
    def open_on_db() -> int:
        return sum(os.readlink(f"/proc/self/fd/{fd}").startswith(str(db))
                   for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))

    q.enqueue(write(media / "Film.mkv", b"film"), media)

    def scan(close: bool) -> None:  # as the daemon's rescan thread does, every rescan_minutes
        q.find(media / "Film.mkv")
        if close:
            q.close_thread()

    def scans(count: int, close: bool) -> int:
        """Run `count` scan threads one after another; return how many more descriptors are open."""
        opened = open_on_db()
        for _ in range(count):
            thread = threading.Thread(target=scan, args=(close,))
            thread.start()
            thread.join()
        return open_on_db() - opened

    assert scans(5, close=False) == 10  # the database and its WAL for each, until close()
    # Closed: SQLite may hold one descriptor back while others lock the file, and reuses it.
    assert scans(5, close=True) <= 1
    assert q.find(media / "Film.mkv") is not None  # this thread's own connection is untouched


# -- concurrency ----------------------------------------------------------------------------------


def enqueue_many(q: JobQueue, media: Path, n: int) -> set[int]:
    return {q.enqueue(write(media / f"{i:03}.mkv", f"film {i}".encode()), media).job.id for i in range(n)}


def test_threads_claiming_at_once_never_share_a_job(q: JobQueue, media: Path) -> None:
    ids = enqueue_many(q, media, 50)
    claimed: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def work(mine: list[int]) -> None:
        start.wait()
        while (job := q.claim()) is not None:
            mine.append(job.id)
            time.sleep(0.002)  # "work", so the threads' claims interleave
            q.finish(job.id, result())

    threads = [threading.Thread(target=work, args=(mine,)) for mine in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for mine in claimed for i in mine]
    print("claims per thread:", [len(mine) for mine in claimed])
    assert sorted(every) == sorted(ids)  # each job exactly once
    assert q.counts()[JobState.DONE] == 50


CLAIM_ALL = """
import json, sys, time
from pathlib import Path
from daemon.datatypes import JobResult
from daemon.queue import JobQueue
q = JobQueue(sys.argv[1] if "://" in sys.argv[1] else Path(sys.argv[1]))
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
ids = []
while (job := q.claim()) is not None:
    ids.append(job.id)
    time.sleep(0.005)  # "work", so the processes' claims interleave
    q.finish(job.id, JobResult("en", None, 1.0, 0.1))
print(json.dumps(ids))
"""


def test_processes_claiming_at_once_never_share_a_job(q: JobQueue, media: Path, tmp_path: Path) -> None:
    ids = enqueue_many(q, media, 50)
    go = tmp_path / "go"
    workers = [run_python(CLAIM_ALL, str(q.target), str(go)) for _ in range(2)]
    time.sleep(0.5)  # let both start and open the database before the race
    go.touch()
    outputs = [json.loads(w.communicate(timeout=30)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    print("claims per process:", [len(o) for o in outputs])
    assert sorted(outputs[0] + outputs[1]) == sorted(ids)
    assert q.counts()[JobState.DONE] == 50


def test_a_second_queue_on_the_same_file_sees_the_daemons_writes(target: Path | str, media: Path) -> None:
    daemon, cli = JobQueue(target), JobQueue(target)
    job = daemon.enqueue(write(media / "Film.mkv", b"film"), media).job
    assert cli.find(media / "Film.mkv") == job
    daemon.claim()
    daemon.fail(job.id, "decoder error", permanent=True)
    assert cli.counts()[JobState.FAILED] == 1
    assert cli.retry(media / "Film.mkv") == 1  # the CLI's edit is the daemon's truth at once
    assert daemon.claim().id == job.id
    daemon.close()
    cli.close()


# -- odd file names -------------------------------------------------------------------------------

ODD_NAMES = [
    "with spaces and 'single' \"double\" quotes.mkv",
    "line\nbreak.mkv",
    os.fsdecode(b"caf\xe9.mkv"),  # Latin-1 name, not valid UTF-8
    "é" * 120 + ".mkv",  # 244 bytes
    "x" * 246 + ".mkv",  # 250 chars
    "emoji 🎬 and tab\t.mkv",
]


@pytest.mark.parametrize("name", ODD_NAMES, ids=range(len(ODD_NAMES)))
def test_odd_names_round_trip_exactly(q: JobQueue, media: Path, name: str) -> None:
    film = write(media / name, name.encode("utf-8", "surrogateescape"))
    job = q.enqueue(film, media).job
    assert os.fsencode(job.path) == os.fsencode(film)
    assert q.find(film).id == job.id
    assert q.enqueue(film, media).action == "duplicate"
    sidecar = film.with_suffix(".en.srt")
    q.record_sidecar(sidecar, "ab" * 32, job.id)
    done = q.finish(q.claim().id, result(sidecar))
    assert [os.fsencode(p) for p in done.outputs] == [os.fsencode(sidecar)]
    assert q.sidecars_of(job.id) == [sidecar]
    renamed = media / ("moved " + name)
    assert q.move(film, renamed).path == renamed
    assert os.fsencode(q.find(renamed).path) == os.fsencode(renamed)


def test_two_thousand_enqueues_take_a_few_seconds(q: JobQueue, media: Path) -> None:
    files = [write(media / f"episode {i:04}.mkv", f"episode {i}".encode()) for i in range(2000)]
    started = time.perf_counter()
    for f in files:
        q.enqueue(f, media)
    elapsed = time.perf_counter() - started
    print(f"2000 enqueues: {elapsed:.2f} s ({elapsed / 2:.2f} ms each)")
    assert q.counts()[JobState.PENDING] == 2000


# -- edits: drop, move, retry, forget, sidecars ---------------------------------------------------


def test_drop_removes_only_pending_jobs(q: JobQueue, media: Path) -> None:
    a = write(media / "a.mkv", b"a")
    b = write(media / "b.mkv", b"b")
    job_a = q.enqueue(a, media).job
    q.finish(q.enqueue(b, media).job.id, result())
    assert q.drop(a) == job_a and q.find(a) is None
    assert q.drop(b) is None and q.find(b).state is JobState.DONE
    assert q.drop(media / "never.mkv") is None


def test_empty_files_are_told_apart_by_path(q: JobQueue, media: Path) -> None:
    first = q.enqueue(write(media / "a.mkv", b""), media)
    second = q.enqueue(write(media / "b.mkv", b""), media)
    assert (first.action, second.action) == ("queued", "queued") and first.job.id != second.job.id


def test_drop_claimed_removes_the_running_job_only_when_asked(q: JobQueue, media: Path) -> None:
    a = write(media / "a.mkv", b"a")
    q.enqueue(a, media)
    running = q.claim()
    assert q.drop(a) is None and q.find(a).state is JobState.RUNNING
    assert q.drop(a, claimed=True).id == running.id and q.find(a) is None


def test_move_over_an_existing_job_replaces_it(q: JobQueue, media: Path) -> None:
    a = q.enqueue(write(media / "a.mkv", b"a"), media).job
    b = q.enqueue(write(media / "b.mkv", b"b"), media).job
    q.record_sidecar(media / "b.en.srt", "00" * 32, b.id)
    moved = q.move(media / "a.mkv", media / "b.mkv", folder=media / "new")
    assert (moved.id, moved.path, moved.folder) == (a.id, media / "b.mkv", media / "new")
    assert q.get(b.id) is None and q.sidecars_of(b.id) == []
    assert q.move(media / "nothing.mkv", media / "x.mkv") is None


def test_retry_one_or_all_failed(q: JobQueue, media: Path) -> None:
    for name in ("a.mkv", "b.mkv", "c.mkv"):
        job = q.enqueue(write(media / name, name.encode()), media).job
        q.claim()
        q.fail(job.id, "boom", permanent=True)
    assert q.retry(media / "a.mkv") == 1
    again = q.find(media / "a.mkv")
    assert (again.state, again.attempts, again.error, again.next_attempt_at) == (JobState.PENDING, 0, None, 0)
    assert q.retry(media / "a.mkv") == 0  # pending now, not failed
    assert q.retry(all_failed=True) == 2
    assert q.counts() == {s: (3 if s is JobState.PENDING else 0) for s in JobState}
    with pytest.raises(ValueError):
        q.retry()


def test_forget_lets_a_file_be_queued_fresh(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film")
    job = q.enqueue(film, media).job
    q.claim()
    with pytest.raises(ValueError, match="being transcribed"):
        q.forget(film)
    q.record_sidecar(media / "Film.en.srt", "11" * 32, job.id)
    q.finish(job.id, result(media / "Film.en.srt"))
    assert q.forget(film) is True
    assert q.find(film) is None and q.sidecar_hash(media / "Film.en.srt") is None
    fresh = q.enqueue(film, media)
    assert fresh.action == "queued" and fresh.job.id != job.id and fresh.job.attempts == 0
    assert q.forget(media / "never.mkv") is False


def test_sidecar_records(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    srt, vtt = media / "Film.en.srt", media / "Film.en.vtt"
    q.record_sidecar(srt, "aa" * 32, job.id)
    q.record_sidecar(vtt, "bb" * 32, job.id)
    q.record_sidecar(srt, "cc" * 32, job.id)  # rewritten: newest hash wins
    assert q.sidecar_hash(srt) == "cc" * 32
    assert q.sidecar_hash(media / "user's own.srt") is None
    assert q.sidecars_of(job.id) == [srt, vtt]

    renamed = media / "Film (2009).en.srt"
    assert q.move_sidecar(srt, renamed) is True
    assert q.sidecar_hash(srt) is None and q.sidecar_hash(renamed) == "cc" * 32
    assert q.move_sidecar(renamed, renamed) is True and q.sidecar_hash(renamed) == "cc" * 32
    assert q.move_sidecar(media / "unknown.srt", renamed) is False
    assert q.move_sidecar(vtt, renamed) is True  # onto a recorded one: replaces it
    assert q.sidecars_of(job.id) == [renamed] and q.sidecar_hash(renamed) == "bb" * 32
    with pytest.raises(KeyError):
        q.record_sidecar(media / "x.srt", "dd" * 32, job.id + 100)


def test_moved_sidecar_is_moved_in_the_jobs_outputs_too(q: JobQueue, media: Path) -> None:
    job = q.enqueue(write(media / "Film.mkv", b"film"), media).job
    srt, vtt = media / "Film.en.srt", media / "Film.en.vtt"
    for path in (srt, vtt):
        q.record_sidecar(path, "aa" * 32, job.id)
    q.claim()
    q.finish(job.id, JobResult("en", None, 10.0, 1.0, (srt, vtt), ()))
    renamed = media / "Film (2009).en.srt"
    assert q.move_sidecar(srt, renamed)
    assert q.get(job.id).outputs == (renamed, vtt)  # `subwatch status` shows where the files are now


def test_jobs_and_counts_by_state(q: JobQueue, media: Path) -> None:
    a = q.enqueue(write(media / "a.mkv", b"a"), media).job
    b = q.enqueue(write(media / "b.mkv", b"b"), media).job
    q.skip(a.id, "already has subtitles")
    assert [j.id for j in q.jobs()] == [a.id, b.id]
    assert [j.id for j in q.jobs([JobState.SKIPPED])] == [a.id]
    assert [j.id for j in q.jobs([JobState.PENDING, JobState.DONE])] == [b.id]
    assert q.jobs([]) == []
    assert q.counts() == {
        JobState.PENDING: 1,
        JobState.RUNNING: 0,
        JobState.DONE: 0,
        JobState.FAILED: 0,
        JobState.SKIPPED: 1,
    }


# -- stored transcripts ---------------------------------------------------------------------------

KEY = TranscriptKey(model="/models/tiny.en.pt", language="en", task="transcribe", prompt=None, beam_size=5)


def awkward_transcript() -> Transcript:
    """A transcript with what JSON and floats make hard: shortest-repr floats, odd text, no words."""
    words = (Word(0.1 + 0.2, 1 / 3, " Caf\u00e9", 0.987654321),
             Word(1 / 3, 2.5e-7 + 1, ' "quoted"\nline', 1.0),
             Word(1.0000001, 7 / 3, " \u65e5\u672c\u8a9e\U0001f600", 0.0))
    text = " Caf\u00e9 \"quoted\"\nline \u65e5\u672c\u8a9e\U0001f600"
    return Transcript(
        segments=(Segment(0.30000000000000004, 7 / 3, text, words), Segment(5.5, 6.0, " [music]", ())),
        language="en", language_probability=0.8999999999999999, duration=61.123456789,
        speech_seconds=42.000000001, uncovered_seconds=1 / 7,
    )


def test_a_stored_transcript_round_trips_exactly(target: Path | str, media: Path) -> None:
    transcript = awkward_transcript()
    writer = JobQueue(target)
    writer.store_transcript("123:abc", KEY, transcript)
    writer.close()
    reader = JobQueue(target)  # another connection: nothing comes from memory
    back = reader.transcript("123:abc", KEY)
    reader.close()
    assert back == transcript
    assert isinstance(back.segments, tuple) and isinstance(back.segments[0].words, tuple)
    assert [type(w.probability) for w in back.segments[0].words] == [float, float, float]
    given = Transcript((), "de", None, 3.0)  # language given, not detected; nothing said
    q = JobQueue(target)
    q.store_transcript("123:abc", KEY, given)  # the same key again: replaced
    assert q.transcript("123:abc", KEY) == given
    q.close()


@pytest.mark.parametrize("change", [
    {"beam_size": 1}, {"prompt": "Naruto, Sasuke"}, {"language": None}, {"language": "de"},
    {"task": "translate"}, {"model": "turbo"},
])
def test_the_rules_key_tells_decoding_rules_apart(q: JobQueue, change: dict) -> None:
    q.store_transcript("123:abc", KEY, awkward_transcript())
    assert q.transcript("123:abc", TranscriptKey(**{**KEY.__dict__})) == awkward_transcript()
    assert q.transcript("123:abc", replace(KEY, **change)) is None
    assert q.transcript("123:abd", KEY) is None  # other content
    q.store_transcript("123:abc", replace(KEY, **change), Transcript((), "en", None, 1.0))
    assert q.transcript("123:abc", KEY) == awkward_transcript()  # each rules key keeps its own


def test_finish_stores_the_transcript_and_records_the_speech(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film")
    job = q.enqueue(film, media).job
    q.claim()
    transcript = awkward_transcript()
    done = q.finish(job.id, replace(result(), transcript=transcript, transcript_key=KEY))
    assert (done.speech_seconds, done.uncovered_seconds) == (42.000000001, 1 / 7)
    assert q.transcript_of(job.id) == transcript == q.transcript(job.fingerprint, KEY)
    assert q.get(job.id) == done
    # Without a transcript (a caller from before they were stored): nothing recorded, nothing stored.
    other = q.enqueue(write(media / "Other.mkv", b"other"), media).job
    q.claim()
    plain = q.finish(other.id, result())
    assert (plain.speech_seconds, plain.uncovered_seconds) == (None, None)
    assert q.transcript_of(other.id) is None and q.transcript_of(job.id + 100) is None
    # New content at the path: the job forgets its speech; the old content's transcript stays stored.
    write(film, b"film, recut")
    requeued = q.enqueue(film, media).job
    assert (requeued.speech_seconds, requeued.uncovered_seconds) == (None, None)
    assert q.transcript_of(job.id) is None and q.transcript(job.fingerprint, KEY) == transcript


def test_forget_drops_the_transcript_unless_a_copy_uses_it(q: JobQueue, media: Path) -> None:
    film = write(media / "Film.mkv", b"film")
    copy = write(media / "copy.mkv", b"film")
    job = q.enqueue(film, media).job
    q.claim()
    q.finish(job.id, replace(result(), transcript=awkward_transcript(), transcript_key=KEY))
    copied = q.enqueue(copy, media).job
    assert q.forget(film) is True
    assert q.transcript(job.fingerprint, KEY) == awkward_transcript()  # the copy's job still has it
    assert q.forget(copy) is True
    assert q.transcript(copied.fingerprint, KEY) is None  # queued fresh means transcribed anew


def test_an_unreadable_stored_transcript_is_a_queue_error_naming_the_way_out(sq: JobQueue, db: Path) -> None:
    q = sq
    q.store_transcript("9:ff", KEY, awkward_transcript())
    raw = sqlite3.connect(db)
    raw.execute("UPDATE transcripts SET transcript = '{\"segments\": 3}'")
    raw.commit()
    raw.close()
    with pytest.raises(QueueError, match="subwatch forget") as caught:
        q.transcript("9:ff", KEY)
    assert str(db) in str(caught.value)


def test_a_database_at_the_first_schema_is_migrated_with_its_jobs(db: Path, media: Path) -> None:
    """A jobs.sqlite3 written by subwatch before transcripts were stored (schema 1, built here with
    the very statements of that version, which are never edited) opens, keeps its jobs and works."""
    film = write(media / "Film.mkv", b"film")
    size, mtime, content = fingerprint(film)
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db)
    for sql in MIGRATIONS[0]:
        raw.execute(ddl(sql, "sqlite"))
    raw.execute("INSERT INTO jobs (path, folder, state, size, mtime, fingerprint, language, outputs, "
                "created_at, updated_at) VALUES (?, ?, 'done', ?, ?, ?, 'en', ?, 1.0, 2.0)",
                (os.fsencode(film), os.fsencode(media), size, mtime, content,
                 json.dumps([str(media / "Film.en.srt")])))
    raw.execute("INSERT INTO sidecars (path, sha256, job_id) VALUES (?, ?, 1)",
                (os.fsencode(media / "Film.en.srt"), "ab" * 32))
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()

    q = JobQueue(db)
    try:
        old = q.find(film)
        assert (old.state, old.language, old.outputs) == (JobState.DONE, "en", (media / "Film.en.srt",))
        assert (old.speech_seconds, old.uncovered_seconds) == (None, None)
        assert q.transcript_of(old.id) is None and q.sidecar_hash(media / "Film.en.srt") == "ab" * 32
        assert q.enqueue(film, media).action == "already_done"
        fresh = q.enqueue(write(media / "New.mkv", b"new"), media).job
        q.claim()
        done = q.finish(fresh.id, replace(result(), transcript=awkward_transcript(), transcript_key=KEY))
        assert done.uncovered_seconds == 1 / 7 and q.transcript_of(fresh.id) == awkward_transcript()
    finally:
        q.close()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 8
    raw.close()
    JobQueue(db).close()  # opening a migrated database again changes nothing


# -- opening the database -------------------------------------------------------------------------


def test_the_database_uses_wal_and_a_schema_version(sq: JobQueue, db: Path) -> None:
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 8
    raw.close()


def test_a_db_under_a_file_gives_queue_error_naming_the_path(tmp_path: Path) -> None:
    blocker = write(tmp_path / "not-a-dir", b"")
    with pytest.raises(QueueError, match="state_dir") as caught:
        JobQueue(blocker / "jobs.sqlite")
    assert str(blocker / "jobs.sqlite") in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_db_in_an_unwritable_dir_gives_queue_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(QueueError, match="writable") as caught:
            JobQueue(locked / "jobs.sqlite")
        assert str(locked / "jobs.sqlite") in str(caught.value)
    finally:
        locked.chmod(0o700)


def test_a_file_that_is_not_a_database_gives_queue_error(tmp_path: Path) -> None:
    bogus = write(tmp_path / "jobs.sqlite", b"this is a text file, not SQLite " * 100)
    with pytest.raises(QueueError, match=str(bogus)):
        JobQueue(bogus)


def test_a_database_from_a_newer_subwatch_is_refused(db: Path) -> None:
    JobQueue(db).close()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(QueueError, match="newer"):
        JobQueue(db)


def test_a_closed_queue_refuses_use(target: Path | str) -> None:
    q = JobQueue(target)
    q.close()
    with pytest.raises(QueueError, match="closed"):
        q.counts()
