"""bench/abuse.py's tools: the daemon under test, a sampler of its /proc figures, and HTTP calls that
always end (every one has a timeout and says what came back, or that nothing did)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


# ---------------------------------------------------------------- HTTP, always bounded


@dataclass(frozen=True)
class Reply:
    """What one request got back: its status (None: no answer), body text, Retry-After, error, seconds."""

    status: int | None
    text: str = ""
    retry_after: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """How the table counts it: "200", "503+Retry-After", "no answer in 60 s", "refused", ..."""
        if self.status is None:
            return self.error or "no answer"
        if self.status == 503:
            return "503+Retry-After" if self.retry_after else "503 without Retry-After"
        return str(self.status)


def _failure(exc: Exception, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in {timeout:.0f} s"
    if isinstance(exc, httpx.ConnectError):
        return "refused" if "refused" in str(exc).lower() else "connect failed"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "connection dropped"
    return type(exc).__name__


def request(method: str, url: str, timeout: float, **kwargs: Any) -> Reply:
    """Given a method, URL and a total timeout in seconds, return the Reply; never raise for the network.

    The daemon sends nothing before its answer, so a read timeout of `timeout` bounds the wait.
    """
    started = time.monotonic()
    limits = httpx.Timeout(connect=min(timeout, 10.0), read=timeout, write=timeout, pool=timeout)
    try:
        with httpx.Client(timeout=limits) as client:
            answer = client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        return Reply(None, error=_failure(exc, timeout), seconds=time.monotonic() - started)
    return Reply(answer.status_code, answer.text, answer.headers.get("retry-after"),
                 seconds=time.monotonic() - started)


def post_audio(url: str, audio: Path | bytes, params: dict[str, str], timeout: float,
               name: str = "audio") -> Reply:
    """POST `audio` (a file, streamed from disk, or bytes) as multipart field `audio_file`, as Bazarr does."""
    if isinstance(audio, bytes):
        return request("POST", url, timeout, params=params, files={"audio_file": (name, audio)},
                       headers={"User-Agent": "Subliminal/2.1.0"})
    with open(audio, "rb") as body:
        return request("POST", url, timeout, params=params,
                       files={"audio_file": (name, body, "application/octet-stream")},
                       headers={"User-Agent": "Subliminal/2.1.0"})


def healthz(base: str, timeout: float = 5.0) -> str:
    """Return what GET /healthz said: "200 ok", "503 wedged", "no answer in 5 s", "refused", ..."""
    reply = request("GET", f"{base}/healthz", timeout)
    if reply.status is None:
        return reply.label
    try:
        import json

        return f"{reply.status} {json.loads(reply.text).get('status', '?')}"
    except ValueError:
        return f"{reply.status} (not JSON)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to `wanted` (at most the hard limit); return the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- the daemon and its figures


@dataclass(frozen=True)
class Figures:
    """One look at the daemon: resident memory and its high-water mark (MiB), descriptors, threads."""

    rss: float
    hwm: float
    fds: int
    threads: int
    cpu: float  # user + system seconds so far


DECODER = "subwatch-decode"  # a decoder child's name (daemon.decoders.child): part of the daemon


def look(pid: int) -> Figures | None:
    """Given the daemon's pid, return its Figures now, its decoder children's added (the model lives
    there); None if it is gone."""
    mine = _look(pid)
    if mine is None:
        return None
    for child in _children(pid, DECODER):
        theirs = _look(child)
        if theirs is not None:
            mine = Figures(mine.rss + theirs.rss, mine.hwm + theirs.hwm, mine.fds + theirs.fds,
                           mine.threads + theirs.threads, mine.cpu + theirs.cpu)
    return mine


def _look(pid: int) -> Figures | None:
    """Given a pid, return its own Figures now; None if it is gone."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    if "VmRSS" not in status:  # a zombie
        return None
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return Figures(int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024,
                   fds, int(status["Threads"]), cpu)


def children(pid: int) -> tuple[str, ...]:
    """Return the command names of `pid`'s child processes (ffmpeg, ffprobe, ...) but its decoder
    children, which live as long as it does."""
    return tuple(sorted(name for name in _children(pid, None).values() if name != DECODER))


