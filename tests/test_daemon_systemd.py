"""A real `subwatch run` under a fake systemd: NOTIFY_SOCKET datagrams, watchdog, SIGHUP, SIGTERM.

The folders use a model path that does not exist, so a queued file fails in
milliseconds: these tests are about the service around the pipeline.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for_state, write_config


class NotifySocket:
    """A datagram socket bound where $NOTIFY_SOCKET points, collecting what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def collect(self, until: str, timeout: float = 60.0) -> list[str]:
        """Read datagrams until one contains `until`; return all received so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(until in m for m in self.messages):
                return self.messages
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no datagram with {until!r} in {timeout} s: {self.messages}")

    def drain(self, seconds: float) -> list[str]:
        """Read every datagram that arrives in the next `seconds`; return those."""
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        self.messages += got
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def config_text(tmp_path: Path, folders: list[str]) -> str:
    listed = "\n".join(f"  - path: {tmp_path / name}" for name in folders)
    return (f"state_dir: {tmp_path / 'state'}\n"
            f"defaults: {{model: {tmp_path / 'no-such-model.pt'}, device: cpu, settle_seconds: 0.3}}\n"
            f"folders:\n{listed}\n")


def test_ready_status_and_stopping(tmp_path: Path, notify_socket: NotifySocket, spawn) -> None:
    (tmp_path / "a").mkdir()
    config = write_config(tmp_path / "config.yaml", config_text(tmp_path, ["a"]))
    daemon = spawn(config, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    messages = notify_socket.collect("READY=1")
    notify_socket.collect("STATUS=idle · 0 queued")
    assert daemon.stop(signal.SIGTERM) == 0
    notify_socket.collect("STOPPING=1", timeout=5)
    assert messages.index("READY=1") < notify_socket.messages.index("STOPPING=1")


def test_watchdog_pings_at_half_the_interval(tmp_path: Path, notify_socket: NotifySocket, spawn) -> None:
    (tmp_path / "a").mkdir()
    config = write_config(tmp_path / "config.yaml", config_text(tmp_path, ["a"]))
    daemon = spawn(config, env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    notify_socket.collect("READY=1")
    pings = [m for m in notify_socket.drain(3.0) if m == "WATCHDOG=1"]
    # every half of WATCHDOG_USEC: about 6 in 3 s; allow for a loaded machine
    assert 4 <= len(pings) <= 8, pings
    assert daemon.stop() == 0


def test_sighup_adds_a_folder_and_a_broken_config_keeps_the_old(tmp_path: Path, notify_socket: NotifySocket,
                                                                spawn) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = write_config(tmp_path / "config.yaml", config_text(tmp_path, ["a"]))
    readable = write_config(tmp_path / "status.yaml", config_text(tmp_path, ["a"]))  # for `status`
    daemon = spawn(config, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemon.wait_log("watching 1 folder(s)")

    config.write_text(config_text(tmp_path, ["a", "b"]))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log("watching 2 folder(s)")
    notify_socket.collect("RELOADING=1")
    assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in notify_socket.messages)
    (tmp_path / "b" / "new.mkv").write_bytes(b"")  # any file: it only has to be noticed and queued
    job = wait_for_state(readable, "new.mkv", {"failed"}, timeout=30)
    assert job["error"] == "the file is empty (0 bytes)"

    config.write_text(config_text(tmp_path, ["a", "b"]).replace("folders:", "folderz:"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log("reload rejected, keeping the running config")
    assert "at 'folderz': unknown key; did you mean 'folders'?" in daemon.log()
    (tmp_path / "b" / "still.mkv").write_bytes(b"")
    assert wait_for_state(readable, "still.mkv", {"failed"}, timeout=30)["state"] == "failed"
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
