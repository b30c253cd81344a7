"""Configuration: one YAML file, validated once into frozen dataclasses.

pydantic checks the shape; this module turns its errors into lines that name
the file and the key path (`folders[0].langauge`) and say what is allowed,
all of them at once, so a user fixes a config in one go. The folder and notify
keys have no defaults here: the ones a user wrote go to daemon.options, which
builds each stage's options from them, and a key not written takes its stage's
default there. The daemon-wide keys (state_dir, log_level, …) have theirs in
`_ConfigModel`. Everything else in the daemon receives `Config` / `FolderRules`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.datatypes import MemoryLimit
from daemon.languages import WHISPER_CODES, from_any
from daemon.notify import NotifyRules
from daemon.options import FolderRules, build_notify, build_rules
from daemon.queue.schema import MAX_ATTEMPTS
from daemon.transcribe.engines import DEFAULT_ENGINE
from daemon.transcribe.models import is_model_path  # no torch: config stays instant

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
    engine: str = DEFAULT_ENGINE  # auto, torch, ctranslate2, ctranslate2-int8 (daemon.transcribe.engines)
    http: HttpRules | None = None  # None: no listener
    media_servers: tuple[MediaServer, ...] = ()
    # The `defaults` as the rules of a file outside every folder, when http.accept_unwatched lets
    # hooks queue such files; None otherwise.
    unwatched: FolderRules | None = None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

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
    """Given a path and (from, to) prefixes, return it with the longest matching prefix replaced.

    A prefix matches whole path components only: {"/tv": "/srv/tv"} maps /tv/a.mkv, not /tvshows.
    """
    best = None
    for source, target in path_map:
        stem = source.rstrip("/") or "/"
        if path == stem or path.startswith(stem.rstrip("/") + "/"):
            if best is None or len(stem) > len(best[0]):
                best = (stem, target)
    if best is None:
        return path
    stem, target = best
    rest = path[len(stem):].lstrip("/") if stem != "/" else path.lstrip("/")
    target = target.rstrip("/") or "/"
    if not rest:
        return target
    return f"{target}/{rest}" if target != "/" else f"/{rest}"


# ---------------------------------------------------------------- the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


# No defaults in the schema: a key not written is left out (`exclude_unset`), and daemon.options
# gives it its stage's default. A None default here only means "not written".


class _FolderNotifyModel(_Strict):
    urls: list[str] | None = None
    replace: bool | None = None


class _RulesModel(_Strict):
    """Keys allowed both under `defaults` and in each folder; None = not set here."""

    model: str | None = None
    language: str | None = None
    task: Literal["transcribe", "translate"] | None = None
    prompt: str | None = None
    beam_size: int | None = Field(default=None, ge=1, le=16)
    device: str | list[str] | None = None
    formats: list[Literal["srt", "vtt", "txt", "json"]] | None = Field(default=None, min_length=1)
    settle_seconds: float | None = Field(default=None, ge=0)
    recursive: bool | None = None
    poll: bool | Literal["auto"] | None = None
    poll_interval: float | None = Field(default=None, gt=0)
    include: list[str] | None = None
    exclude: list[str] | None = None
    min_duration_seconds: float | None = Field(default=None, ge=0)
    skip_if_embedded: bool | None = None
    audio_language: str | None = None
    max_hours: float | None = Field(default=None, gt=0)
    max_line_chars: int | None = Field(default=None, ge=10, le=200)
    max_lines: int | None = Field(default=None, ge=1, le=4)
    lang_code: Literal["iso639-1", "iso639-2"] | None = None
    sdh: bool | None = None
    forced: bool | None = None
    name_template: str | None = None
    notify: _FolderNotifyModel | None = None

    @field_validator("model")
    @classmethod
    def _model_known(cls, value: str | None) -> str | None:
        if value is None or value in WHISPER_MODELS or is_model_path(value):
            return value
        raise ValueError(
            f"unknown model {value!r}{_did_you_mean(value, WHISPER_MODELS)}; use one of "
            f"{', '.join(WHISPER_MODELS)}, or a path to a .pt checkpoint or a faster-whisper / "
            "Hugging Face model folder"
        )

    @field_validator("language")
    @classmethod
    def _language_known(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or value in WHISPER_LANGUAGES:
            return value
        raise ValueError(
            f"unknown language {value!r}{_language_hint(value)}; use an ISO 639-1 "
            "code Whisper knows (en, de, ja, …) or auto"
        )

    @field_validator("poll", mode="before")
    @classmethod
    def _poll_form(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"got {value!r}; use true, false or auto")

    @field_validator("device", mode="before")
    @classmethod
    def _device_form(cls, value: Any) -> Any:
        return value if value is None else list(parse_devices(value))

    @field_validator("name_template")
    @classmethod
    def _template_stays_beside(cls, value: str | None) -> str | None:
        if value is not None and (".." in Path(value).parts or value.startswith("/")):
            raise ValueError("name_template must stay inside the video's folder (no '..', no absolute path)")
        return value


class _FolderModel(_RulesModel):
    path: str
    create_if_missing: bool | None = None


class _NotifyModel(_Strict):
    urls: list[str] | None = None
    on: list[Literal["done", "failed", "digest"]] | None = None
    burst: int | None = Field(default=None, ge=1)
    window_seconds: float | None = Field(default=None, gt=0)


def _check_path_map(value: dict[str, str] | None) -> dict[str, str] | None:
    for source, target in (value or {}).items():
        if not source.startswith("/") or not target.startswith("/"):
            raise ValueError(f"map absolute paths to absolute paths; got {source!r}: {target!r}")
    return value


class _HttpModel(_Strict):
    listen: str | None = None
    api_key: str | None = None
    path_map: dict[str, str] | None = None
    accept_unwatched: bool | None = None
    asr_requires_key: bool | None = None
    metrics_without_key: bool | None = None
    allowed_hosts: list[str] | None = None
    max_audio_hours: float | None = Field(default=None, gt=0, le=24)
    max_queued_audio_hours: float | None = Field(default=None, gt=0)
    decode_slots: int | None = Field(default=None, ge=1, le=16)

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("api_key")
    @classmethod
    def _key_form(cls, value: str | None) -> str | None:
        # Never echo the key: it is a secret. Printable ASCII without spaces, since a header value
        # loses its outer spaces on the way and a key of 16 spaces is no key.
        if value is not None and len(value) < MIN_KEY_CHARS:
            raise ValueError("the key is too short; use 32 or more random characters "
                             "(e.g. the output of `openssl rand -hex 24`)")
        if value is not None and not all("!" <= c <= "~" for c in value):
            raise ValueError("the key may hold only printable ASCII characters without spaces; "
                             "use the output of `openssl rand -hex 24`")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_form(cls, value: list[str] | None) -> list[str] | None:
        for host in value or []:
            if not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+", host):
                raise ValueError(f"{host!r} is not a host name or address (no port, no scheme): "
                                 "e.g. subwatch.lan or 192.168.1.20")
        return value

    @field_validator("path_map")
    @classmethod
    def _path_map_form(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_path_map(value)


class _MediaServerModel(_Strict):
    kind: Literal["jellyfin", "emby", "plex"]
    url: str
    token: str
    path_map: dict[str, str] | None = None

    @field_validator("url")
    @classmethod
    def _url_form(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.query or parts.fragment or "@" in parts.netloc:  # not echoed: it may hold a token
            raise ValueError("the address takes no query, fragment or user: put the token under `token`")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"got {value!r}; write the server's address as http://HOST:PORT "
                             "(https:// for TLS), e.g. http://127.0.0.1:8096")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"got {value!r}; the port must be a number from 1 to 65535") from None
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the token is empty; copy the server's API key (Jellyfin/Emby: "
                             "Dashboard > API Keys; Plex: X-Plex-Token)")
        return value

    @field_validator("path_map")
    @classmethod
    def _path_map_form(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_path_map(value)


class _ConfigModel(_Strict):
    state_dir: str = "/var/lib/subwatch"
    models_dir: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1)
    unload_after_seconds: float = Field(default=300.0, ge=0)
    rescan_minutes: float = Field(default=60.0, ge=0)
    gpu_memory_limit: Any = None
    engine: Literal["auto", "torch", "ctranslate2", "ctranslate2-int8"] = DEFAULT_ENGINE
    defaults: _RulesModel = Field(default_factory=_RulesModel)
    notify: _NotifyModel = Field(default_factory=_NotifyModel)
    folders: list[_FolderModel] = Field(min_length=1)
    http: _HttpModel | None = None
    media_servers: list[_MediaServerModel] = Field(default_factory=list)

    @field_validator("gpu_memory_limit", mode="before")
    @classmethod
    def _memory_limit_form(cls, value: Any) -> Any:
        return parse_memory_limit(value)


def parse_devices(value: Any) -> tuple[str, ...]:
    """Given the `device` value of a folder (one device or a list of them), return its devices.

    Raise ValueError saying what is allowed if a device is unknown, the list is
    empty or names a device twice.
    """
    if isinstance(value, str):
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"unknown device {value!r}; use {DEVICE_FORMS}")
        return (value,)
    if not isinstance(value, list | tuple):
        raise ValueError(f"got {value!r}; use {DEVICE_FORMS}, or a list of them")
    if not value:
        raise ValueError(f"the list is empty; name at least one device ({DEVICE_FORMS})")
    for item in value:
        if not isinstance(item, str) or not _DEVICE.fullmatch(item):
            raise ValueError(f"unknown device {item!r} in the list; use {DEVICE_FORMS}")
    twice = [device for index, device in enumerate(value) if device in value[:index]]
    if twice:
        raise ValueError(f"device {twice[0]!r} is listed twice")
    return tuple(value)


def parse_listen(value: str) -> tuple[str, int]:
    """Given `http.listen` as written (127.0.0.1:9000, 0.0.0.0:9000, [::1]:9000, localhost:9000),
    return (host, port). Raise ValueError saying how to write it."""
    how = "write host:port, e.g. 127.0.0.1:9000, 0.0.0.0:9000 for every address, or [::1]:9000"
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:([0-9]+)|([^:\s\[\]/]+):([0-9]+)", value.strip())
    if match is None:
        raise ValueError(f"got {value!r}; {how}")
    host, port = (match[1], match[2]) if match[1] else (match[3], match[4])
    if match[1]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"got {value!r}: {host} is not an IPv6 address; {how}") from None
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"got {value!r}: the port must be from 1 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Given a listen host, return whether only this machine can reach it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_memory_limit(value: Any) -> MemoryLimit | None:
    """Given `gpu_memory_limit` as written (20GiB, 20000MB, 0.5, 50%), return it, or None if unset.

    A bare number is a fraction of each card. Raise ValueError saying how to
    write it if it is neither a size with a unit nor a fraction in (0, 1].
    """
    how = "write a size with its unit (20GiB, 20000MB) or a fraction of the card (0.5)"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {value!r}; {how}")
    match = _MEMORY.fullmatch(str(value))
    unit = (match[2] or "").lower() if match else ""
    if match is None or (unit and unit != "%" and unit not in MEMORY_UNITS):
        raise ValueError(f"got {value!r}; {how}")
    number = float(match[1])
    if unit in ("", "%"):
        fraction = number / 100 if unit == "%" else number
        if not 0 < fraction <= 1:
            raise ValueError(
                f"got {value!r}: a number without a unit is a fraction of the card, above 0 and at most 1; "
                "for a size add its unit (20GiB, 20000MB)"
            )
        return MemoryLimit(fraction=fraction)
    size = int(number * MEMORY_UNITS[unit])
    if size <= 0:
        raise ValueError(f"got {value!r}; the limit must be more than 0 bytes")
    return MemoryLimit(bytes=size)


# ---------------------------------------------------------------- loading


def load_config(path: Path) -> Config:
    """Given the path of a YAML config, return the validated Config.

    Raise ConfigError listing every problem, each with its key path, if the file
    cannot be read, is not YAML, or breaks the schema.
    """
    raw = _read_yaml(path)
    try:
        parsed = _ConfigModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(error) for error in exc.errors()]) from None
    return _freeze(parsed, path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, ["no such file; copy config.example.yaml there and edit it"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read it: {exc}"]) from None
    try:
        raw = yaml.load(text, Loader=_Yaml12BoolLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}not valid YAML: {problem}"]) from None
    if raw is None:
        raise ConfigError(path, ["the file is empty; at least `folders:` is required"])
    if not isinstance(raw, dict):
        raise ConfigError(path, ["the top level must be a mapping of keys (state_dir, folders, …)"])
    return raw


class _Yaml12BoolLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.

    YAML 1.1 reads `on:` (our notify key), `yes`, `no` and `off` as booleans,
    which turns `notify: {on: [done]}` into a mapping keyed by True.
    """


_Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _freeze(parsed: _ConfigModel, source: Path) -> Config:
    base = source.resolve().parent  # relative paths are relative to the config file
    state_dir = _absolute(parsed.state_dir, base)
    defaults = _written(parsed.defaults)
    problems = _null_problems("defaults", defaults) + _null_problems("notify", _written(parsed.notify))
    for index, folder in enumerate(parsed.folders):
        problems += _null_problems(f"folders[{index}]", _written(folder))
    if problems:
        raise ConfigError(source, problems)
    folders = tuple(_folder(f, defaults, base) for f in parsed.folders)
    _check_duplicate_folders(folders, source)
    http = _http(parsed.http, source)
    unwatched = None
    if http is not None and http.accept_unwatched:
        unwatched = _folder(_FolderModel(path="/"), defaults, base)
    return Config(
        source=source,
        state_dir=state_dir,
        models_dir=_absolute(parsed.models_dir, base) if parsed.models_dir else state_dir / "models",
        log_level=parsed.log_level,
        max_attempts=parsed.max_attempts,
        unload_after_seconds=parsed.unload_after_seconds,
        rescan_minutes=parsed.rescan_minutes,
        gpu_memory_limit=parsed.gpu_memory_limit,
        engine=parsed.engine,
        notify=build_notify(_written(parsed.notify)),
        folders=folders,
        http=http,
        media_servers=tuple(_media_server(m) for m in parsed.media_servers),
        unwatched=unwatched,
    )


