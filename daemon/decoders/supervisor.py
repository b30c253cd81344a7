"""The daemon's side of a decoder child: starts it, asks it for work, watches it die and restarts it.

One `Decoder` per transcriber worker. Requests go one at a time (the worker
thread owns its decoder); while one runs the daemon waits on the pipe, and

- a Progress message is a heartbeat: the work is alive;
- silence for longer than the audio could need (`stall_seconds`) is a hang: the
  child is killed and the death is a fault;
- a dead child is looked at (deaths.of_exit) and reported (`on_death`: the
  journal line and the status), and the request raises DecoderDied.

The next request starts a new child, after a pause that doubles with each
death in a row (1 s up to a minute), so a child that dies at once cannot spin.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from pathlib import Path
from typing import Any

import numpy as np

from daemon.datatypes import Audio, MemoryLimit, Transcript
from daemon.decoders import deaths
from daemon.decoders import protocol as p
from daemon.decoders.deaths import Death
from daemon.samples import FLOAT32, DiskSamples, temporary_file
from daemon.transcribe import DeviceUnavailable, ModelNotFound, TranscribeOptions
from daemon.transcribe.store import LoadedModel

log = logging.getLogger("subwatch")

LOAD_STALL_SECONDS = 3600.0  # a first load may download a model of gigabytes
MAX_BACKOFF_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
# Test-only: the stall timeout in seconds for every batch, instead of the one scaled to its audio.
STALL_ENV = "SUBWATCH_TEST_STALL_SECONDS"


def stall_seconds(audio_seconds: float) -> float:
    """How long work on `audio_seconds` of audio may go without a progress report before it counts as
    hung: 10 minutes, plus the audio's own length (a large model on a slow CPU runs near realtime, and
    a batch of windows reports once it is done)."""
    override = os.environ.get(STALL_ENV)
    return float(override) if override else 600.0 + audio_seconds


class DecoderDied(Exception):
    """The child died while it had the request; `death` says how."""

    def __init__(self, death: Death) -> None:
        super().__init__(death.cause)
        self.death = death


class DecoderError(Exception):
    """The request failed in the child, which lives on (`kind`: memory or error)."""

    def __init__(self, kind: p.FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DecoderState:
    """What the status shows of one decoder child."""

    name: str  # the worker's device as configured
    pid: int | None  # None while none runs
    restarts: int  # deaths so far, each followed by a new child when there is work
    last_death: Death | None


class Decoder:
    """The decoder child of one worker (see the module's docstring)."""

    def __init__(self, name: str, settings: p.Settings, stopping: threading.Event,
                 on_death: Callable[[Decoder, Death], None] | None = None) -> None:
        self.name = name
        self._settings = settings
        self._stopping = stopping
        self._on_death = on_death
        self._process: _Child | None = None
        self._conn: Connection | None = None
        self._deaths_in_row = 0
        self._deaths = 0
        self.last_death: Death | None = None
        self.models: tuple[LoadedModel, ...] = ()
        self._wanted: tuple[str, str] | None = None  # the (spec, device) Load asked for last
        self._killed = threading.Event()  # set by kill(): the death is ours, not the child's fault

    def state(self) -> DecoderState:
        process = self._process
        pid = process.pid if process is not None and process.is_alive() else None
        return DecoderState(self.name, pid, self._deaths, self.last_death)

    # Requests ----------------------------------------------------------------------------------

    def load(self, spec: str, device: str) -> str:
        """Load `spec` on `device` (as configured) in the child; return the device it resolved to.

        Raise DeviceUnavailable or ModelNotFound as loading in the daemon would, DecoderError for
        other failures (out of memory), DecoderDied if the child dies meanwhile.
        """
        self._wanted = (spec, device)
        reply = self._request(p.Load(spec, device, self._settings.memory_limit), [], LOAD_STALL_SECONDS, None)
        assert isinstance(reply, p.Ready)
        self.models = reply.models
        return reply.device

    def transcribe_many(self, items: Sequence[tuple[Audio, TranscribeOptions]], names: Sequence[str],
                        progress: Callable[[float], None] | None = None,
                        batch_size: int | None = None) -> list[Transcript]:
        """Transcribe `items` with the model loaded last, as daemon.transcribe.transcribe_many would."""
        recordings = [p.Recording(name, len(audio.samples), options, audio.sample_rate)
                      for (audio, options), name in zip(items, names, strict=True)]
        seconds = sum(audio.duration for audio, _ in items)
        reply = self._request(p.Work("transcribe", tuple(recordings), batch_size),
                              [audio.samples for audio, _ in items], stall_seconds(seconds), progress)
        assert isinstance(reply, p.Transcribed)
        self.models = reply.models
        return list(reply.transcripts)

    def detect_languages(self, items: Sequence[tuple[Any, TranscribeOptions]]) -> list[tuple[str, float]]:
        """Each recording's (language, probability), as daemon.asr.detect_languages would answer."""
        recordings = [p.Recording(f"request {i + 1}", len(samples), options)
                      for i, (samples, options) in enumerate(items)]
        seconds = sum(len(samples) for samples, _ in items) / 16000
        reply = self._request(p.Work("detect", tuple(recordings)), [s for s, _ in items],
                              stall_seconds(seconds), None)
        assert isinstance(reply, p.Detected)
        return list(reply.languages)

    def configure(self, memory_limit: MemoryLimit | None) -> None:
        """Take a reloaded config's GPU memory limit: the child is given it with the next Load, which
        comes before every batch (a request on the pipe now would cut into the worker's)."""
        from dataclasses import replace

        self._settings = replace(self._settings, memory_limit=memory_limit)

    # Life and death ----------------------------------------------------------------------------

    def kill(self) -> None:
        """Kill the child now (the stop grace ran out): its request raises DecoderDied, charging nobody."""
        process = self._process
        if process is not None and process.is_alive():
            self._killed.set()
            process.kill()

    def close(self) -> None:
        """Ask the child to exit; kill it if it has not within a few seconds."""
        process, conn = self._process, self._conn
        if process is None:
            return
        try:
            if conn is not None:
                conn.send(p.Stop())
        except OSError:
            pass
        process.join(STOP_GRACE_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
        self._forget()

    def _start(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        if self._process is not None:  # it died between requests: charges nobody, but is seen
            self._died(None, None, idle=True)
        self._forget()
        if self._deaths_in_row:
            pause = min(MAX_BACKOFF_SECONDS, 2.0 ** (self._deaths_in_row - 1))
            log.info("decoder %s: starting again in %.0f s", self.name, pause)
            if self._stopping.wait(pause):
                raise DecoderDied(Death("stopping", fault=False))
        process, ours = _spawn(self._settings)
        self._process, self._conn = process, ours
        self._killed.clear()
        log.debug("decoder %s: child started, pid %d", self.name, process.pid)
        return ours

    def _forget(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def _request(self, message: object, samples: list[Any], stall: float,
                 progress: Callable[[float], None] | None) -> object:
        fresh = self._process is None or not self._process.is_alive()
        conn = self._start()
        if fresh and isinstance(message, p.Work) and self._wanted is not None:
            self.load(*self._wanted)  # a new child has no model yet: the one asked for last
        before = deaths.oom_kills()
        files = [_on_disk(s) for s in samples]
        try:
            conn.send(message)
            for fd in files:
                send_handle(conn, fd.fileno(), self._process.pid)
            reply = self._wait(conn, stall, progress, before)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._died(before, None) from None
        finally:
            for owned, original in zip(files, samples, strict=True):
                if owned is not original:
                    owned.close()
        self._deaths_in_row = 0
        if isinstance(reply, p.Failed):
            if reply.kind == "device":
                raise DeviceUnavailable(reply.message)
            if reply.kind == "model":
                raise ModelNotFound(reply.message)
            raise DecoderError(reply.kind, reply.message)
        return reply

    def _wait(self, conn: Connection, stall: float, progress: Callable[[float], None] | None,
              before: int | None) -> object:
        heard = time.monotonic()
        while True:
            if conn.poll(1.0):
                reply = conn.recv()
                if not isinstance(reply, p.Progress):
                    return reply
                heard = time.monotonic()
                if progress is not None:
                    try:
                        progress(reply.fraction)
                    except BaseException:
                        self.kill()  # abandoned (a stop): the child's work is dropped with it
                        self._process.join()
                        self._forget()
                        raise
            elif not self._process.is_alive():
                raise self._died(before, None)
            elif time.monotonic() - heard > stall:
                self._process.kill()
                raise self._died(before, deaths.stalled(stall))

    def _died(self, before: int | None, death: Death | None, idle: bool = False) -> DecoderDied:
        process = self._process
        assert process is not None
        process.join()
        if death is None:
            death = deaths.of_exit(process.exitcode, before, deaths.oom_kills())
            if self._killed.is_set():
                death = Death(f"{death.cause}, killed by subwatch", fault=False)
            elif idle:  # with no file in it, nothing can be charged for it
                death = Death(f"{death.cause}, between batches", fault=False, at=death.at)
        self._forget()
        self._deaths_in_row += 1
        self._deaths += 1
        self.last_death = death
        log.warning("decoder %s: its child (pid %s) died: %s%s", self.name, process.pid, death.cause,
                    "" if death.fault else "; nothing is charged for it")
        if self._on_death is not None:
            self._on_death(self, death)
        return DecoderDied(death)


def _on_disk(samples: Any) -> Any:
    """Return samples whose file the child can be handed: DiskSamples as they are, an array written out."""
    if isinstance(samples, DiskSamples):
        return samples
    file = temporary_file(None)
    file.write(np.ascontiguousarray(samples, dtype=FLOAT32).tobytes())
    file.flush()
    return file


class _Child:
    """A running decoder child: `subprocess.Popen` seen as the supervisor asks of it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self.pid = process.pid

    def is_alive(self) -> bool:
        return self._process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._process.poll()  # negative: killed by that signal

    def join(self, timeout: float | None = None) -> None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            self._process.kill()


def _spawn(settings: p.Settings) -> tuple[_Child, Connection]:
    """Start a decoder child (`python -m daemon.decoders.child FD`) with one end of a socket pair as its
    pipe, and hand it its settings. A new interpreter, not a fork: the daemon has threads, and a fork
    would copy their locks mid-use."""
    ours, theirs = socket.socketpair()
    # The child imports this very package, wherever it was imported from (an installed wheel, a
    # checkout run with `python -m daemon` from its folder).
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.decoders.child", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path},
        )
    conn = Connection(ours.detach())
    conn.send(settings)
    return _Child(process), conn
