"""Config: the contract's keys, inheritance, and errors that name the file and key path."""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.config import (
    WHISPER_LANGUAGES,
    WHISPER_MODELS,
    Config,
    ConfigError,
    _ConfigModel,
    _FolderModel,
    _NodeModel,
    _NotifyModel,
    _RulesModel,
    load_config,
)
from daemon.datatypes import MemoryLimit
from daemon.options import FOLDER_KEYS, build_rules

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_tables_match_whisper() -> None:
    import whisper
    import whisper.tokenizer

    assert set(WHISPER_MODELS) == set(whisper.available_models())
    assert WHISPER_LANGUAGES == set(whisper.tokenizer.LANGUAGES)


def test_folder_inherits_defaults_and_overrides(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
        state_dir: state
        defaults:
          model: small
          language: de
          prompt: "Berlin"
          formats: [srt]
        notify:
          urls: ["json://127.0.0.1:9/"]
          on: [failed]
        folders:
          - path: a
          - path: /srv/anime
            language: ja
            task: translate
            model: large-v3
            prompt: null
            notify: {urls: ["json://127.0.0.1:8/"], replace: true}
    """))
    a, anime = config.folders
    assert config.state_dir == tmp_path / "state"
    assert config.models_dir == tmp_path / "state" / "models"
    assert config.db_path == tmp_path / "state" / "jobs.sqlite3"
    key = a.transcript_key
    assert (a.path, key.model, key.language, key.prompt, a.subtitles.formats, key.task) == (
        tmp_path / "a", "small", "de", "Berlin", ("srt",), "transcribe")
    assert a.watch.settle_seconds == 10.0 and a.devices == ("auto",) and a.watch.recursive is True
    key = anime.transcript_key
    assert (anime.path, key.model, key.language, key.task, key.prompt) == (
        Path("/srv/anime"), "large-v3", "ja", "translate", None)
    assert anime.notify.urls == ("json://127.0.0.1:8/",) and anime.notify.replace
    assert config.notify.on == frozenset({"failed"})


def test_auto_language_and_poll_become_none(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "folders: [{path: x, language: auto, poll: auto}]\n"))
    assert config.folders[0].transcript_key.language is None and config.folders[0].watch.poll is None


def test_model_path_resolved_relative_to_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "folders: [{path: x, model: models/mine.pt}]\n"))
    assert config.folders[0].transcript_key.model == str(tmp_path / "models" / "mine.pt")


def test_model_folder_resolved_relative_to_config(tmp_path: Path) -> None:
    """A faster-whisper or Hugging Face folder is a path like a .pt file: anything with a "/"."""
    config = load_config(write(tmp_path, """
        defaults:
          model: ./faster-whisper-base
        folders:
          - path: x
          - path: y
            model: ../hf/whisper-small/
          - path: z
            model: base.en
    """))
    assert [f.transcript_key.model for f in config.folders] == [
        str(tmp_path / "faster-whisper-base"), str(tmp_path.parent / "hf" / "whisper-small"), "base.en"]


def test_unknown_model_says_paths_and_folders_are_allowed(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "folders: [{path: x, model: faster-whisper-base}]\n"))
    assert len(problems) == 1 and problems[0].startswith("at 'folders[0].model': unknown model "
                                                         "'faster-whisper-base'")
    assert problems[0].endswith(
        "turbo, or a path to a .pt checkpoint or a faster-whisper / Hugging Face model folder")


def test_typo_names_key_path_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, """
        folders:
          - path: /media
            langauge: ja
    """)
    assert problems_of(path) == ["at 'folders[0].langauge': unknown key; did you mean 'language'?"]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """
        defaults:
          model: turbo2
          task: translat
        notify:
          on: [done, sometimes]
        folders:
          - path: /a
            language: jp
            settle_seconds: -1
            poll: sometimes
            formats: [srt, ass]
          - path: /a
    """)
    problems = problems_of(path)
    assert any(p.startswith("at 'defaults.model': unknown model 'turbo2'; did you mean 'turbo'?")
               for p in problems)
    assert "at 'defaults.task': got 'translat'; input should be 'transcribe' or 'translate'" in problems
    assert any(p.startswith("at 'folders[0].language': unknown language 'jp'; did you mean 'ja'?")
               for p in problems)
    assert any(p.startswith("at 'folders[0].settle_seconds'") for p in problems)
    assert "at 'folders[0].poll': got 'sometimes'; use true, false or auto" in problems
    assert any(p.startswith("at 'folders[0].formats[1]': got 'ass'") for p in problems)
    assert any(p.startswith("at 'notify.on[1]': got 'sometimes'") for p in problems)
    assert len(problems) == 7


def test_duplicate_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "folders: [{path: /a}, {path: /a/}]\n")
    assert problems_of(path) == ["at 'folders[1].path': /a is listed twice (folders[0])"]


@pytest.mark.parametrize(("text", "expected"), [
    ("state_dir: /x\n", "at 'folders': required key is missing"),
    ("folders: []\n", "at 'folders': list should have at least 1 item after validation, not 0"),
    ("", "the file is empty; at least `folders:` is required"),
    ("- a\n- b\n", "the top level must be a mapping of keys (state_dir, folders, …)"),
    ("folders: [{path: /a, model: null}]\n",
     "at 'folders[0].model': must not be empty (remove the line to use the default)"),
    ("folders: [{path: /a, device: gpu}]\n", "at 'folders[0].device': unknown device 'gpu'; "
     "use auto, cpu, cuda or cuda:N"),
    ("folders: [{path: /a, device: [cuda:0, gpu1]}]\n", "at 'folders[0].device': unknown device 'gpu1' in "
     "the list; use auto, cpu, cuda or cuda:N"),
    ("folders: [{path: /a, device: [cuda:0, cuda:1, cuda:0]}]\n",
     "at 'folders[0].device': device 'cuda:0' is listed twice"),
    ("defaults: {device: []}\nfolders: [{path: /a}]\n",
     "at 'defaults.device': the list is empty; name at least one device (auto, cpu, cuda or cuda:N)"),
    ("folders: [{path: /a, device: 1}]\n", "at 'folders[0].device': got 1; use auto, cpu, cuda or cuda:N, "
     "or a list of them"),
    ("folders: [{path: /a, device: 'cuda:x'}]\n", "at 'folders[0].device': unknown device 'cuda:x'; "
     "use auto, cpu, cuda or cuda:N"),
    ("gpu_memory_limit: 20 parsecs\nfolders: [{path: /a}]\n", "at 'gpu_memory_limit': got '20 parsecs'; "
     "write a size with its unit (20GiB, 20000MB) or a fraction of the card (0.5)"),
    ("gpu_memory_limit: 20\nfolders: [{path: /a}]\n", "at 'gpu_memory_limit': got 20: a number without a "
     "unit is a fraction of the card, above 0 and at most 1; for a size add its unit (20GiB, 20000MB)"),
    ("gpu_memory_limit: 0\nfolders: [{path: /a}]\n", "at 'gpu_memory_limit': got 0: a number without a "
     "unit is a fraction of the card, above 0 and at most 1; for a size add its unit (20GiB, 20000MB)"),
    ("gpu_memory_limit: 0GiB\nfolders: [{path: /a}]\n",
     "at 'gpu_memory_limit': got '0GiB'; the limit must be more than 0 bytes"),
    ("gpu_memory_limit: true\nfolders: [{path: /a}]\n", "at 'gpu_memory_limit': got True; "
     "write a size with its unit (20GiB, 20000MB) or a fraction of the card (0.5)"),
    ("folders: [{path: /a, name_template: '../{stem}.srt'}]\n", "at 'folders[0].name_template': "
     "name_template must stay inside the video's folder (no '..', no absolute path)"),
])
def test_single_problem_wording(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(write(tmp_path, text)) == [expected]


def test_device_lists_and_inheritance(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
        defaults: {device: [cuda:0, cuda:1]}
        folders:
          - path: /films
          - path: /clips
            device: cpu
          - path: /shows
            device: [cuda:1, auto]
    """))
    films, clips, shows = config.folders
    assert films.devices == ("cuda:0", "cuda:1")
    assert clips.devices == ("cpu",)
    assert shows.devices == ("cuda:1", "auto")
    assert config.gpu_memory_limit is None