def _http(model: _HttpModel | None, source: Path) -> HttpRules | None:
    if model is None:
        return None
    written = _written(model)
    problems = _null_problems("http", {k: v for k, v in written.items() if k != "api_key"})
    if problems:
        raise ConfigError(source, problems)
    if "listen" in written:
        written["host"], written["port"] = parse_listen(written.pop("listen"))
    if written.get("api_key") is not None:
        written["api_key"] = Secret(written["api_key"])
    if "path_map" in written:
        written["path_map"] = tuple(written["path_map"].items())
    if "allowed_hosts" in written:
        written["allowed_hosts"] = tuple(h.strip("[]").lower() for h in written["allowed_hosts"])
    rules = HttpRules(**written)
    if rules.api_key is None and not is_loopback(rules.host):
        raise ConfigError(source, [
            f"at 'http.api_key': required when http.listen is not a loopback address ({rules.listen}): "
            "anyone who reaches it could queue files; set 32+ random characters "
            "(e.g. the output of `openssl rand -hex 24`)"])
    return rules


def _media_server(model: _MediaServerModel) -> MediaServer:
    return MediaServer(kind=model.kind, url=model.url, token=Secret(model.token),
                       path_map=tuple((model.path_map or {}).items()))


# Keys where an explicit `null` means something (no prompt, no template, …).
NULLABLE = frozenset({"prompt", "audio_language", "name_template", "notify"})


