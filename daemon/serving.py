"""Which jobs of a shared queue this node takes: those of its folders that it can serve now.

On a PostgreSQL queue several hosts claim from one table, and a host must not take a job it cannot
finish, since another host could. A folder is served here only while all of this holds:
- it is one of this host's watched folders (or `/` for files hooks queue outside them, with
  http.accept_unwatched), its path mapped to the queue's form by node.path_map;
- one of its devices is usable here: a folder with `device: cuda` is left to the hosts with a GPU;
- its model is here or can be fetched by name (a model folder that is missing is not);
- its folder is there now: an unmounted share is left to the hosts that still see it, and taken
  again when it is back (checked every few seconds).
Each change is one journal line. A SQLite queue is this daemon's alone: it takes every job, as
before, and skips one whose folder it no longer watches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config
from daemon.options import FolderRules
from daemon.text import printable

log = logging.getLogger("subwatch")

RECHECK_SECONDS = 5.0  # how often the folders' presence is looked at again


@dataclass(frozen=True)
class Refusal:
    """A folder this node leaves to others for as long as its config stands, and why."""

    folder: Path
    reason: str


def device_problem(devices: tuple[str, ...]) -> str | None:
    """Given a folder's devices, return why none is usable on this host, or None if one is."""
    from daemon.transcribe import DeviceUnavailable, resolve_device

    problems = []
    for device in devices:
        try:
            resolve_device(device)
            return None
        except DeviceUnavailable as exc:
            problems.append(str(exc))
    return "; ".join(problems) or "it lists no device"


def model_problem(model: str, models_dir: Path) -> str | None:
    """Given a folder's model, return why it is not available on this host, or None if it is."""
    from daemon.transcribe.models import ModelNotFound, resolve

    try:
        resolve(model, models_dir)
    except ModelNotFound as exc:
        return str(exc)
    return None


def refusal(rules: FolderRules, models_dir: Path) -> Refusal | None:
    """Given a folder's rules, return why this host cannot transcribe its files, or None if it can."""
    why = device_problem(rules.devices) or model_problem(rules.transcribe.model, models_dir)
    return None if why is None else Refusal(rules.path, why)


class Serving:
    """Tells the queue which folders' jobs this node claims (`serve`), as config and mounts change."""

    def __init__(self, serve: Callable[[list[Path] | None], None],
                 refuse: Callable[[FolderRules, Path], Refusal | None] = refusal) -> None:
        self._serve = serve  # JobQueue.serve
        self._refuse = refuse
        self._able: list[Path] | None = None  # the folders this host can serve; None: every job
        self._present: list[Path] | None = None  # of those, the ones there at the last look
        self._looked = 0.0

    def update(self, config: Config) -> None:
        """Given the config now in force, decide the folders this host can serve, then look at them."""
        if config.database is None:
            self._able = self._present = None
            self._serve(None)
            return
        able = []
        rules = list(config.folders) + ([config.unwatched] if config.unwatched is not None else [])
        for folder in rules:
            refused = self._refuse(folder, config.models_dir)
            if refused is None:
                able.append(folder.path)
            else:
                log.warning("%s: this node leaves its files to the other nodes: %s",
                            printable(str(folder.path)), refused.reason)
        self._able, self._present = able, None
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Look again (at most every RECHECK_SECONDS unless `force`) at which of the folders are there,
        and serve those; a folder that went or came back is one journal line."""
        now = time.monotonic()
        if self._able is None or (not force and now - self._looked < RECHECK_SECONDS):
            return
        self._looked = now
        present = [folder for folder in self._able if folder.is_dir()]
        if present == self._present:
            return
        before = set(self._present if self._present is not None else self._able)
        for folder in self._able:
            if folder in before and folder not in present:
                log.warning("%s is not there (a share not mounted?): this node leaves its files to the "
                            "other nodes until it is back", printable(str(folder)))
            elif folder not in before and folder in present:
                log.info("%s is back: this node takes its files again", printable(str(folder)))
        self._present = present
        self._serve(present)

    @property
    def folders(self) -> list[Path] | None:
        """The folders whose jobs this node claims now; None for every job (SQLite)."""
        return None if self._present is None else list(self._present)
