"""Whisper models: loaded once per (model, device) and shared, unloaded when idle or to make room.

`ModelStore` keeps each CUDA card within its memory limit: it estimates what
loading a model takes (`load_estimate`), chooses the least recently used idle
models to unload (`choose_evictions`), and hands each model the limit of its
card (`memory_limit_of`) for the engine to size batches within.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from daemon.datatypes import MemoryLimit
from daemon.engine import cuda_index, prepare_model
from daemon.transcribe import models
from daemon.transcribe.engines import DEFAULT_ENGINE, engine_for, load_ct2
from daemon.transcribe.models import ModelNotFound

if TYPE_CHECKING:
    from whisper.model import Whisper

log = logging.getLogger("subwatch.transcribe")  # one logger for the stage: its name is in journal lines


def load_model(spec: str, models_dir: Path, device: str, engine: str = DEFAULT_ENGINE) -> Whisper:
    """Given `model:` as configured (name, .pt file or model folder), return the loaded model on `device`,
    for the engine that decodes there (`engine_for`): openai-whisper's, or its CTranslate2 conversion.

    Raise ModelNotFound, saying where we looked and how to provide the model,
    if it is neither readable nor downloadable.
    """
    source = models.resolve(spec, models_dir)
    try:
        chosen = engine_for(engine, device)
        if chosen.startswith("ctranslate2"):
            return load_ct2(source, models_dir, device, chosen)  # type: ignore[return-value]
        return models.load(source, models_dir, device)
    except ModelNotFound:
        raise
    except Exception as exc:  # urllib, SSL, checksum and disk errors all mean the same to the user
        if _out_of_memory(exc) or source.kind != "name":
            raise  # found, but it does not fit (or a bug): not a missing model
        target = source.path
        raise ModelNotFound(
            f"model {spec!r} is not in {models_dir} (looked for {target}) and downloading it failed: "
            f"{exc}. Copy {target.name if target else 'the checkpoint'} there from a machine with "
            f"internet access (~/.cache/whisper), or set `model:` to a .pt file or a model folder"
        ) from exc


# Parameters of the published models, in millions, to estimate memory before one is downloaded.
MODEL_PARAMETERS = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large": 1550, "turbo": 809}


def load_estimate(spec: str, models_dir: Path) -> int:
    """Given a model spec, return about how many bytes of GPU memory loading it takes at its peak.

    whisper.load_model puts the checkpoint (fp16 in the published files) on the
    device and then builds an fp32 copy of the model there: about three times
    the file's size, or 6 bytes per parameter. 0 if the spec is unknown.
    """
    try:
        source = models.resolve(spec, models_dir)
    except ModelNotFound:
        return 0
    on_disk = models.source_bytes(source)
    if on_disk or source.kind != "name":
        return 3 * on_disk
    family = "turbo" if "turbo" in spec else spec.split(".")[0].split("-")[0]
    return MODEL_PARAMETERS.get(family, 0) * 10**6 * 6


K = TypeVar("K", bound=Hashable)


def model_bytes(model: Any) -> int:
    """Given a loaded model, return the bytes its weights and buffers take."""
    if hasattr(model, "weight_bytes"):  # a CTranslate2 model: no torch tensors to count
        return int(model.weight_bytes)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def choose_evictions(idle: Sequence[tuple[K, int]], allocated: int, needed: int, limit: int) -> list[K]:
    """Given the idle models on a card (least recently used first, with their sizes in bytes), the bytes
    allocated there, the bytes a new model needs and the card's limit, return the models to unload.

    The oldest go first, only as many as it takes for `allocated + needed` to
    fit the limit; all of them if it does not fit even then.
    """
    evict: list[K] = []
    for key, size in idle:
        if allocated + needed <= limit:
            break
        evict.append(key)
        allocated -= size
    return evict


@dataclass
class _Loaded:
    model: Any
    size: int  # bytes of its weights
    last_used: float  # monotonic time it was last taken or given back
    users: int = 0  # workers transcribing with it now; never unloaded while above 0


@dataclass(frozen=True)
class LoadedModel:
    """A model the store holds, as the status page and /metrics show it."""

    spec: str  # as configured: a name, a .pt file or a model folder
    device: str  # resolved: cpu, cuda:0, …
    engine: str  # torch or ctranslate2
    size: int  # bytes of its weights
    users: int  # workers transcribing with it now
    idle_seconds: float  # since it was last taken or given back


class ModelStore:
    """Loads each (model, device) once and keeps it for later jobs; unloads idle ones.

    Loading turbo takes seconds and gigabytes, so jobs share one instance. A
    model unused for `unload_after_seconds` is dropped so the GPU is free for
    other work on the server. With a `memory_limit`, each CUDA card is capped
    (the caching allocator enforces it) and loading a model unloads the least
    recently used idle models on that card until it fits, so several folders'
    models share it.

    The store is the one keeper of each card's limit (`memory_limit_on`). A
    model it hands out can be asked for its card's limit (`memory_limit_of`),
    which transcription passes to the engine to size its batches within it.
    """

    def __init__(
        self,
        models_dir: Path,
        unload_after_seconds: float,
        memory_limit: MemoryLimit | None = None,
        engine: str = DEFAULT_ENGINE,
    ) -> None:
        self.models_dir = models_dir
        self.engine = engine  # auto, torch or ctranslate2 (transcribe.engines)
        self.unload_after_seconds = unload_after_seconds
        self.memory_limit = memory_limit
        self._models: dict[tuple[str, str], _Loaded] = {}
        self._limits: dict[str, int] = {}  # CUDA device → bytes it is capped at
        self._lock = threading.Lock()

    def get(self, spec: str, device: str) -> Whisper:
        """Given a model spec and a resolved device, return the loaded model (fp16 weights on a GPU).

        The model is not held: use `use` while transcribing with it.
        """
        with self.use(spec, device) as model:
            return model

    @contextmanager
    def use(self, spec: str, device: str) -> Iterator[Whisper]:
        """Given a model spec and a resolved device, load the model if needed and hold it while in the block.

        A held model is never unloaded (idle or to make room). Raise
        ModelNotFound if it cannot be found, OutOfMemoryError if it does not
        fit on the card even with every idle model unloaded.
        """
        key = (spec, device)
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                entry = self._models[key] = self._load(spec, device)
            entry.users += 1
            entry.last_used = time.monotonic()
        try:
            yield entry.model
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = time.monotonic()

    def memory_limit_on(self, device: str) -> int | None:
        """Given a resolved device, return the bytes this process may use there; None if it is not capped."""
        return self._limits.get(device)

    def set_memory_limit(self, memory_limit: MemoryLimit | None) -> None:
        """Apply a new limit (a reloaded config) to the cards already in use; None lifts it."""
        with self._lock:
            self.memory_limit = memory_limit
            devices, self._limits = list(self._limits), {}
            for device in devices:
                if memory_limit is None:
                    _cap_card(device, None)
                else:
                    self._limit_for(device)

    def _load(self, spec: str, device: str) -> _Loaded:
        import torch

        limit = self._limit_for(device)
        if limit is not None:
            self._make_room(device, load_estimate(spec, self.models_dir), limit)
        started = time.monotonic()
        try:
            model = prepare_model(load_model(spec, self.models_dir, device, self.engine))
        except torch.cuda.OutOfMemoryError:
            idle = [key for key, _ in self._idle_on(device)]
            if limit is None or not self._unload(idle, f"to load {spec}"):
                raise
            model = None  # retried below, once the failed attempt's tensors are freed
        if model is None:
            _free_gpu_cache()
            model = prepare_model(load_model(spec, self.models_dir, device, self.engine))
        size = model_bytes(model)
        log.info("loaded model %s on %s (%s) in %.1f s (%.0f MiB)", spec, device,
                 engine_for(self.engine, device), time.monotonic() - started, size / 2**20)
        model.subwatch_memory_limit = partial(self.memory_limit_on, device)  # read by memory_limit_of
        return _Loaded(model, size, time.monotonic())

    def _limit_for(self, device: str) -> int | None:
        """Return the byte limit of a CUDA device, capping it on first use; None on the CPU or without one."""
        if self.memory_limit is None or not device.startswith("cuda"):
            return None
        if device not in self._limits:
            import torch

            total = torch.cuda.get_device_properties(cuda_index(device)).total_memory
            self._limits[device] = _cap_card(device, self.memory_limit.on_card(total))
            log.info("gpu_memory_limit: subwatch uses at most %.1f of the %.1f GiB of %s",
                     self._limits[device] / 2**30, total / 2**30, device)
        return self._limits[device]

    def _idle_on(self, device: str) -> list[tuple[tuple[str, str], int]]:
        """Return the models on `device` that no worker holds, least recently used first, with sizes."""
        idle = [(key, e) for key, e in self._models.items() if key[1] == device and e.users == 0]
        return [(key, e.size) for key, e in sorted(idle, key=lambda item: item[1].last_used)]

    def _make_room(self, device: str, needed: int, limit: int) -> None:
        import torch

        allocated = torch.cuda.memory_allocated(cuda_index(device))
        self._unload(choose_evictions(self._idle_on(device), allocated, needed, limit), "to make room")

    def _unload(self, keys: list[tuple[str, str]], why: str) -> bool:
        """Drop the given models; return True if any was dropped."""
        for key in keys:
            del self._models[key]
        if keys:
            gc.collect()
            _free_gpu_cache()
            log.info("unloaded model(s) %s %s within gpu_memory_limit", ", ".join(k[0] for k in keys), why)
        return bool(keys)

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Drop models no worker holds that were unused for unload_after_seconds; return the specs dropped."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for key, entry in list(self._models.items()):
                if entry.users == 0 and now - entry.last_used >= self.unload_after_seconds:
                    del self._models[key]
                    dropped.append(key[0])
        if dropped:
            _free_gpu_cache()
            log.info("unloaded idle model(s) %s", ", ".join(dropped))
        return dropped

    def loaded(self) -> list[LoadedModel]:
        """Return the models loaded now (a snapshot for the status page and /metrics), by spec and device."""
        now = time.monotonic()
        with self._lock:
            return [LoadedModel(spec, device, engine_for(self.engine, device), e.size, e.users,
                                now - e.last_used) for (spec, device), e in sorted(self._models.items())]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        _free_gpu_cache()


def memory_limit_of(model: Whisper) -> int | None:
    """Given a model, return the bytes this process may use on its card, as the ModelStore that loaded
    it keeps them; None if the card is not capped or the model comes from elsewhere."""
    limit_on_its_card = getattr(model, "subwatch_memory_limit", None)
    return None if limit_on_its_card is None else limit_on_its_card()


def _cap_card(device: str, limit: int | None) -> int:
    """Given a CUDA device and a number of bytes, keep this process within them there; return the limit.

    The caching allocator enforces it: an allocation beyond it raises
    OutOfMemoryError as a full card would, so decoding halves its batch, and
    the engine sizes batches within it (EngineOptions.memory_limit). None lifts the limit.
    """
    import torch

    index = cuda_index(device)
    total = torch.cuda.get_device_properties(index).total_memory
    if limit is None:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        return total
    limit = max(1, min(limit, total))
    torch.cuda.set_per_process_memory_fraction(limit / total, index)
    return limit


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