def _children(pid: int, named: str | None) -> dict[int, str]:
    """The live child processes of `pid` (those called `named` only, if given): pid -> command name."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == pid and rest[0] != "Z" and named in (None, name):
            found[int(entry)] = name
    return found


@dataclass
class Peaks:
    """The highest figures seen since `begin`."""

    rss: float = 0.0
    hwm: float = 0.0
    fds: int = 0
    threads: int = 0
    guard_hit: bool = False


class Sampler:
    """Samples the daemon's /proc figures every `interval` s on a thread, keeping the peaks of a phase.

    If resident memory passes `guard_mib` the daemon is killed at once (the machine is shared:
    an attack must not take it down); the phase then says so.
    """

    def __init__(self, interval: float = 0.075) -> None:
        self.interval = interval
        self.pid = 0
        self.guard_mib = float("inf")
        self.peaks = Peaks()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self, pid: int) -> None:
        self.pid = pid
        if not self._thread.is_alive():
            self._thread.start()

    def begin(self) -> None:
        """Start a phase: forget the peaks, and reset the kernel's high-water mark (VmHWM) too."""
        try:  # "5" resets VmHWM to the current RSS (proc(5)); our own child, so allowed
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        with self._lock:
            self.peaks = Peaks()

    def snapshot(self) -> Peaks:
        with self._lock:
            return Peaks(**vars(self.peaks))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = look(self.pid)
            if now is None:
                continue
            with self._lock:
                p = self.peaks
                p.rss, p.hwm = max(p.rss, now.rss), max(p.hwm, now.hwm)
                p.fds, p.threads = max(p.fds, now.fds), max(p.threads, now.threads)
                if max(now.rss, now.hwm) > self.guard_mib and not p.guard_hit:
                    p.guard_hit = True
                    kill_group(self.pid)

    def stop(self) -> None:
        self._stop.set()


def kill_group(pid: int) -> None:
    """SIGKILL the process group the daemon leads (it and the ffmpeg it started), by its id."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LogPump:
    """Copies the daemon's output into `path`, at most `cap` bytes of it (a daemon out of descriptors can
    log a traceback thousands of times a second), counting every line and keeping the last ones."""

    def __init__(self, path: Path, cap: int = 64 * MIB) -> None:
        self.path, self.cap = path, cap
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=300)
        self._written = 0
        self._lock = threading.Lock()

    def attach(self, stream: IO[bytes]) -> None:
        """Read `stream` (a started daemon's stdout) to its end on a thread."""
        threading.Thread(target=self._pump, args=(stream,), name="log", daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        with open(self.path, "ab") as out:
            for line in stream:
                with self._lock:
                    self.lines += 1
                    self.tail.append(line.decode(errors="replace"))
                if self._written < self.cap:
                    out.write(line)
                    self._written += len(line)
                    if self._written >= self.cap:
                        out.write(b"[bench/abuse.py: the log passed its cap; the rest is only counted]\n")
                    out.flush()

    def text(self) -> str:
        """The last lines logged."""
        with self._lock:
            return "".join(self.tail)


class DaemonProcess:
    """A real `python -m daemon run --config FILE` in a session of its own, with the open-files soft
    limit systemd gives a service (`nofile`), its output pumped into `config`.log."""

    def __init__(self, config: Path, nofile: int, env: dict[str, str]) -> None:
        self.config, self.nofile, self.env = config, nofile, env
        self.output = LogPump(config.with_suffix(".log"))
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        # The service's limit, not this script's raised one; set at once, long before the
        # daemon (still importing) opens its listener.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE, (self.nofile, hard))
        assert self.process.stdout is not None
        self.output.attach(self.process.stdout)
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for a killed daemon to be gone: a big one takes a while."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        return self.output.text()

    def wait_ready(self, base: str, timeout: float) -> bool:
        """Wait until /healthz answers 200 (the model is loaded at the first request); False if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if healthz(base, 2.0).startswith("200"):
                return True
            time.sleep(0.3)
        return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL to its whole group after `timeout` s; return its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.process.poll()
        kill_group(self.process.pid)  # what it left behind (a hung ffmpeg ignores SIGTERM)
        self.process.wait()
        return code


# ---------------------------------------------------------------- the job database and sidecars


def job_state(db: Path, name: str) -> str | None:
    """Return the state of the job whose path ends with `name`, None if there is none (yet)."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT path, state FROM jobs").fetchall()
    except sqlite3.Error:
        return None
    states = [state for path, state in rows if os.fsdecode(path).endswith(name)]
    return states[-1] if states else None


def wait_job(db: Path, name: str, timeout: float, alive: Callable[[], bool]) -> str:
    """Wait until the job of `name` is done, failed or skipped; return its state, or why not."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = job_state(db, name)
        if state in ("done", "failed", "skipped"):
            return state
        if not alive():
            return "daemon dead"
        time.sleep(0.3)
    return f"{state or 'not queued'} after {timeout:.0f} s"


def sidecar_text(folder: Path, stem: str) -> str:
    """Return the text of every .srt/.vtt sidecar in `folder` whose name starts with `stem`."""
    parts = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(stem) and path.suffix in (".srt", ".vtt"):
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


@dataclass
class Tally:
    """Counts of labels (status codes, socket outcomes), in the order first seen."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, label: str, n: int = 1) -> None:
        self.counts[label] = self.counts.get(label, 0) + n

    def __str__(self) -> str:
        return ", ".join(f"{n}x {label}" for label, n in self.counts.items()) or "-"
