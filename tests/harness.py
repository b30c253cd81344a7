"""Real-process test harness: an HTTP sink for Apprise and a running `subwatch run`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class NotificationSink:
    """An HTTP server on 127.0.0.1 that records what Apprise's json:// posts to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink._lock:
                    sink.received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        """Return the first message matching `predicate`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages():
                if predicate(message):
                    return message
            time.sleep(0.1)
        raise AssertionError(f"no matching notification within {timeout} s; got {self.messages()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# CTranslate2 folders this test process has converted once (tests/conftest.py adds tiny.en's):
# each daemon's models_dir gets hard links to them, rather than converting the same weights again
# (3 s a daemon). The daemon finds them by the name it gives them, its checkpoint's path, size and
# time; tests of conversion itself convert their own checkpoints.
CONVERTED: list[Path] = []


def seed_converted(config: Path) -> None:
    """Hard-link the folders in CONVERTED into `config`'s models_dir/converted, where absent."""
    if not CONVERTED:
        return
    from daemon.config import load_config

    target = load_config(config).models_dir / "converted"
    for folder in CONVERTED:
        if not (target / folder.name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, target / folder.name, copy_function=os.link)


class Daemon:
    """A real `python -m daemon run --config FILE` process with its stderr collected."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        seed_converted(config)
        self.config = config
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()  # a restarted daemon appends: log() is this process's part
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def log(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}):\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)
        self.process.wait()
        self._log.close()


def subwatch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `subwatch` command line (`python -m daemon ARGS`) and return the finished run."""
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def status_cli(config: Path) -> list[dict[str, Any]]:
    """Return `subwatch status --json` for `config`, parsed."""
    done = subprocess.run([sys.executable, "-m", "daemon", "status", "--json", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def status(config: Path) -> list[dict[str, Any]]:
    """Return the jobs of `config`'s database as `subwatch status --json` shows them.

    Read in this process: a CLI process every 0.3 s costs most of a core,
    which a 2-core machine takes from the daemon under test.
    """
    from daemon.cli import _job_json
    from daemon.config import load_config

    loaded = load_config(config)
    if loaded.database is None and not loaded.db_path.exists():
        return []
    with queue_of(config) as jobs:
        return [_job_json(job) for job in jobs.jobs()]


@contextmanager
def queue_of(config: Path) -> Iterator[Any]:
    """Yield the JobQueue of `config` as its node sees it (its name, its path map), closed after."""
    from daemon.config import load_config
    from daemon.queue import JobQueue

    loaded = load_config(config)
    jobs = JobQueue(loaded.queue_at, node=loaded.node.name, paths=loaded.queue_paths)
    try:
        yield jobs
    finally:
        jobs.close()


def wait_for_state(config: Path, name: str, states: set[str], timeout: float = 300.0) -> dict[str, Any]:
    """Wait until the job whose path ends with `name` is in one of `states`; return it."""
    deadline = time.monotonic() + timeout
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = [j for j in status(config) if j["path"].endswith(name)]
        if jobs and jobs[0]["state"] in states:
            return jobs[0]
        time.sleep(0.3)
    raise AssertionError(f"{name} not in {states} within {timeout} s: {jobs}")


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll `condition` every 50 ms for up to `timeout` seconds; return its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@dataclass
class DaemonWorld:
    """A `subwatch run` under test: its folder, config, process, notification sink, and a staging
    folder outside every watched one where media is made before it is dropped in."""

    root: Path
    config: Path
    daemon: Daemon
    sink: NotificationSink
    staging: Path


@contextmanager
def running_world(
    tmp_path_factory: Any, name: str, folders: list[str], config: Callable[[Path, str], str],
    world: type[DaemonWorld] = DaemonWorld,
) -> Iterator[Any]:
    """Start a daemon on `config(root, sink_url)` (YAML) with `folders` made under a fresh root;
    yield it as a `world` once it watches them all; stop it (exit 0) and the sink afterwards."""
    root = tmp_path_factory.mktemp(name)
    for folder in folders:
        (root / folder).mkdir()
    sink = NotificationSink()
    path = write_config(root / "config.yaml", config(root, sink.url))
    daemon = Daemon(path)
    try:
        daemon.wait_log(f"watching {len(folders)} folder(s)", timeout=120)
        yield world(root, path, daemon, sink, tmp_path_factory.mktemp("staging"))
        assert daemon.stop() == 0, daemon.log()
    finally:
        if daemon.process.poll() is None:  # a start or a test that failed: leave nothing running
            daemon.kill()
        sink.close()
