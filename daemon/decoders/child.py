"""The decoder child: a process of its own that loads Whisper models and transcribes what it is sent.

Whatever brings a decoder down (a driver's segfault, the kernel's OOM killer, a
hang) takes this process only: the daemon's watcher, queue, HTTP side and
notifier live on in the parent, which sees how the child died and restarts it
(daemon.decoders.supervisor). The child holds its own ModelStore: a model is
loaded here, once, and kept until it has been idle for the configured time.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from typing import Any

from daemon.decoders import protocol as p
from daemon.samples import DiskSamples

log = logging.getLogger("subwatch.decoder")

# Test-only (tests/test_daemon_crashes.py): "Name.ogg" or "Name.ogg:how" makes the child die when a
# batch holding that file begins, as a file that crashes a decoder or driver would; `how` is abort
# (the default), segv, hang or memory (a MemoryError while batches are above one window).
CRASH_ON_ENV = "SUBWATCH_TEST_CRASH_ON"
# Test-only: an address-space limit for the child (RLIMIT_AS), to run it out of memory: bytes from its
# start, or "+MiB" above its address space once a model is loaded.
MEMORY_CAP_ENV = "SUBWATCH_TEST_DECODER_MEMORY"
IDLE_CHECK_SECONDS = 30.0  # how often an idle child drops models unused for unload_after_seconds


def main(fd: int) -> None:
    """The child's life (`python -m daemon.decoders.child FD`, FD its end of the daemon's socket pair):
    take its settings, then answer the daemon's requests until Stop or the pipe closes."""
    from daemon.logs import setup_logging
    from daemon.malloc import one_arena

    one_arena()  # first, before any thread allocates
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in a terminal is the daemon's to handle
    _die_with_the_daemon()
    conn = Connection(fd)
    settings: p.Settings = conn.recv()
    setup_logging(settings.log_level)
    cap = os.environ.get(MEMORY_CAP_ENV, "")
    if cap and not cap.startswith("+"):
        resource.setrlimit(resource.RLIMIT_AS, (int(cap), int(cap)))
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    Child(conn, settings).serve()


def _die_with_the_daemon() -> None:
    """Have the kernel kill this child when the daemon dies (a SIGKILL, a power-cut-like death), so a
    new daemon never shares the CPU or GPU with an orphan still decoding the old one's batch."""
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, b"subwatch-decode")  # PR_SET_NAME: what ps, top and /proc/PID/comm show
    except (OSError, AttributeError):
        return  # not Linux: the closed pipe ends the child at its next message instead
    if os.getppid() != parent:  # the daemon died before the request took effect
        os._exit(1)


class Child:
    """One decoder child's state: its model store and the model Load readied last."""

    def __init__(self, conn: Connection, settings: p.Settings) -> None:
        from daemon.transcribe import ModelStore

        self.conn = conn
        self.store = ModelStore(settings.models_dir, settings.unload_after_seconds,
                                settings.memory_limit, engine=settings.engine)
        self.current: tuple[str, str] | None = None  # (spec, resolved device) Load readied last

    def serve(self) -> None:
        while True:
            if not self.conn.poll(IDLE_CHECK_SECONDS):
                self._idle()
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return  # the daemon is gone
            if isinstance(message, p.Stop):
                return
            self.conn.send(self._answer(message))

    def _idle(self) -> None:
        self.store.unload_idle()  # loaded again by the next Work that needs it

    def _answer(self, message: object) -> object:
        from daemon.transcribe import DeviceUnavailable, ModelNotFound

        try:
            if isinstance(message, p.Load):
                return self._load(message)
            if isinstance(message, p.Work):
                return self._work(message)
            return p.Failed("error", f"the decoder does not know {type(message).__name__}")
        except DeviceUnavailable as exc:
            return p.Failed("device", str(exc))
        except ModelNotFound as exc:
            return p.Failed("model", str(exc))
        except Exception as exc:  # noqa: BLE001 - every error is an answer; the child lives on
            log.debug("decoder request failed", exc_info=True)
            return p.Failed("memory" if _out_of_memory(exc) else "error", _one_line(exc))

    def _load(self, message: p.Load) -> p.Ready:
        from daemon.transcribe import resolve_device

        device = resolve_device(message.device)
        if message.memory_limit != self.store.memory_limit:
            self.store.set_memory_limit(message.memory_limit)
        self.current = None
        self.store.get(message.spec, device)
        self.current = (message.spec, device)
        _cap_above_now(os.environ.get(MEMORY_CAP_ENV, ""))
        return p.Ready(device, tuple(self.store.loaded()))

    def _work(self, message: p.Work) -> object:
        from daemon.asr import detect_languages
        from daemon.datatypes import Audio
        from daemon.transcribe import transcribe_many

        files = [_open(self.conn) for _ in message.recordings]
        try:
            if self.current is None:
                return p.Failed("error", "no model was loaded in the decoder before its work")
            samples = [DiskSamples(f, r.length) for f, r in zip(files, message.recordings, strict=True)]
            cap = message.batch_size
            options = [r.options if cap is None else replace(r.options, batch_size=cap)
                       for r in message.recordings]
            pairs = list(zip(samples, options, strict=True))
            with self.store.use(*self.current) as model:
                _crash_if_asked([r.name for r in message.recordings], cap)
                if message.kind == "detect":
                    return p.Detected(tuple(detect_languages(model, pairs)))
                rates = [r.sample_rate for r in message.recordings]
                items = [(Audio(s, rate), o) for (s, o), rate in zip(pairs, rates, strict=True)]
                transcripts = transcribe_many(items, model, lambda f: self.conn.send(p.Progress(f)))
            return p.Transcribed(tuple(transcripts), tuple(self.store.loaded()))
        finally:
            for f in files:
                f.close()


def _open(conn: Connection) -> Any:
    """Receive one descriptor from the daemon and return it as a binary file."""
    return os.fdopen(recv_handle(conn), "rb", buffering=0)


def _cap_above_now(cap: str) -> None:
    """Apply a "+MiB" MEMORY_CAP_ENV (tests only): this much address space above what the child has now."""
    if not cap.startswith("+") or resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        return
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + int(cap[1:]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _crash_if_asked(names: list[str], batch_size: int | None) -> None:
    """Die as CRASH_ON_ENV asks (tests only; see there)."""
    asked = os.environ.get(CRASH_ON_ENV)
    if not asked:
        return
    name, _, how = asked.partition(":")
    if name not in names:
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "hang":
        while True:
            time.sleep(60)
    elif how == "memory":
        if batch_size != 1:
            raise MemoryError(f"test: {name} needs more memory than the decoder may use")
    else:
        os.abort()


def _out_of_memory(exc: BaseException) -> bool:
    """True for Python's MemoryError (a memory cap), a GPU's out-of-memory error, or CTranslate2's
    failed allocation."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    said = ("out of memory", "bad_alloc", "can't allocate memory", "cannot allocate memory",
            "failed to allocate")  # the last: MKL's mkl_malloc under a memory cap
    return any(words in text for words in said) or type(exc).__name__ == "OutOfMemoryError"


def _one_line(exc: BaseException) -> str:
    from daemon.outcomes import one_line_error

    return one_line_error(exc)


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]))
