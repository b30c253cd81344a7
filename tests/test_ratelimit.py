"""daemon.http.ratelimit: one log line per kind a window, the rest counted into the next line."""

from __future__ import annotations

import logging
import threading

import pytest

from daemon.http.ratelimit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test.ratelimit"]


def test_one_line_per_kind_a_window_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    said = RateLimitedLog(logging.getLogger("test.ratelimit"), per_seconds=60, clock=clock)
    caplog.set_level(logging.INFO, "test.ratelimit")
    logged = [said.warning(("sonarr", "bad JSON"), "sonarr hook: bad request: %s", n) for n in range(313)]
    assert logged == [True] + [False] * 312
    assert said.warning(("radarr", "bad JSON"), "radarr hook: bad request: %s", "x")  # another kind
    clock.now += 59.9
    assert not said.warning(("sonarr", "bad JSON"), "sonarr hook: bad request: %s", "late")
    clock.now += 0.2  # the window is over: the next line says how many were left out
    assert said.warning(("sonarr", "bad JSON"), "sonarr hook: bad request: %s", "again")
    clock.now += 61
    assert said.info(("sonarr", "bad JSON"), "sonarr hook: %s", "quiet since")
    assert lines(caplog) == [
        ("WARNING", "sonarr hook: bad request: 0"),
        ("WARNING", "radarr hook: bad request: x"),
        ("WARNING", "sonarr hook: bad request: again (and 313 more like it since the last such line)"),
        ("INFO", "sonarr hook: quiet since"),
    ]


def test_keys_are_bounded_and_a_disabled_level_costs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    said = RateLimitedLog(logging.getLogger("test.ratelimit"), per_seconds=60, clock=clock, max_keys=3)
    caplog.set_level(logging.WARNING, "test.ratelimit")
    assert not said.info("k", "not enabled")
    for key in ("a", "b", "c", "d"):  # "a" is forgotten to keep three
        assert said.warning(key, "line %s", key)
    assert said.warning("a", "line %s", "a again")  # forgotten: logged, no count to tell
    assert not said.warning("d", "line %s", "d again")
    assert [m for _, m in lines(caplog)] == ["line a", "line b", "line c", "line d", "line a again"]


def test_many_threads_log_one_line(caplog: pytest.LogCaptureFixture) -> None:
    said = RateLimitedLog(logging.getLogger("test.ratelimit"), per_seconds=3600)
    caplog.set_level(logging.WARNING, "test.ratelimit")
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(500):
            said.warning("same", "refused: %s", "same reason")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert lines(caplog) == [("WARNING", "refused: same reason")]
