"""sd_notify messages, read from a real Unix datagram socket standing in for systemd's."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import SystemdNotifier, WatchdogLoop, send_datagram, socket_address, status_line


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self, seconds: float) -> list[str]:
        """Return every datagram that arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        got = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.receive(timeout=left))
            except TimeoutError:
                break
        return got


@pytest.fixture(params=["path", "abstract"])
def systemd_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        env_value = str(path)
    else:
        name = f"subwatch-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    with sock:
        yield FakeSystemd(sock, env_value)


@pytest.fixture(params=["builtin", "systemd-python"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the built-in sender and, where it is installed, with systemd-python's."""
    if request.param == "builtin":
        monkeypatch.setitem(sys.modules, "systemd", None)  # makes `from systemd import daemon` fail
    else:
        pytest.importorskip("systemd.daemon", reason="systemd-python is not installed")
    return request.param


@pytest.fixture
def systemd(systemd_socket: FakeSystemd, backend: str, monkeypatch: pytest.MonkeyPatch) -> FakeSystemd:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd_socket.env_value)  # systemd-python reads it at each call
    return systemd_socket


def notifier_for(systemd: FakeSystemd, **env: str) -> SystemdNotifier:
    return SystemdNotifier({"NOTIFY_SOCKET": systemd.env_value, **env})


def test_ready_status_stopping(systemd: FakeSystemd) -> None:
    notifier = notifier_for(systemd)
    assert notifier.enabled
    notifier.ready()
    notifier.status("idle · 0 queued")
    notifier.status("idle · 0 queued")  # the same again is not sent
    notifier.status("transcribing A.mkv 3% · 1 queued")
    notifier.stopping()
    assert systemd.drain(0.3) == [
        "READY=1",
        "STATUS=idle · 0 queued",
        "STATUS=transcribing A.mkv 3% · 1 queued",
        "STOPPING=1",
    ]


def test_reloading_carries_monotonic_time(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier_for(systemd).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", systemd.receive())
    assert match and before <= int(match[1]) <= after


def test_status_from_an_odd_filename_stays_one_assignment(systemd: FakeSystemd) -> None:
    name = os.fsdecode(b"Evil\nMAINPID=1 \xff.mkv")
    notifier_for(systemd).status(status_line("transcribing", name, 0.5, 2))
    assert systemd.receive() == "STATUS=transcribing Evil\\nMAINPID=1 \\xff.mkv 50% · 2 queued"


def test_watchdog_pings_only_while_healthy(systemd: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    notifier = notifier_for(systemd, WATCHDOG_USEC="100000")  # 0.1 s: ping every 0.05 s
    assert notifier.watchdog_interval() == pytest.approx(0.05)
    healthy = threading.Event()
    healthy.set()
    loop = WatchdogLoop(notifier, healthy.is_set)
    loop.start()
    try:
        pings = systemd.drain(0.3)
        assert set(pings) == {"WATCHDOG=1"}
        assert 3 <= len(pings) <= 8  # about one per 0.05 s, the first at once

        healthy.clear()
        systemd.drain(0.1)  # a ping already under way
        assert systemd.drain(0.25) == []
        assert "pipeline looks stuck" in caplog.text

        healthy.set()
        assert systemd.receive(timeout=1.0) == "WATCHDOG=1"
    finally:
        loop.stop()
    systemd.drain(0.1)
    assert systemd.drain(0.3) == []


def test_health_check_that_raises_counts_as_stuck(systemd: FakeSystemd) -> None:
    def broken() -> bool:
        raise RuntimeError("bug")

    loop = WatchdogLoop(notifier_for(systemd, WATCHDOG_USEC="40000"), broken)
    loop.start()
    try:
        assert systemd.drain(0.2) == []
    finally:
        loop.stop()


def test_send_datagram_to_an_abstract_socket() -> None:
    name = f"subwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        send_datagram(socket_address("@" + name), "READY=1")  # type: ignore[arg-type]
        sock.settimeout(2)
        assert sock.recv(100) == b"READY=1"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.reloading()
    notifier.stopping()
    notifier.watchdog_ping()
    loop = WatchdogLoop(notifier, lambda: True)
    loop.start()
    loop.stop()


def test_a_gone_socket_is_logged_once_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    for _ in range(3):
        notifier.watchdog_ping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd (WATCHDOG)" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert SystemdNotifier(env).watchdog_interval() == interval


def test_status_line() -> None:
    assert status_line("idle", None, None, 0) == "idle · 0 queued"
    assert status_line("transcribing", "Movie.mkv", 0.42, 17) == "transcribing Movie.mkv 42% · 17 queued"
    assert status_line("transcribing", "A.mkv", 0.29, 1) == "transcribing A.mkv 29% · 1 queued"
    assert status_line("transcribing", "A.mkv", 0.999, 1) == "transcribing A.mkv 99% · 1 queued"


def test_socket_address() -> None:
    assert socket_address("@name") == "\0name"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("vsock:2:1234") is None
