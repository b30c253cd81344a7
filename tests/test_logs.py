"""Logging: stderr formats, journald detection, and the SUBWATCH_* journal fields."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.logs import (
    HANDLER_NAME,
    QUIET_LIBRARIES,
    done_details,
    job_log,
    journal_fields,
    journal_sender,
    setup_logging,
    stderr_is_journal,
)

MOVIE = Path("/srv/media/movies/Movie (2009).mkv")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo what setup_logging does to the process-wide loggers."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library_levels = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name, library_level in library_levels.items():
        logging.getLogger(name).setLevel(library_level)


@pytest.fixture
def journal_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """A file that $JOURNAL_STREAM points at, as systemd sets it up for a service.

    Each test puts it in sys.stderr itself: pytest's capturing replaces sys.stderr after fixtures run.
    """
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        yield stream


def written(stream: io.TextIOWrapper) -> str:
    stream.flush()
    stream.seek(0)
    return stream.read()


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]


def test_stderr_outside_systemd_has_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    setup_logging("info")
    logging.getLogger("subwatch.test").info("hello")
    logging.getLogger("subwatch.test").debug("not shown at info")
    logging.getLogger("urllib3.connectionpool").info("library chatter")
    logging.getLogger("apprise").warning("library warning")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    subwatch\.test: hello", lines[0])
    assert lines[1].endswith("WARNING apprise: library warning")


def test_setup_twice_keeps_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    setup_logging("info")
    setup_logging("debug")
    assert len(ours()) == 1
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("numba").level == logging.WARNING


def test_error_level_also_quiets_library_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    setup_logging("ERROR")
    logging.getLogger("watchdog.observers").warning("hidden")
    assert stderr.getvalue() == ""


def test_unknown_level_names_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown log level 'verbose'; use one of: debug, info, warning, error"
    ):
        setup_logging("verbose")


def test_journald_stream_without_systemd_python_gets_priority_prefixes(
    journal_stderr: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # as if systemd-python were not installed
    monkeypatch.setattr(sys, "stderr", journal_stderr)
    setup_logging("info")
    logging.getLogger("subwatch.test").warning("careful")
    job_log(
        logging.getLogger("subwatch.service"), "failed", MOVIE, "failed: no audio", 3, level=logging.ERROR
    )
    assert written(journal_stderr) == (
        "<4>subwatch.test: careful\n<3>subwatch.service: failed  Movie (2009).mkv  no audio\n"
    )


def test_inherited_journal_stream_for_another_file_is_ignored(
    journal_stderr: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # a child whose stderr was redirected elsewhere
    monkeypatch.setattr(sys, "stderr", journal_stderr)
    setup_logging("info")
    logging.getLogger("subwatch.test").info("hello")
    assert re.fullmatch(r"\d{4}-.* INFO    subwatch\.test: hello\n", written(journal_stderr))


def test_journald_with_systemd_python_sends_fields(
    journal_stderr: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = pytest.importorskip("systemd.journal", reason="systemd-python is not installed")
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        journal, "send", lambda MESSAGE, **fields: sent.append({"MESSAGE": MESSAGE, **fields})
    )
    monkeypatch.setattr(sys, "stderr", journal_stderr)
    setup_logging("info")
    [handler] = ours()
    assert isinstance(handler, journal.JournalHandler)
    odd = Path(os.fsdecode(b"/srv/media/Caf\xe9.mkv"))
    job_log(logging.getLogger("subwatch.service"), "done", odd, done_details("fr", 600, 20), job_id=7)
    [entry] = sent
    assert entry["MESSAGE"] == "done  Caf\\xe9.mkv  fr  0:10:00 in 20 s (30x realtime)"
    assert entry["SUBWATCH_JOB"] == "7"
    assert entry["SUBWATCH_PATH"] == b"/srv/media/Caf\xe9.mkv"
    assert entry["SUBWATCH_STATE"] == "done"
    assert entry["SYSLOG_IDENTIFIER"] == "subwatch"
    assert entry["PRIORITY"] == "6"
    assert entry["LOGGER"] == "subwatch.service"
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", key) for key in entry)  # no record attributes like 'msg'
    assert written(journal_stderr) == ""


def test_journal_fields_from_extras() -> None:
    attributes = {"job": 7, "path": MOVIE, "state": "done", "msg": "x", "name": "subwatch"}
    assert journal_fields(attributes) == {
        "SUBWATCH_JOB": "7",
        "SUBWATCH_PATH": b"/srv/media/movies/Movie (2009).mkv",
        "SUBWATCH_STATE": "done",
    }
    assert journal_fields({"job": None, "msg": "plain log line"}) == {}


def test_journal_sender_keeps_only_field_names() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    sender = journal_sender(lambda MESSAGE, **fields: sent.append((MESSAGE, fields)))
    sender("bad \udcff byte", PRIORITY="6", msg="x", args=(), _SECRET="y", state="failed", CODE_LINE=3)
    assert sent == [("bad \\udcff byte", {"PRIORITY": "6", "CODE_LINE": 3, "SUBWATCH_STATE": "failed"})]


def test_stderr_is_journal_compares_the_file(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as stream:
        status = os.fstat(stream.fileno())
        assert stderr_is_journal(f"{status.st_dev}:{status.st_ino}", stream)
        assert not stderr_is_journal(f"{status.st_dev}:{status.st_ino + 1}", stream)
        assert not stderr_is_journal(None, stream)
        assert not stderr_is_journal("garbage", stream)
    assert not stderr_is_journal("1:2", io.StringIO())


def test_job_log_line_and_extras(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("subwatch.service")
    with caplog.at_level(logging.INFO):
        job_log(logger, "done", MOVIE, done_details("en", 6730, 41), job_id=12)
        job_log(logger, "done", MOVIE, "done  en  1:52:10 in 41 s (164x realtime)", job_id=12)  # said twice
        job_log(logger, "queued", Path("/m/New\nLine.mkv"), "queued")
    first, second, third = caplog.records
    assert first.getMessage() == "done  Movie (2009).mkv  en  1:52:10 in 41 s (164x realtime)"
    assert second.getMessage() == first.getMessage()
    assert third.getMessage() == "queued  New\\nLine.mkv"
    assert (first.job, first.path, first.state) == (12, MOVIE, "done")  # type: ignore[attr-defined]
    assert third.job is None  # type: ignore[attr-defined]


def test_done_details() -> None:
    assert done_details("en", 6730, 41) == "en  1:52:10 in 41 s (164x realtime)"
    assert done_details("en", 3, 10) == "en  0:00:03 in 10 s (0.3x realtime)"  # not "0x"
    assert done_details(None, 95, None) == "0:01:35"


def test_done_details_say_what_speech_went_uncovered_and_where_the_text_came_from() -> None:
    assert done_details("en", 6730, 41, uncovered_seconds=0.0) == "en  1:52:10 in 41 s (164x realtime)"
    assert done_details("en", 6730, 41, uncovered_seconds=12.4) == (
        "en  1:52:10 in 41 s (164x realtime)  12 s of speech without subtitles")
    assert done_details("en", 60, 0.0, uncovered_seconds=0.04, reused=True) == (
        "en  0:01:00  0.1 s of speech without subtitles  from the stored transcript (no decoding)")
    assert done_details("de", 7200, 60, uncovered_seconds=754) == (
        "de  2:00:00 in 60 s (120x realtime)  0:12:34 of speech without subtitles")
