"""Notifications: formatting, burst digests, and delivery through real Apprise to a local HTTP server."""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.notify import (
    BurstGate,
    Event,
    Notifier,
    NotifyRules,
    format_digest,
    format_done,
    format_elapsed,
    format_failed,
    format_speed,
    language_label,
    one_line,
    printable,
    url_label,
)
from daemon.text import format_duration

MOVIE = Path("/srv/media/movies/Movie (2009).mkv")


def done(path: Path = MOVIE, **kwargs: object) -> Event:
    fields = {"language": "en", "media_duration": 6730.0, "elapsed": 41.0, "model": "turbo"}
    return Event("done", path, **(fields | kwargs))  # type: ignore[arg-type]


def failed(path: Path = MOVIE, error: str = "ffmpeg: Invalid data found when processing input") -> Event:
    return Event("failed", path, error=error)


# --- a real endpoint -----------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records the JSON Apprise posts to it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.posts: queue.Queue[dict] = queue.Queue()
        self.failures_left = 0  # answer this many posts with HTTP 500 first

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server_address[1]}/"

    def take(self, count: int, timeout: float = 5.0) -> list[dict]:
        """Return the next `count` posts, failing the test if they do not come within `timeout`."""
        deadline = time.monotonic() + timeout
        taken = []
        for _ in range(count):
            try:
                taken.append(self.posts.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"expected {count} notifications, got {len(taken)}: {taken}")
        return taken

    def assert_quiet(self, wait: float = 0.4) -> None:
        try:
            extra = self.posts.get(timeout=wait)
        except queue.Empty:
            return
        pytest.fail(f"unexpected notification: {extra}")


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 200
        if self.server.failures_left > 0:
            self.server.failures_left -= 1
            status = 500
        payload["_status"] = status
        self.server.posts.put(payload)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def refused_port() -> int:
    """A port on 127.0.0.1 that nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers made by a test, stopped at the end even if the test fails."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.stop(timeout=1.0)


def started(notifiers: list[Notifier], rules: NotifyRules, **kwargs: object) -> Notifier:
    notifier = Notifier(rules, **kwargs)  # type: ignore[arg-type]
    notifier.start()
    notifiers.append(notifier)
    return notifier


# --- delivery ------------------------------------------------------------------------------------


def test_done_notification_arrives_with_title_and_body(receiver: Receiver, notifiers: list[Notifier]) -> None:
    notifier = started(notifiers, NotifyRules(urls=(receiver.url,)))
    notifier.send(done())
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles ready: Movie (2009)"
    assert post["message"] == (
        "Movie (2009).mkv\n"
        "Language: English (en) · 1:52:10 · model turbo\n"
        "Took 41 s (164x realtime)\n"
        "/srv/media/movies/Movie (2009).mkv"
    )
    assert post["type"] == "success"


def test_failed_notification_has_reason_and_escaped_odd_name(
    receiver: Receiver, notifiers: list[Notifier]
) -> None:
    # A name that is not valid UTF-8 (kept by Python as a surrogate) and one with a newline.
    odd = Path(os.fsdecode(b"/srv/media/Caf\xe9\nPart 2.mkv"))
    notifier = started(notifiers, NotifyRules(urls=(receiver.url,)))
    notifier.send(failed(odd, error="ffmpeg exited with 1\n  moov atom not found\n"))
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles failed: Caf\\xe9\\nPart 2"
    assert post["message"] == (
        "Caf\\xe9\\nPart 2.mkv\nffmpeg exited with 1 / moov atom not found\n/srv/media/Caf\\xe9\\nPart 2.mkv"
    )
    assert post["type"] == "failure"


def test_event_urls_replace_the_default_targets(
    receiver: Receiver, refused_port: int, notifiers: list[Notifier]
) -> None:
    rules = NotifyRules(urls=(f"json://127.0.0.1:{refused_port}/",), retries=0)
    notifier = started(notifiers, rules)
    notifier.send(Event("done", MOVIE, urls=(receiver.url,)))
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles ready: Movie (2009)"


def test_only_failed_in_on_sends_no_done(receiver: Receiver, notifiers: list[Notifier]) -> None:
    notifier = started(notifiers, NotifyRules(urls=(receiver.url,), on=frozenset({"failed"})))
    notifier.send(done())
    notifier.send(failed(Path("/srv/media/Broken.mkv")))
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles failed: Broken"
    receiver.assert_quiet()


def test_each_event_is_settled_once_its_message_is_sent_or_not_to_be_sent(
    receiver: Receiver, refused_port: int, notifiers: list[Notifier]
) -> None:
    settled: queue.Queue[tuple[int, ...]] = queue.Queue()
    rules = NotifyRules(urls=(receiver.url,), on=frozenset({"failed"}), retries=0)
    notifier = started(notifiers, rules, settled=settled.put)
    notifier.send(done(key=1))  # not to be sent: settled without a message
    notifier.send(Event("failed", Path("/srv/media/Broken.mkv"), error="x", key=2))
    notifier.send(Event("failed", MOVIE, error="x", urls=(f"json://127.0.0.1:{refused_port}/",), key=3))
    notifier.send(failed(Path("/srv/media/Unkeyed.mkv")))  # no key: nothing to settle
    assert [settled.get(timeout=30) for _ in range(3)] == [(1,), (2,), (3,)]  # 3: given up on
    titles = [post["title"] for post in receiver.take(2)]
    assert titles == ["Subtitles failed: Broken", "Subtitles failed: Unkeyed"]
    notifier.stop(timeout=5.0)
    assert settled.empty()


def test_a_digest_settles_every_event_it_tells_of(receiver: Receiver, notifiers: list[Notifier]) -> None:
    settled: list[tuple[int, ...]] = []
    rules = NotifyRules(urls=(receiver.url,), burst=1, on=frozenset({"done", "digest"}))
    notifier = started(notifiers, rules, settled=settled.append)
    for key in (1, 2, 3):
        notifier.send(done(Path(f"/m/{key}.mkv"), key=key))
    notifier.stop(timeout=10.0)  # the held two go out as one digest at shutdown
    assert [post["title"] for post in receiver.take(2)] == ["Subtitles ready: 1", "Subtitles: 2 files done"]
    assert settled == [(1,), (2, 3)]


def test_wait_idle_returns_once_what_was_sent_is_delivered(
    receiver: Receiver, hanging_port: int, notifiers: list[Notifier]
) -> None:
    notifier = started(notifiers, NotifyRules(urls=(receiver.url,)))
    assert notifier.wait_idle(0.01)  # nothing sent
    notifier.send(done())
    assert notifier.wait_idle(30)
    assert receiver.posts.qsize() == 1  # already there: delivered before wait_idle returned
    stuck = started(notifiers, NotifyRules(urls=(f"json://127.0.0.1:{hanging_port}/",), retries=0))
    stuck.send(done())
    assert stuck.wait_idle(0.3) is False


def test_update_switches_targets_for_later_events(
    receiver: Receiver, refused_port: int, notifiers: list[Notifier]
) -> None:
    notifier = started(notifiers, NotifyRules(urls=(f"json://127.0.0.1:{refused_port}/",), retries=0))
    notifier.update(NotifyRules(urls=(receiver.url,), on=frozenset({"failed"})))
    notifier.send(done())
    notifier.send(failed())
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles failed: Movie (2009)"


def test_failed_delivery_is_retried(
    receiver: Receiver, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    receiver.failures_left = 2
    notifier = started(notifiers, NotifyRules(urls=(receiver.url,), retries=3), retry_delay=0.05)
    with caplog.at_level(logging.WARNING, logger="subwatch.notify"):
        notifier.send(done())
        posts = receiver.take(3)
        notifier.stop(timeout=2.0)
    assert [post["_status"] for post in posts] == [500, 500, 200]
    assert all(post["title"] == "Subtitles ready: Movie (2009)" for post in posts)
    port = receiver.server_address[1]
    assert f"notification to json://127.0.0.1:{port} failed (attempt 1 of 4)" in caplog.text
    assert "attempt 3 of 4" not in caplog.text


def test_a_dead_target_never_holds_up_the_others(
    receiver: Receiver, refused_port: int, notifiers: list[Notifier]
) -> None:
    # Retries a minute apart: were they made in line, the third message would wait minutes.
    rules = NotifyRules(urls=(f"json://127.0.0.1:{refused_port}/", receiver.url), retries=3)
    notifier = started(notifiers, rules, retry_delay=60.0)
    for index in range(3):
        notifier.send(failed(Path(f"/m/{index}.mkv")))
    titles = [post["title"] for post in receiver.take(3, timeout=20.0)]
    assert titles == ["Subtitles failed: 0", "Subtitles failed: 1", "Subtitles failed: 2"]


def test_a_message_is_settled_once_every_target_has_it_or_was_given_up_on(
    receiver: Receiver, refused_port: int, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    settled: queue.Queue[tuple[int, ...]] = queue.Queue()
    receiver.failures_left = 1
    rules = NotifyRules(urls=(receiver.url, f"json://127.0.0.1:{refused_port}/"), retries=2)
    notifier = started(notifiers, rules, retry_delay=0.05, settled=settled.put)
    with caplog.at_level(logging.WARNING, logger="subwatch.notify"):
        notifier.send(done(key=7))
        assert settled.get(timeout=30) == (7,)
    assert [post["_status"] for post in receiver.take(2)] == [500, 200]
    assert f"gave up on notification 'Subtitles ready: Movie (2009)' to json://127.0.0.1:{refused_port} " \
        "after 3 attempts" in caplog.text
    assert settled.empty()


def test_a_retry_cut_off_by_shutdown_stays_owed(
    refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    settled: list[tuple[int, ...]] = []
    rules = NotifyRules(urls=(f"json://127.0.0.1:{refused_port}/",), retries=3)
    notifier = Notifier(rules, retry_delay=60.0, settled=settled.append)
    notifier.start()
    with caplog.at_level(logging.WARNING, logger="subwatch.notify"):
        notifier.send(done(key=4))
        notifier.wait_idle(30)  # the first attempt was made (and failed)
        notifier.stop(timeout=1.0)
    assert settled == []  # the job queue still owes it: the next start sends it
    assert "not delivered before shutdown; it is sent again at the next start" in caplog.text


# --- bursts --------------------------------------------------------------------------------------


def test_burst_of_12_gives_5_messages_then_one_digest(receiver: Receiver, notifiers: list[Notifier]) -> None:
    now = [1000.0]
    rules = NotifyRules(urls=(receiver.url,), on=frozenset({"done", "failed", "digest"}), burst=5)
    notifier = started(notifiers, rules, clock=lambda: now[0])
    for index in range(12):
        path = Path(f"/srv/media/tv/Show S01E{index + 1:02d}.mkv")
        notifier.send(failed(path, error=f"reason {index + 1}") if index in (6, 9) else done(path))

    singles = receiver.take(5)
    assert [post["title"] for post in singles] == [f"Subtitles ready: Show S01E{n:02d}" for n in range(1, 6)]
    receiver.assert_quiet()  # the other 7 are held until the window ends

    now[0] += 60.0
    [digest] = receiver.take(1)
    assert digest["title"] == "Subtitles: 5 files done, 2 failed"
    assert digest["type"] == "warning"
    assert digest["message"] == (
        "Failed:\n- Show S01E07.mkv: reason 7\n- Show S01E10.mkv: reason 10\n\n"
        "Done:\n- Show S01E06.mkv\n- Show S01E08.mkv\n- Show S01E09.mkv\n- Show S01E11.mkv\n- Show S01E12.mkv"
    )
    receiver.assert_quiet()

    # After a window with nothing in it, single messages resume.
    now[0] += 61.0
    notifier.send(done(Path("/srv/media/Later.mkv")))
    [post] = receiver.take(1)
    assert post["title"] == "Subtitles ready: Later"


def test_burst_without_digest_in_on_drops_the_rest(
    receiver: Receiver, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    rules = NotifyRules(urls=(receiver.url,), on=frozenset({"done", "failed"}), burst=2)
    notifier = started(notifiers, rules, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="subwatch.notify"):
        for index in range(5):
            notifier.send(done(Path(f"/m/{index}.mkv")))
        assert len(receiver.take(2)) == 2
        now[0] = 61.0
        notifier.stop(timeout=2.0)
    receiver.assert_quiet()
    assert "not notifying about 3 files from a burst" in caplog.text


def test_stop_flushes_held_digest(receiver: Receiver) -> None:
    rules = NotifyRules(urls=(receiver.url,), on=frozenset({"done", "failed", "digest"}), burst=1)
    notifier = Notifier(rules, clock=lambda: 0.0)
    notifier.start()
    for index in range(3):
        notifier.send(done(Path(f"/m/{index}.mkv")))
    notifier.stop(timeout=3.0)
    assert [post["title"] for post in receiver.take(2)] == ["Subtitles ready: 0", "Subtitles: 2 files done"]


# --- dead endpoints ------------------------------------------------------------------------------


def test_dead_endpoints_never_block_send_or_stop(
    refused_port: int, hanging_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    urls = (f"json://user:hunter2@127.0.0.1:{refused_port}/", f"json://127.0.0.1:{hanging_port}/")
    notifier = Notifier(NotifyRules(urls=urls))
    notifier.start()
    with caplog.at_level(logging.WARNING, logger="subwatch.notify"):
        for index in range(3):
            began = time.monotonic()
            notifier.send(failed(Path(f"/m/{index}.mkv")))
            assert time.monotonic() - began < 0.05
        time.sleep(0.3)  # let the first delivery reach the hanging server
        began = time.monotonic()
        notifier.stop(timeout=1.0)
        assert time.monotonic() - began < 1.3
    assert f"notification to json://127.0.0.1:{refused_port} failed (attempt 1 of 4)" in caplog.text
    assert "hunter2" not in caplog.text


def test_missing_apprise_is_logged_once_and_drops(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # makes `import apprise` raise ImportError
    notifier = Notifier(NotifyRules(urls=("json://127.0.0.1:9/",)))
    with caplog.at_level(logging.ERROR, logger="subwatch.notify"):
        notifier.start()
        for _ in range(3):
            notifier.send(done())
        notifier.stop(timeout=2.0)
    # Counted by text: a thread left hanging by the dead-endpoint test may still log its give-ups here.
    missing = [r for r in caplog.records if "Apprise is not installed" in r.getMessage()]
    assert [r.getMessage() for r in missing] == [
        "Apprise is not installed, so no notifications will be sent (pip install apprise)"
    ]


def test_invalid_url_is_logged_without_its_secret(
    receiver: Receiver, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    notifier = started(notifiers, NotifyRules(urls=("nosuchscheme://s3cret-token/", receiver.url)))
    with caplog.at_level(logging.ERROR, logger="subwatch.notify"):
        notifier.send(done())
        assert len(receiver.take(1)) == 1
    assert "notification URL nosuchscheme://… is not one Apprise understands" in caplog.text
    assert "s3cret" not in caplog.text


# --- the burst rules, without threads ------------------------------------------------------------


def titles(messages: list) -> list[str]:
    return [message.title for message in messages]


def test_gate_sliding_window_and_quiet_window() -> None:
    gate = BurstGate(NotifyRules(urls=("json://x/",), on=frozenset({"done", "failed", "digest"}), burst=3))
    for second in range(3):
        assert len(gate.offer(done(Path(f"/m/{second}.mkv")), now=second)) == 1
    assert gate.offer(done(Path("/m/a.mkv")), now=10) == []  # 4th within 60 s: digest mode
    assert gate.offer(done(Path("/m/b.mkv")), now=30) == []
    assert gate.next_due() == 70
    assert gate.due(69.9) == []
    assert titles(gate.due(70)) == ["Subtitles: 2 files done"]
    assert gate.offer(done(Path("/m/c.mkv")), now=100) == []  # still busy: held for the next digest
    assert titles(gate.due(130)) == ["Subtitles ready: c"]  # a digest of one is the plain message
    assert gate.due(190) == []  # a quiet window ends digest mode
    assert gate.next_due() is None
    assert titles(gate.offer(done(Path("/m/d.mkv")), now=191)) == ["Subtitles ready: d"]


def test_gate_spaced_events_are_all_sent() -> None:
    gate = BurstGate(NotifyRules(urls=("json://x/",), burst=5, window_seconds=60))
    sent = [gate.offer(done(Path(f"/m/{n}.mkv")), now=n * 15.0) for n in range(10)]
    assert all(len(messages) == 1 for messages in sent)


def test_gate_keeps_windows_per_target() -> None:
    gate = BurstGate(NotifyRules(urls=("json://a/",), burst=1))
    assert len(gate.offer(done(), now=0)) == 1
    assert gate.offer(done(), now=1) == []
    other = Event("done", MOVIE, urls=("json://b/",))
    assert [m.urls for m in gate.offer(other, now=2)] == [("json://b/",)]


def test_gate_without_urls_sends_nothing() -> None:
    assert BurstGate(NotifyRules()).offer(done(), now=0) == []


# --- formatting ----------------------------------------------------------------------------------


def test_format_done_without_optional_details() -> None:
    title, body = format_done(Event("done", Path("/m/Clip.mp4")))
    assert (title, body) == ("Subtitles ready: Clip", "Clip.mp4\n/m/Clip.mp4")


def test_format_done_slow_job() -> None:
    _, body = format_done(done(language="xx", media_duration=600, elapsed=754, model=None))
    assert body.splitlines()[1:3] == ["Language: xx · 0:10:00", "Took 12 min 34 s (0.8x realtime)"]


def test_format_failed_cuts_long_reasons() -> None:
    _, body = format_failed(failed(error="x" * 1000))
    reason = body.splitlines()[1]
    assert len(reason) == 300 and reason.endswith("…")
    assert format_failed(failed(error=None))[1].splitlines()[1] == "unknown error"  # type: ignore[arg-type]


def test_format_digest_truncates_long_lists() -> None:
    events = [done(Path(f"/m/Ep{n:02d}.mkv")) for n in range(40)] + [failed(Path("/m/Bad.mkv"), "boom")]
    title, body = format_digest(events)
    assert title == "Subtitles: 40 files done, 1 failed"
    lines = body.splitlines()
    assert lines[:2] == ["Failed:", "- Bad.mkv: boom"]
    assert lines[4:6] == ["- Ep00.mkv", "- Ep01.mkv"]
    assert lines[-1] == "… and 30 more"
    assert len(lines) == 3 + 1 + 10 + 1


def test_format_digest_only_failures() -> None:
    assert format_digest([failed(), failed()])[0] == "Subtitles: 2 files failed"
    assert format_digest([failed(), done()])[0] == "Subtitles: 1 file done, 1 failed"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00:00"), (59.6, "0:01:00"), (6730, "1:52:10"), (36000, "10:00:00")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_elapsed_and_speed() -> None:
    assert [format_elapsed(s) for s in (41.2, 125, 7380)] == ["41 s", "2 min 5 s", "2 h 3 min"]
    assert format_speed(6730, 41) == "164x"
    assert format_speed(100, 0) is None


def test_printable_escapes_controls_but_keeps_text() -> None:
    assert printable("Amélie 天気 (2001)") == "Amélie 天気 (2001)"
    assert printable("a\nb\r\tc\x1b[31m") == "a\\nb\\r\\tc\\x1b[31m"
    assert printable("evil\u202etxt.mkv") == "evil\\u202etxt.mkv"
    assert one_line("first\n\n  second  \n") == "first / second"


def test_language_label() -> None:
    assert language_label("en") == "English (en)"
    assert language_label("yue") == "Cantonese (yue)"  # every Whisper language: daemon/languages.py
    assert language_label("xx") == "xx"
    assert language_label("en\n") == "English (en\\n)"


def test_url_label_hides_credentials_paths_and_queries() -> None:
    assert url_label("json://user:****@host.example:8080/path?token=x") == "json://host.example:8080"
    assert url_label("tgram://1...f/987654/?image=False") == "tgram://1...f"
    assert url_label("weird") == "?://…"


def test_rules_reject_unknown_events() -> None:
    with pytest.raises(ValueError, match="unknown notify event"):
        NotifyRules(on=frozenset({"done", "sucess"}))
