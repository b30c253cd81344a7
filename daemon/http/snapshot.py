"""What the status page and /metrics both read outside the queue: GPU memory, model names, the work now."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.http.context import DaemonView


def gpu_memory() -> dict[str, int]:
    """Return the bytes of each CUDA card this process holds (torch's reserved memory: what the
    card lost to subwatch), only for cards already in use: never the first to touch CUDA."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_initialized():
            return {}
        return {f"cuda:{i}": int(torch.cuda.memory_reserved(i)) for i in range(torch.cuda.device_count())}
    except Exception:  # a broken driver must not break the page
        return {}


def model_name(spec: str) -> str:
    """Given `model:` as configured, return the name to show: a name as it is, a file or folder by
    its own name (paths stay out of metric labels and off a phone's screen)."""
    if "/" in spec or os.sep in spec:
        return Path(spec).name or spec
    return spec


@dataclass(frozen=True)
class Working:
    """One worker's batch in the model now."""

    device: str
    job_ids: tuple[int, ...]
    label: str  # "Movie.mkv", or "2 files: A.mkv, B.mkv"
    progress: float | None  # 0..1
    realtime: float | None  # seconds of media per second so far


def working(daemon: DaemonView) -> list[Working]:
    """Return what each worker is transcribing now (loading a model or serving Bazarr included)."""
    now = time.monotonic()
    out = []
    for device, activity in daemon.activities():
        current, progress = activity.current, activity.progress
        seconds, since = activity.seconds, activity.since
        if not current:
            continue
        realtime = None
        if progress and seconds and now > since:
            realtime = progress * seconds / (now - since)
        out.append(Working(device, tuple(activity.job_ids), current, progress, realtime))
    return out
