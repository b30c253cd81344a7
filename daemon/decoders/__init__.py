"""Decoding in supervised child processes: one decoder child per transcriber worker.

- `protocol`: the messages between the daemon and a child (audio goes as file descriptors);
- `child`: the child's side: its own ModelStore, transcription and language detection;
- `deaths`: how a child died, and whether that is evidence against the file it had;
- `supervisor`: the daemon's side: `Decoder` starts, asks, watches and restarts one child.

`DecoderPool` holds the daemon's decoders by worker, and answers for all of them what the
status page and /metrics ask of the models (what is loaded where).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from daemon.datatypes import MemoryLimit
from daemon.decoders import deaths
from daemon.decoders.deaths import Death
from daemon.decoders.protocol import Settings
from daemon.decoders.supervisor import Decoder, DecoderDied, DecoderError, DecoderState
from daemon.transcribe.store import LoadedModel

__all__ = [
    "Death", "Decoder", "DecoderDied", "DecoderError", "DecoderPool", "DecoderState", "Settings", "deaths",
]


class DecoderPool:
    """The daemon's decoder children, one per worker name (its device as configured)."""

    def __init__(self, settings: Settings, stopping: threading.Event,
                 on_death: Callable[[Decoder, Death], None] | None = None) -> None:
        self._settings = settings
        self._stopping = stopping
        self._on_death = on_death
        self._decoders: dict[str, Decoder] = {}
        self._lock = threading.Lock()

    def for_worker(self, name: str) -> Decoder:
        with self._lock:
            if name not in self._decoders:
                self._decoders[name] = Decoder(name, self._settings, self._stopping, self._on_death)
            return self._decoders[name]

    def all(self) -> list[Decoder]:
        with self._lock:
            return list(self._decoders.values())

    def loaded(self) -> list[LoadedModel]:
        """The models the children hold, as each last reported."""
        return [model for decoder in self.all() for model in decoder.models]

    def states(self) -> list[DecoderState]:
        return [decoder.state() for decoder in self.all()]

    def set_memory_limit(self, memory_limit: MemoryLimit | None) -> None:
        from dataclasses import replace

        self._settings = replace(self._settings, memory_limit=memory_limit)
        for decoder in self.all():
            decoder.configure(memory_limit)

    def kill(self) -> None:
        for decoder in self.all():
            decoder.kill()

    def close(self) -> None:
        for decoder in self.all():
            decoder.close()
