"""The config's shape as pydantic models (each section strict: an unknown key is an error), and
the parsers of values the shape alone cannot check (devices, listen addresses, memory limits)."""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Whisper's own tables, copied so that loading a config does not import torch.
# tests/test_config.py asserts they equal whisper.available_models() / tokenizer.LANGUAGES.
from daemon.config.result import (
    _DEVICE,
    _MEMORY,
    DEVICE_FORMS,
    MEMORY_UNITS,
    MIN_KEY_CHARS,
    WHISPER_LANGUAGES,
    WHISPER_MODELS,
)
from daemon.datatypes import MemoryLimit
from daemon.languages import from_any
from daemon.queue.schema import LEASE_SECONDS, MAX_ATTEMPTS
from daemon.transcribe.engines import DEFAULT_ENGINE
from daemon.transcribe.models import is_model_path  # no torch: config stays instant

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


class _NodeModel(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=63)  # None: the host's name
    # At least 10 s: a lease renewed every few seconds must outlast a slow database round trip.
    lease_seconds: float = Field(default=LEASE_SECONDS, ge=10)
    path_map: dict[str, str] | None = None  # paths as the database stores them -> paths here

    @field_validator("path_map")
    @classmethod
    def _path_map_form(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        here = [target.rstrip("/") or "/" for target in (value or {}).values()]
        if len(set(here)) < len(here):
            # Paths here are mapped back when stored: one folder here must stand for one stored path.
            raise ValueError("map each stored path to a different path on this host; "
                             f"two map to {next(p for p in here if here.count(p) > 1)!r}")
        return _check_path_map(value)


class _ConfigModel(_Strict):
    state_dir: str = "/var/lib/subwatch"
    database: str | None = None  # None: a SQLite file in state_dir; else a postgresql:// URL
    models_dir: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1)
    unload_after_seconds: float = Field(default=300.0, ge=0)
    rescan_minutes: float = Field(default=60.0, ge=0)
    gpu_memory_limit: Any = None
    engine: Literal["auto", "torch", "ctranslate2", "ctranslate2-int8-encoder", "ctranslate2-int8"] = (
        DEFAULT_ENGINE
    )
    defaults: _RulesModel = Field(default_factory=_RulesModel)
    notify: _NotifyModel = Field(default_factory=_NotifyModel)
    folders: list[_FolderModel] = Field(min_length=1)
    http: _HttpModel | None = None
    node: _NodeModel = Field(default_factory=_NodeModel)
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


COUNTRY_NOT_LANGUAGE = {"jp": "ja", "cn": "zh", "kr": "ko", "ua": "uk", "gr": "el", "dk": "da", "se": "sv",
                        "cz": "cs", "il": "he", "ir": "fa", "vn": "vi", "br": "pt", "us": "en", "gb": "en",
                        "uk-en": "en"}


def _language_hint(value: str) -> str:
    code = COUNTRY_NOT_LANGUAGE.get(value.lower()) or from_any(value)
    return f"; did you mean '{code}'?" if code else _did_you_mean(value, WHISPER_LANGUAGES)


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
