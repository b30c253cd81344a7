"""Media servers told through the notifier's retries, and the job's record of it."""

from __future__ import annotations

import queue
import socket
import time
from pathlib import Path

from daemon.config import MediaServer, Secret
from daemon.mediaservers import MediaServers
from daemon.notify import Call, Notifier, NotifyRules
from daemon.queue import JobQueue
from tests.test_daemon_http import StandIn


def test_a_call_is_retried_with_backoff_then_settled() -> None:
    tries: list[float] = []
    settled: queue.Queue[tuple[bool, str | None]] = queue.Queue()

    def attempt() -> None:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise ConnectionError("connection refused")

    notifier = Notifier(NotifyRules(), retry_delay=0.1)
    notifier.start()
    try:
        notifier.call(Call("jellyfin http://x", attempt, lambda told, error: settled.put((told, error))))
        assert settled.get(timeout=5) == (True, None)
        assert len(tries) == 3 and tries[2] - tries[1] >= tries[1] - tries[0] >= 0.09  # doubling
        notifier.call(Call("plex http://y", lambda: 1 / 0, lambda told, error: settled.put((told, error)),
                           attempts=2))
        assert settled.get(timeout=5) == (False, "division by zero")
    finally:
        notifier.stop(timeout=1.0)


def test_a_server_down_at_first_is_told_once_it_is_up(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on, taken by the stand-in later
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = MediaServer("emby", f"http://127.0.0.1:{port}", Secret("tok"), (("/media", "/mnt"),))
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    media = tmp_path / "a.mkv"
    media.write_bytes(b"x" * 10)
    job = jobs.enqueue(media, tmp_path).job
    notifier = Notifier(NotifyRules(), retry_delay=0.3)
    notifier.start()
    stand_in = None
    try:
        MediaServers(lambda: (server,), jobs, notifier).sidecars_changed(job.id, [Path("/media/a.en.srt")])
        time.sleep(0.1)
        assert [(u.server, u.state) for u in jobs.server_updates_of(job.id)] == [(server.label, "owed")]
        stand_in = StandIn(port=port)  # the server comes up
        (request,) = stand_in.wait_for(1, timeout=10)
        assert request.body == b'{"Updates":[{"Path":"/mnt/a.en.srt","UpdateType":"Created"}]}'
        assert request.headers["x-emby-token"] == "tok"
        deadline = time.monotonic() + 5
        while jobs.server_updates_of(job.id)[0].state == "owed" and time.monotonic() < deadline:
            time.sleep(0.05)
        (update,) = jobs.server_updates_of(job.id)
        assert (update.state, update.error, update.paths) == ("told", None, (Path("/media/a.en.srt"),))
    finally:
        notifier.stop(timeout=1.0)
        if stand_in is not None:
            stand_in.close()
        jobs.close()