def _null_problems(where: str, written: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in written.items():
        if isinstance(value, dict):
            problems += _null_problems(f"{where}.{key}", value)
        elif value is None and key not in NULLABLE:
            problems.append(f"at '{where}.{key}': must not be empty (remove the line to use the default)")
    return problems


def _folder(model: _FolderModel, defaults: Mapping[str, Any], base: Path) -> FolderRules:
    written = {**defaults, **_written(model)}
    del written["path"]
    if is_model_path(written.get("model", "")):  # a .pt file or a model folder, relative to the config file
        written["model"] = str(_absolute(written["model"], base))
    return build_rules(_absolute(model.path, base), written)


def _written(model: BaseModel) -> dict[str, Any]:
    """Return only the keys the user actually wrote (so a folder inherits the rest), as plain values."""
    return model.model_dump(exclude_unset=True)


def validate_rules(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Given folder keys from elsewhere than a file (`subwatch transcribe`'s flags), return them
    validated as a config's would be. Raise RulesError for the first problem."""
    try:
        return _written(_RulesModel(**keys))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RulesError(str(first["loc"][0]), first["msg"].removeprefix("Value error, ")) from None


class RulesError(ValueError):
    """A folder key given outside a config file is not allowed: `key` and why."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


def _absolute(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    # normpath, not resolve(): the watcher reports paths under the folder as
    # written, and jobs are looked up by those paths.
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _check_duplicate_folders(folders: tuple[FolderRules, ...], source: Path) -> None:
    seen: dict[Path, int] = {}
    problems = []
    for index, folder in enumerate(folders):
        if folder.path in seen:
            first = seen[folder.path]
            problems.append(f"at 'folders[{index}].path': {folder.path} is listed twice (folders[{first}])")
        seen.setdefault(folder.path, index)
    if problems:
        raise ConfigError(source, problems)


# ---------------------------------------------------------------- error wording


def _describe(error: Any) -> str:
    loc = _key_path(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"])
        return f"at '{loc}': unknown key{_did_you_mean(str(error['loc'][-1]), allowed)}"
    if kind == "missing":
        return f"at '{loc}': required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    if kind in ("literal_error", "enum"):
        message = f"got {error.get('input')!r}; {message}"
    return f"at '{loc}': {message}"


def _key_path(loc: tuple[Any, ...]) -> str:
    """Turn pydantic's ('folders', 0, 'langauge') into folders[0].langauge."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("bool", "str", "float", "int", "literal['auto']") or str(part).startswith("literal["):
            continue  # union branch names pydantic adds; the user never wrote them
        else:
            text += f".{part}" if text else str(part)
    return text


def _allowed_keys(loc: tuple[Any, ...]) -> tuple[str, ...]:
    parents = [p for p in loc[:-1] if not isinstance(p, int)]
    model: type[BaseModel] = _ConfigModel
    for name in parents:
        annotation = model.model_fields[name].annotation
        model = _model_in(annotation) or model
    return tuple(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


# Country codes people write for languages (jp for Japanese, …); other spellings of a language
# ("eng", "German") are read by languages.from_any.
COUNTRY_NOT_LANGUAGE = {"jp": "ja", "cn": "zh", "kr": "ko", "ua": "uk", "gr": "el", "dk": "da", "se": "sv",
                        "cz": "cs", "il": "he", "ir": "fa", "vn": "vi", "br": "pt", "us": "en", "gb": "en",
                        "uk-en": "en"}


def _language_hint(value: str) -> str:
    code = COUNTRY_NOT_LANGUAGE.get(value.lower()) or from_any(value)
    return f"; did you mean '{code}'?" if code else _did_you_mean(value, WHISPER_LANGUAGES)


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