@pytest.mark.parametrize(("written", "limit", "on_24_gib"), [
    ("20GiB", MemoryLimit(bytes=20 * 2**30), 20 * 2**30),
    ("20000MB", MemoryLimit(bytes=20 * 10**9), 20 * 10**9),
    ("1.5 gb", MemoryLimit(bytes=15 * 10**8), 15 * 10**8),
    ("8G", MemoryLimit(bytes=8 * 2**30), 8 * 2**30),
    ("64GiB", MemoryLimit(bytes=64 * 2**30), 24 * 2**30),  # never more than the card
    ("0.5", MemoryLimit(fraction=0.5), 12 * 2**30),
    ("1", MemoryLimit(fraction=1.0), 24 * 2**30),
    ("'25%'", MemoryLimit(fraction=0.25), 6 * 2**30),
])
def test_gpu_memory_limit_forms(tmp_path: Path, written: str, limit: MemoryLimit, on_24_gib: int) -> None:
    config = load_config(write(tmp_path, f"gpu_memory_limit: {written}\nfolders: [{{path: /a}}]\n"))
    assert config.gpu_memory_limit == limit
    assert config.gpu_memory_limit.on_card(24 * 2**30) == on_24_gib


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "folders:\n  - path: /a\n   language: [en\n")
    (problem,) = problems_of(path)
    assert problem.startswith("line 3, column") and "not valid YAML" in problem


