"""The frozen result of a config, and the tables and error it is checked with."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daemon.datatypes import MemoryLimit
from daemon.languages import WHISPER_CODES
from daemon.notify import NotifyRules
from daemon.options import FolderRules
from daemon.pathmap import PathMap, map_prefix
from daemon.queue.schema import LEASE_SECONDS
from daemon.transcribe.engines import DEFAULT_ENGINE

# Whisper's own tables, copied so that loading a config does not import torch.
# tests/test_config.py asserts they equal whisper.available_models() / tokenizer.LANGUAGES.
# Whisper's own tables, copied so that loading a config does not import torch.
# tests/test_config.py asserts they equal whisper.available_models() / tokenizer.LANGUAGES.
WHISPER_MODELS = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
)
WHISPER_LANGUAGES = WHISPER_CODES  # the one language table: daemon/languages.py
FORMATS = ("srt", "vtt", "txt", "json")
MIN_KEY_CHARS = 32  # http.api_key: guessing one of 32 random characters is out of reach
LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda|cuda:[0-9]+")
# Units of gpu_memory_limit; one letter (20G) means binary, as in systemd's MemoryMax= and docker.
MEMORY_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_MEMORY = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(%|[a-z]+)?\s*", re.IGNORECASE)


class ConfigError(Exception):
    """The config file is missing, unreadable, not YAML, or breaks the contract.

    `problems` holds one line per problem; str() gives them all, prefixed by the file.
    """

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        head = f"{path}: " if len(problems) == 1 else f"{path}: {len(problems)} problems:\n  "
        super().__init__(head + "\n  ".join(problems))


# ---------------------------------------------------------------- the frozen result


@dataclass(frozen=True)
class NodeRules:
    """The `node:` section: this daemon's name in the queue, how long its claims' leases last, and
    where the paths the shared queue stores are on this host."""

    name: str = field(default_factory=socket.gethostname)  # unique per running daemon
    lease_seconds: float = LEASE_SECONDS  # lapsed (the daemon died or hung): its jobs go back
    path_map: PathMap = PathMap()  # (as the database stores it, as it is here); used with a database


@dataclass(frozen=True)
class Config:
    source: Path  # the file this was read from
    state_dir: Path
    models_dir: Path
    log_level: str
    max_attempts: int
    unload_after_seconds: float
    rescan_minutes: float
    notify: NotifyRules
    folders: tuple[FolderRules, ...]
    gpu_memory_limit: MemoryLimit | None = None  # None: the whole card
    engine: str = DEFAULT_ENGINE  # auto, torch, ctranslate2[-int8-encoder|-int8] (daemon.transcribe.engines)
    http: HttpRules | None = None  # None: no listener
    media_servers: tuple[MediaServer, ...] = ()
    # The `defaults` as the rules of a file outside every folder, when http.accept_unwatched lets
    # hooks queue such files; None otherwise.
    unwatched: FolderRules | None = None

    # The shared queue's postgresql:// URL (its password, if any, inside); None: the SQLite file.
    database: Secret | None = None
    node: NodeRules = field(default_factory=NodeRules)

    @property
    def db_path(self) -> Path:
        """The SQLite queue's file (used only when `database` is None)."""
        return self.state_dir / "jobs.sqlite3"

    @property
    def queue_at(self) -> Path | str:
        """Where the job queue lives: the PostgreSQL URL, or the SQLite file."""
        return self.database.reveal() if self.database is not None else self.db_path

    @property
    def queue_paths(self) -> PathMap:
        """How the queue's stored paths map to this host's: node.path_map on a shared database; a
        SQLite file is this host's alone and stores its paths as they are."""
        return self.node.path_map if self.database is not None else PathMap()

    @property
    def queue_shown(self) -> str:
        """Where the job queue lives, for logs and messages: the URL without its password, or the file."""
        from daemon.queue.engines import shown_url

        return shown_url(self.database.reveal()) if self.database is not None else str(self.db_path)

    @property
    def work_dir(self) -> Path:
        """Where decoded audio and uploads wait on disk, in files removed as soon as they are read:
        beside the queue, not /tmp, which is often RAM (tmpfs)."""
        return self.state_dir / "work"

    def folder_for(self, path: Path) -> FolderRules | None:
        """Given a media path, return the rules of the most specific watched folder holding it (or,
        outside every folder, the `defaults` when http.accept_unwatched is set; else None)."""
        matches = [f for f in self.folders if path == f.path or f.path in path.parents]
        return max(matches, key=lambda f: len(f.path.parts), default=self.unwatched)

    def watched_folder_for(self, path: Path) -> FolderRules | None:
        """Given a media path, return the rules of the most specific watched folder holding it, or None."""
        found = self.folder_for(path)
        return None if found is self.unwatched else found


class Secret:
    """A key or token from the config: its text is `reveal()`ed where it is sent, never printed.

    str() and repr() give "***", so a Config in a log line or a traceback does not show it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HttpRules:
    """The `http:` section: where the daemon listens and what its hooks accept."""

    host: str = "127.0.0.1"
    port: int = 9000
    api_key: Secret | None = None  # None: no key asked (only allowed on a loopback address)
    path_map: tuple[tuple[str, str], ...] = ()  # (as other programs see it, as it is here)
    accept_unwatched: bool = False  # hooks may queue files outside every folder (with `defaults`)
    asr_requires_key: bool = False  # Bazarr's /asr and /detect-language ask for the key too
    metrics_without_key: bool = False  # Prometheus may scrape /metrics without the key
    allowed_hosts: tuple[str, ...] = ()  # Host header names beside loopback, the listen address, this host
    max_audio_hours: float = 4.0  # the longest audio one Bazarr request may carry
    max_queued_audio_hours: float = 8.0  # audio waiting for a worker; past it requests get 503
    decode_slots: int = 2  # requests decoded (ffmpeg) at once

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the listener."""
        return is_loopback(self.host)

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MediaServer:
    """One entry of `media_servers:`: a Jellyfin, Emby or Plex server told of new sidecars."""

    kind: Literal["jellyfin", "emby", "plex"]
    url: str  # without a trailing slash
    token: Secret = field(default_factory=lambda: Secret(""))
    path_map: tuple[tuple[str, str], ...] = ()  # (as it is here, as that server sees it)

    @property
    def label(self) -> str:
        """How logs and the job records name it (never with its token)."""
        return f"{self.kind} {self.url}"


def map_path(path: str, path_map: tuple[tuple[str, str], ...]) -> str:
    """Given a path and (from, to) prefixes, return it with the longest matching prefix replaced
    (whole path components only: {"/tv": "/srv/tv"} maps /tv/a.mkv, not /tvshows)."""
    return map_prefix(path, path_map)


def is_loopback(host: str) -> bool:
    """Given a listen host, return whether only this machine can reach it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
