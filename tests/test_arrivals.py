"""Arrivals the queue cannot record at once are held and tried again, never dropped (issue #19).

A real Intake with its real watchdog observer on a temp folder and a real SQLite queue; the trouble
is real too: another connection holding the database's write lock past the busy timeout, and (in a
child process) every file descriptor taken. The daemon's busy timeout is 15 s; these tests lower it
(daemon.queue.engines.BUSY_TIMEOUT_S, read when a connection opens) so they take seconds.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import Config, load_config
from daemon.intake import Intake
from daemon.queue import JobQueue, engines
from tests.harness import REPO, wait_until, write_config
from tests.media_factory import make_media


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def config_for(tmp_path: Path, inbox: Path) -> Config:
    return load_config(write_config(tmp_path / "config.yaml", f"""
state_dir: {tmp_path / "state"}
defaults: {{settle_seconds: 0.2, language: en}}
folders: [{{path: {inbox}}}]
"""))


@pytest.fixture
def started(tmp_path: Path, inbox: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Intake, JobQueue]]:
    monkeypatch.setattr(engines, "BUSY_TIMEOUT_S", 0.2)
    config = config_for(tmp_path, inbox)
    jobs = JobQueue(config.db_path)
    intake = Intake(config, jobs)
    intake.watcher.start()  # events only: no start-up scan, which would find the files anyway
    yield intake, jobs
    intake.stop()
    jobs.close()


def clips(tmp_path: Path, *names: str) -> list[Path]:
    """Return real one-second videos with distinct content, outside the watched folder."""
    return [make_media(tmp_path / "staging" / name, seconds=1.0 + n / 4) for n, name in enumerate(names)]


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "subwatch.intake" and r.levelno == level]


def test_files_that_arrive_while_the_database_is_locked_are_queued_once_it_is_free(
        tmp_path: Path, inbox: Path, started: tuple[Intake, JobQueue],
        caplog: pytest.LogCaptureFixture) -> None:
    intake, jobs = started
    caplog.set_level(logging.INFO, "subwatch.intake")
    first, second, third = clips(tmp_path, "first.mkv", "second.mkv", "third.mkv")
    locker = sqlite3.connect(jobs.path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # held far past the busy timeout
        shutil.copy(first, inbox / "First.mkv")
        assert wait_until(lambda: messages(caplog, logging.WARNING), 30)
        shutil.copy(second, inbox / "Second.mkv")
        shutil.copy(third, inbox / "third.tmp.mkv")
        time.sleep(0.5)
        (inbox / "third.tmp.mkv").rename(inbox / "Third.mkv")  # renamed while it is held
        time.sleep(2.0)  # several tries, each waiting out the busy timeout
        warnings = messages(caplog, logging.WARNING)
        assert len(warnings) == 1, warnings  # one line for the trouble, not one per try or per file
        assert "First.mkv" in warnings[0] and "database is locked" in warnings[0]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    names = ["First.mkv", "Second.mkv", "Third.mkv"]
    assert wait_until(lambda: sorted(job.path.name for job in jobs.jobs()) == names, 30), jobs.jobs()
    assert wait_until(lambda: any("held arrival(s) recorded" in m for m in messages(caplog, logging.INFO)))
    assert [m for m in messages(caplog, logging.INFO) if "records arrivals again" in m] == [
        "the job queue records arrivals again: 3 held arrival(s) recorded"]
    assert sorted(job.path.name for job in jobs.jobs()) == names  # each once; the old name never


CHILD = textwrap.dedent("""
    import logging, os, resource, shutil, sys, time
    from pathlib import Path
    from daemon.config import load_config
    from daemon.intake import Intake
    from daemon.queue import JobQueue

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
    config = load_config(Path(sys.argv[1]))
    queue = JobQueue(config.db_path)
    intake = Intake(config, queue)
    intake.watcher.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    eaten = []
    try:
        while True:
            eaten.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    print("EATEN", len(eaten), flush=True)
    assert sys.stdin.readline() == "free\\n"
    for fd in eaten:
        os.close(fd)
    print("FREED", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(queue.jobs()) < 1:
        time.sleep(0.1)
    intake.stop()
    sys.stdout.write(f"QUEUED {[job.path.name for job in queue.jobs()]}\\n")
    queue.close()
""")


def test_a_file_that_arrives_while_no_descriptor_is_free_is_queued_once_one_is(
        tmp_path: Path, inbox: Path) -> None:
    config = tmp_path / "config.yaml"
    config_for(tmp_path, inbox)
    (clip,) = clips(tmp_path, "clip.mkv")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(config)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdin is not None and child.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True).start()
    said: list[str] = []

    def wait_for(text: str) -> str:
        deadline = time.monotonic() + 60  # a bound for a child that never says it
        while text not in (said[-1] if said else ""):
            try:
                said.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"the child never said {text!r}:\n{''.join(said[-50:])}") from None
        return said[-1]

    try:
        wait_for("EATEN")
        shutil.copy(clip, inbox / "Dropped.mkv")  # the child can open nothing now, not even the database
        trouble = wait_for("cannot record")
        assert "Too many open files" in trouble or "unable to open database file" in trouble, said
        child.stdin.write("free\n")
        child.stdin.flush()
        wait_for("QUEUED")
        assert child.wait(timeout=30) == 0, said
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert said[-1] == "QUEUED ['Dropped.mkv']\n", said
    assert "Traceback" not in "".join(said), said
    assert any("1 held arrival(s) recorded" in line for line in said), said