def test_missing_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == ["no such file; copy config.example.yaml there and edit it"]


def test_yaml_on_key_is_not_a_boolean(tmp_path: Path) -> None:
    # YAML 1.1 would read `on:` as True; the notify events must survive.
    config = load_config(write(tmp_path, "notify: {on: [done]}\nfolders: [{path: /a}]\n"))
    assert config.notify.on == frozenset({"done"})


def test_example_config_is_valid_and_self_contained() -> None:
    config = load_config(REPO / "config.example.yaml")
    (folder,) = config.folders
    assert folder.path == REPO / "inbox" and folder.create_if_missing
    assert config.state_dir == REPO / ".subwatch-state"
    key = folder.transcript_key
    assert key.model == "turbo" and folder.subtitles.formats == ("srt", "vtt") and key.language is None


def test_folder_for_picks_most_specific(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "folders: [{path: /m}, {path: /m/anime, language: ja}]\n"))
    assert config.folder_for(Path("/m/anime/a/b.mkv")).transcript_key.language == "ja"
    assert config.folder_for(Path("/m/film.mkv")).path == Path("/m")
    assert config.folder_for(Path("/elsewhere/x.mkv")) is None


# ---------------------------------------------------------------- defaults: written once, documented right

# A line of config.example.yaml that documents a default: `key: value  # default` (the line
# holds it) or `key: value  # default: other` (the default is `other`).
DEFAULT_LINE = re.compile(r"^(?P<indent> *)(?P<key>\w+): (?P<value>.+?)  # default(?:: (?P<default>.+))?$")
SECTION = re.compile(r"^(?P<key>\w+):")


def documented_defaults() -> dict[tuple[str, str], str]:
    """Return config.example.yaml's documented defaults: (section, key) -> the default as YAML text.
    The section is "" for top-level keys, else the top-level key they are under."""
    found, section = {}, ""
    for line in (REPO / "config.example.yaml").read_text().splitlines():
        top = SECTION.match(line)
        if top:
            section = top["key"]
        match = DEFAULT_LINE.match(line)
        if match:
            where = "" if not match["indent"] else section
            found[(where, match["key"])] = match["default"] or match["value"]
    return found


def schema_keys() -> dict[str, set[str]]:
    """Return the keys of each section; a folder's are documented under `defaults` or a folder."""
    return {
        # http and media_servers are commented out in the example: tests/test_http_config.py checks them.
        "": set(_ConfigModel.model_fields) - {"defaults", "notify", "folders", "http", "media_servers",
                                              "node"},
        "node": set(_NodeModel.model_fields),
        "folders": set(_FolderModel.model_fields) - {"path"},
        "notify": set(_NotifyModel.model_fields),
    }


def with_key(section: str, key: str, value: str) -> str:
    """Return a minimal config (one folder) that writes `key: value` in `section`."""
    line = f"{key}: {value}"
    if section == "":
        return f"{line}\nfolders:\n  - path: /media\n"
    if section == "folders":
        return f"folders:\n  - path: /media\n    {line}\n"
    return f"{section}:\n  {line}\nfolders:\n  - path: /media\n"


def loaded(path: Path, text: str) -> Config:
    path.write_text(text)
    return replace(load_config(path), source=Path("config.yaml"))


def test_every_key_documents_its_default_in_the_example() -> None:
    documented: dict[str, set[str]] = {}
    for section, key in documented_defaults():
        documented.setdefault("folders" if section == "defaults" else section, set()).add(key)
    assert documented == schema_keys()


