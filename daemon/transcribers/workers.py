"""Transcriber workers: which worker takes which decoded file, and the buffer between loader and workers.

The loader decodes files ahead of the model into a `Prefetch` buffer that is
bounded by seconds of decoded audio (float32 at 16 kHz: an hour is 230 MB),
not by a number of files: a backlog of short files gathers there and is
transcribed in shared batches, while a three-hour film waits alone.

Each worker is bound to one device of the config (`cpu`, `cuda:1`, …). It
takes the first waiting file its device serves plus every other waiting file
with the same model, up to a batch bound, and transcribes them together.
The rules are pure functions of device strings, so they are tested without a GPU.

A file that was in the model when the daemon or its decoder child died is a
suspect (see daemon.transcribers.blame): it goes before the others, alone in its worker's
decoder child, so if that child dies of a fault again the crash is its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

# Decoded audio waiting for a worker: 30 min is about 115 MB; at most 16 files.
PREFETCH_SECONDS = 30 * 60.0
PREFETCH_FILES = 16
# One batch: as many files and seconds (the first file goes whatever its length).
BATCH_SECONDS = 30 * 60.0
BATCH_FILES = 16

T = TypeVar("T")


@dataclass(frozen=True)
class Waiting:
    """What the scheduler needs to know of a decoded file: its model, its folder's devices, its length."""

    model: str
    devices: tuple[str, ...]
    seconds: float
    alone: bool = False  # a suspect: its batch is itself alone


def is_gpu(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def worker_devices(folder_devices: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """Given each folder's device list, return the devices to run one worker on, in first-seen order.

    `cuda` means any GPU and `auto` a GPU if there is one: neither gets a
    worker of its own when a named `cuda:N` worker (or, for `auto`, a `cuda`
    one) serves it, which would be a second worker on the same card.
    """
    named = list(dict.fromkeys(device for devices in folder_devices for device in devices))
    numbered = any(d.startswith("cuda:") for d in named)
    return tuple(
        d for d in named
        if not (d == "cuda" and numbered) and not (d == "auto" and any(is_gpu(x) for x in named))
    )


def serves(worker: str, devices: Sequence[str]) -> bool:
    """Return True if the worker bound to `worker` may transcribe a file whose folder lists `devices`.

    A folder's own device always; a GPU worker also takes `cuda` and `auto` folders.
    """
    return worker in devices or (is_gpu(worker) and ("cuda" in devices or "auto" in devices))


def pick_batch(
    worker: str,
    waiting: Sequence[Waiting],
    *,
    model: str | None = None,
    leave_to: Sequence[str] = (),
    max_files: int = BATCH_FILES,
    max_seconds: float = BATCH_SECONDS,
) -> list[int]:
    """Given a worker's device and the waiting files in arrival order, return the indices of its next batch.

    A file to be transcribed `alone` that the worker serves (with `model`, if
    given) goes first, as a batch of one. Otherwise the batch is the first
    file the worker serves and every later one it serves with the same model
    (none of them `alone`), while the batch stays within `max_files` and
    `max_seconds` of audio; the first file goes whatever its length. A file
    that one of the devices in `leave_to` serves is left for that worker (used
    when this worker's device is unusable). Return [] if there is nothing for it.
    """

    def mine(w: Waiting) -> bool:
        return (
            serves(worker, w.devices)
            and (model is None or w.model == model)
            and not any(serves(other, w.devices) for other in leave_to)
        )

    candidates = [i for i, w in enumerate(waiting) if mine(w)]
    if not candidates:
        return []
    first = next((i for i in candidates if waiting[i].alone), candidates[0])
    if waiting[first].alone:
        return [first]
    batch, seconds = [first], waiting[first].seconds
    for index in range(first + 1, len(waiting)):
        w = waiting[index]
        if len(batch) >= max_files:
            break
        if mine(w) and not w.alone and w.model == waiting[first].model and seconds + w.seconds <= max_seconds:
            batch.append(index)
            seconds += w.seconds
    return batch


def describe_files(names: Sequence[str]) -> str:
    """Given the file names of a batch, return how a status line names it.

    "A.mkv" for one file, "2 files: A.mkv, B.mkv", "3 files: A.mkv, B.mkv, …".
    """
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:2])
    return f"{len(names)} files: {shown}{', …' if len(names) > 2 else ''}"


class Prefetch(Generic[T]):
    """Decoded files waiting for a worker, bounded by seconds of audio and by count.

    The loader calls `wait_for_room` before it decodes the next file, so at
    most one file beyond the bound is ever decoded; an empty buffer always
    takes one, however long. Workers `peek` at their next file and `take`
    their batch. Thread-safe.
    """

    def __init__(
        self,
        describe: Callable[[T], Waiting],
        max_seconds: float = PREFETCH_SECONDS,
        max_files: int = PREFETCH_FILES,
    ) -> None:
        self._describe = describe
        self.max_seconds, self.max_files = max_seconds, max_files
        self._items: list[tuple[T, Waiting]] = []
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def has_room(self) -> bool:
        with self._changed:
            return self._has_room()

    def _has_room(self) -> bool:
        if not self._items:
            return True
        waiting = sum(w.seconds for _, w in self._items)
        return len(self._items) < self.max_files and waiting < self.max_seconds

    def wait_for_room(self, stop: threading.Event, poll: float = 0.5) -> bool:
        """Wait until another file may be decoded; return False if `stop` is set first."""
        with self._changed:
            while not self._has_room():
                if stop.is_set():
                    return False
                self._changed.wait(poll)
        return not stop.is_set()

    def put(self, item: T) -> None:
        with self._changed:
            self._items.append((item, self._describe(item)))
            self._changed.notify_all()

    def peek(self, worker: str, timeout: float, leave_to: Sequence[str] = ()) -> T | None:
        """Return the first waiting file `worker` serves, left in place, waiting up to `timeout` s for one."""
        with self._changed:
            self._changed.wait_for(lambda: self._pick(worker, None, leave_to), timeout)
            picked = self._pick(worker, None, leave_to)
            return self._items[picked[0]][0] if picked else None

    def take(self, worker: str, model: str | None = None, leave_to: Sequence[str] = ()) -> list[T]:
        """Remove and return the worker's next batch (see pick_batch); [] if there is nothing for it."""
        with self._changed:
            picked = self._pick(worker, model, leave_to)
            batch = [self._items[i][0] for i in picked]
            for i in reversed(picked):
                del self._items[i]
            if picked:
                self._changed.notify_all()
            return batch

    def drain(self) -> list[T]:
        """Remove and return everything waiting (at shutdown)."""
        with self._changed:
            items = [item for item, _ in self._items]
            self._items.clear()
            self._changed.notify_all()
            return items

    def _pick(self, worker: str, model: str | None, leave_to: Sequence[str]) -> list[int]:
        return pick_batch(worker, [w for _, w in self._items], model=model, leave_to=leave_to)
