"""Configuration: one YAML file, validated once into frozen dataclasses.

The package: `result` holds the frozen Config and its parts, `schema` the pydantic models of
the YAML, `wording` turns their errors into lines a user acts on; loading is here.

pydantic checks the shape; this module turns its errors into lines that name
the file and the key path (`folders[0].langauge`) and say what is allowed,
all of them at once, so a user fixes a config in one go. The folder and notify
keys have no defaults here: the ones a user wrote go to daemon.options, which
builds each stage's options from them, and a key not written takes its stage's
default there. The daemon-wide keys (state_dir, log_level, …) have theirs in
`_ConfigModel`. Everything else in the daemon receives `Config` / `FolderRules`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from daemon.config.result import (
    DEVICE_FORMS,
    FORMATS,
    LOG_LEVELS,
    MEMORY_UNITS,
    MIN_KEY_CHARS,
    WHISPER_LANGUAGES,
    WHISPER_MODELS,
    Config,
    ConfigError,
    HttpRules,
    MediaServer,
    NodeRules,
    Secret,
    is_loopback,
    map_path,
)
from daemon.config.schema import (
    COUNTRY_NOT_LANGUAGE,
    _ConfigModel,
    _FolderModel,
    _HttpModel,
    _MediaServerModel,
    _NodeModel,
    _NotifyModel,
    _RulesModel,
    parse_devices,
    parse_listen,
    parse_memory_limit,
)
from daemon.config.wording import _describe
from daemon.options import FolderRules, build_notify, build_rules
from daemon.pathmap import PathMap
from daemon.transcribe.models import is_model_path  # no torch: config stays instant

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
        database=_database(parsed.database, source),
        node=_node(parsed.node, folders, source),
    )


def _node(model: _NodeModel, folders: tuple[FolderRules, ...], source: Path) -> NodeRules:
    written = {key: value for key, value in _written(model).items() if value is not None}
    if "path_map" in written:
        written["path_map"] = PathMap(tuple(written["path_map"].items()))
        _check_round_trip(written["path_map"], folders, source)
    return NodeRules(**written)


def _check_round_trip(paths: PathMap, folders: tuple[FolderRules, ...], source: Path) -> None:
    """Raise ConfigError for a watched folder that node.path_map would store in a form that reads back
    as another path here: its jobs would be found nowhere (a local folder under a stored prefix)."""
    for rules in folders:
        stored = paths.stored(rules.path)
        back = paths.here(stored)
        if back != rules.path:
            raise ConfigError(source, [
                f"at 'node.path_map': the folder {rules.path} would be stored as {stored}, which this "
                f"host reads back as {back}; map a narrower stored prefix, or give this folder's "
                "place here a stored prefix of its own"])


def _database(url: str | None, source: Path) -> Secret | None:
    """Given the `database` key, return it as a Secret (its password never printed), or None."""
    if url is None:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        # The value is not repeated: it may hold a password.
        raise ConfigError(source, ["at 'database': use a postgresql://user@host/dbname URL (the password "
                                   "in it, in PGPASSWORD or in ~/.pgpass), or null for a SQLite file in "
                                   "state_dir"])
    return Secret(url)


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


__all__ = [
    "COUNTRY_NOT_LANGUAGE",
    "Config",
    "ConfigError",
    "DEVICE_FORMS",
    "FORMATS",
    "FolderRules",
    "HttpRules",
    "LOG_LEVELS",
    "MEMORY_UNITS",
    "MIN_KEY_CHARS",
    "MediaServer",
    "NULLABLE",
    "RulesError",
    "Secret",
    "NodeRules",
    "WHISPER_LANGUAGES",
    "WHISPER_MODELS",
    "_ConfigModel",
    "_FolderModel",
    "_NotifyModel",
    "_NodeModel",
    "_RulesModel",
    "is_loopback",
    "load_config",
    "map_path",
    "parse_devices",
    "parse_listen",
    "parse_memory_limit",
    "validate_rules",
]
