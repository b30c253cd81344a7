"""Bodies a stranger sends, read under limits: bytes, time, how many at once, and where they go.

An upload (Bazarr's audio, a file for /asr) is streamed to a temporary file on disk under
daemon.http.body's byte counter and minimum rate: never held whole in memory, never more than the
limit whatever Content-Length says, cut off when it comes too slowly. At most
UPLOADS_AT_ONCE bodies are read at once; a request that waits longer than SLOT_WAIT_SECONDS for a
turn is answered 503.

Decoding (ffmpeg, or raw PCM to float32) runs in a `DecodePool` of its own threads, so a slow
decode can hold neither the event loop nor the threads other routes use; the pool says when it is
wedged (a decode running far past its time limit) for /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from daemon.http.body import BodyRefused, limited_stream

T = TypeVar("T")

COPY_BYTES = 1024 * 1024
UPLOADS_AT_ONCE = 8
SLOT_WAIT_SECONDS = 30.0
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the audio
WEDGED_GRACE_SECONDS = 60.0  # a decode this long past its own time limit means the pool is stuck


@dataclass(frozen=True)
class Upload:
    """A multipart file field saved to disk: its name as sent, the file here and its size in bytes."""

    filename: str
    path: Path
    size: int


class UploadGate:
    """How many bodies are read at once (UPLOADS_AT_ONCE); one gate per server."""

    def __init__(self, at_once: int = UPLOADS_AT_ONCE) -> None:
        self._slots = asyncio.Semaphore(at_once)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a turn to read a body. Raise BodyRefused (503) after SLOT_WAIT_SECONDS."""
        try:
            await asyncio.wait_for(self._slots.acquire(), SLOT_WAIT_SECONDS)
        except TimeoutError:
            raise BodyRefused(503, "too many uploads at once; try again shortly", retry_after=30) from None
        try:
            yield
        finally:
            self._slots.release()


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count} bytes"


@contextlib.asynccontextmanager
async def saved_upload(request: Request, field: str, limit: int, what: str,
                       work_dir: Path) -> AsyncIterator[Upload]:
    """Save the multipart file field `field` to a temporary file in `work_dir`; remove it on exit.

    Raise BodyRefused: 400 for a body that is not multipart/form-data, 422 if it lacks the field,
    and the codes of body.limited_stream (`what` names the limit).
    """
    needed = f"the body must be multipart/form-data with the audio in field {field!r}"
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BodyRefused(400, needed)
    too_large = f"the body is over the {_size(limit)} {what}"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) <= 18 and int(declared) > limit:
        too_large = f"the body is {_size(int(declared))}, over the {_size(limit)} {what}"
    parser = MultiPartParser(request.headers, limited_stream(request, limit, too_large),
                             max_files=1, max_fields=16, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except BodyRefused:
        raise
    except Exception as exc:  # a broken body: python-multipart's and Starlette's own errors
        raise BodyRefused(400, f"{needed} ({exc})") from None
    try:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise BodyRefused(422, f"multipart field {field!r} with the audio is missing")
        work_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="upload-", dir=work_dir)
        path = Path(name)
        try:
            size = await asyncio.to_thread(_copy, upload, handle)
            yield Upload(upload.filename or field, path, size)
        finally:
            path.unlink(missing_ok=True)
    finally:
        await form.close()


def _copy(upload: UploadFile, handle: int) -> int:
    """Copy the spooled upload into the open file `handle` (closed after); return the bytes copied."""
    size = 0
    upload.file.seek(0)
    with os.fdopen(handle, "wb") as out:
        while block := upload.file.read(COPY_BYTES):
            out.write(block)
            size += len(block)
    return size


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client has gone (its connection closed). Call only once the body is read."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_gone(request: Request, future: asyncio.Future[T], on_gone: Callable[[], Any]) -> T | None:
    """Await `future`; if the client goes first, call `on_gone` (cancel its work) and return None."""
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        on_gone()
        return None
    finally:
        watcher.cancel()


class DecodePool:
    """Threads of their own for decoding request audio, `slots` at once; the rest wait their turn."""

    def __init__(self, slots: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="subwatch-decode")
        self._lock = threading.Lock()
        self._running: dict[object, float] = {}  # a running decode -> when it must have ended

    def submit(self, fn: Callable[..., T], *args: Any, limit_s: float) -> Future[T]:
        """Queue `fn(*args)`, which ends within `limit_s` once it runs (its ffmpeg has that time
        limit); its future can be cancelled while it still waits."""

        def run() -> T:
            token = object()
            with self._lock:
                self._running[token] = time.monotonic() + limit_s + WEDGED_GRACE_SECONDS
            try:
                return fn(*args)
            finally:
                with self._lock:
                    del self._running[token]

        return self._executor.submit(run)

    def wedged(self) -> bool:
        """Whether a decode has run past its time limit (and a grace): the pool no longer moves."""
        with self._lock:
            deadline = min(self._running.values(), default=None)
        return deadline is not None and time.monotonic() > deadline

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