@pytest.mark.parametrize(("section", "key"), sorted(documented_defaults()))
def test_example_default_is_the_codes(tmp_path: Path, section: str, key: str) -> None:
    """Writing the default the example documents changes nothing: it is what the code does unwritten."""
    value = documented_defaults()[(section, key)]
    plain = loaded(tmp_path / "plain.yaml", "folders:\n  - path: /media\n")
    assert loaded(tmp_path / "written.yaml", with_key(section, key, value)) == plain, (
        f"config.example.yaml documents {key}: {value} as the default, but the code's default differs")


def test_a_non_default_is_noticed(tmp_path: Path) -> None:
    """The comparison above can tell a default from another value, in each section."""
    plain = loaded(tmp_path / "plain.yaml", "folders:\n  - path: /media\n")
    for section, key, value in [("", "max_attempts", "4"), ("defaults", "max_lines", "1"),
                                ("notify", "on", "[done]"), ("folders", "create_if_missing", "true")]:
        assert loaded(tmp_path / "written.yaml", with_key(section, key, value)) != plain


def test_every_folder_key_reaches_a_stage() -> None:
    """Each key a folder may set has one field it sets, and setting it changes that field only."""
    assert set(FOLDER_KEYS) == set(_RulesModel.model_fields) | {"create_if_missing"}
    plain = build_rules(Path("/media"), {})
    assert set(plain.keys()) == set(FOLDER_KEYS)
    for key, value in [("recursive", False), ("min_duration_seconds", 5.0), ("beam_size", 2),
                       ("max_lines", 1), ("sdh", True), ("device", ["cpu"])]:
        keys = build_rules(Path("/media"), {key: value}).keys()
        assert {name for name, now in keys.items() if now != plain.keys()[name]} == {key}


def test_rules_are_built_into_each_stages_options(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
        folders:
          - path: /media
            beam_size: 1
            language: de
            poll: true
            max_line_chars: 30
            lang_code: iso639-2
            formats: [srt, srt, txt]
            min_duration_seconds: 30
            notify: {urls: ["json://127.0.0.1:9/"]}
    """))
    (rules,) = config.folders
    assert rules.watch.path == Path("/media") and rules.watch.poll is True
    assert (rules.transcript_key.beam_size, rules.transcribe.beam_size) == (1, None)  # None: greedy
    assert rules.transcribe.language == "de" and rules.transcribe.model == "turbo"
    assert rules.subtitles.cues.max_line_chars == 30 and rules.subtitles.naming.lang_code == "iso639-2"
    assert rules.subtitles.formats == ("srt", "txt")
    assert rules.media.min_duration_seconds == 30
    assert rules.notify.urls == ("json://127.0.0.1:9/",) and rules.notify.replace is False
    assert rules.with_keys({}) == rules
    assert rules.with_keys({"beam_size": 4}).transcribe.beam_size == 4


def test_null_inside_a_folders_notify_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "notify: {burst: null}\nfolders: [{path: /a, notify: {urls: null}}]\n")
    assert problems_of(path) == [
        "at 'notify.burst': must not be empty (remove the line to use the default)",
        "at 'folders[0].notify.urls': must not be empty (remove the line to use the default)",
    ]


def test_database_is_a_postgresql_url_kept_secret_or_null_for_sqlite(tmp_path: Path) -> None:
    sqlite = load_config(write(tmp_path, "state_dir: /var/lib/sw\nfolders: [{path: /srv/tv}]\n"))
    assert sqlite.database is None and sqlite.queue_at == Path("/var/lib/sw/jobs.sqlite3")
    url = "postgresql://subwatch:s3cret-pw@nas.lan:5432/subwatch"
    shared = load_config(write(tmp_path, f"database: {url}\nfolders: [{{path: /srv/tv}}]\n"))
    assert shared.queue_at == url
    assert shared.queue_shown == "postgresql://subwatch:****@nas.lan:5432/subwatch"
    assert "s3cret-pw" not in repr(shared) and "s3cret-pw" not in str(shared)
    mysql = write(tmp_path, "database: mysql://root:s3cret-pw@db/x\nfolders: [{path: /srv/tv}]\n")
    (problem,) = problems_of(mysql)
    assert problem.startswith("at 'database': use a postgresql://user@host/dbname URL")
    assert "s3cret-pw" not in problem
