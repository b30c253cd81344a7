"""Sidecar names, finding existing sidecars and writing them, on real temporary folders."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from daemon import subtitles
from daemon.subtitles import (
    NamingRules,
    existing_subtitles,
    file_sha256,
    language_tag,
    sidecar_path,
    write_sidecar,
)

MOVIE = Path("/media/Movies/Movie (2009)/Movie (2009).mkv")


def whisper_tokenizer() -> ModuleType:
    """Return whisper.tokenizer, loaded from its file: importing the package would pull in torch."""
    spec = importlib.util.find_spec("whisper")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).with_name("tokenizer.py")
    file_spec = importlib.util.spec_from_file_location("_whisper_tokenizer", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


# --- naming -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "fmt", "naming", "expected"),
    [
        ("en", "srt", NamingRules(), "Movie (2009).en.srt"),
        ("en", "vtt", NamingRules(), "Movie (2009).en.vtt"),
        ("en", "SRT", NamingRules(), "Movie (2009).en.srt"),
        ("en", "srt", NamingRules(sdh=True), "Movie (2009).en.sdh.srt"),
        ("en", "srt", NamingRules(forced=True), "Movie (2009).en.forced.srt"),
        ("en", "srt", NamingRules(sdh=True, forced=True), "Movie (2009).en.sdh.forced.srt"),
        ("en", "srt", NamingRules(lang_code="iso639-2"), "Movie (2009).eng.srt"),
        ("de", "srt", NamingRules(lang_code="iso639-2"), "Movie (2009).ger.srt"),
        ("fr", "srt", NamingRules(lang_code="iso639-2", forced=True), "Movie (2009).fre.forced.srt"),
        ("zh", "srt", NamingRules(lang_code="iso639-2"), "Movie (2009).chi.srt"),
        ("jw", "srt", NamingRules(), "Movie (2009).jv.srt"),  # Whisper's old code for Javanese
        ("jw", "srt", NamingRules(lang_code="iso639-2"), "Movie (2009).jav.srt"),
        ("haw", "srt", NamingRules(), "Movie (2009).haw.srt"),  # no two-letter code exists
        ("yue", "srt", NamingRules(), "Movie (2009).zh.srt"),
        ("German", "srt", NamingRules(), "Movie (2009).de.srt"),
        ("deu", "srt", NamingRules(lang_code="iso639-2"), "Movie (2009).ger.srt"),
        ("pt-BR", "srt", NamingRules(), "Movie (2009).pt.srt"),
        ("EN", "json", NamingRules(), "Movie (2009).en.json"),
    ],
)
def test_sidecar_name_beside_the_video(language: str, fmt: str, naming: NamingRules, expected: str) -> None:
    assert sidecar_path(MOVIE, language, fmt, naming) == MOVIE.with_name(expected)


def test_dotted_video_names_keep_their_stem() -> None:
    episode = Path("/tv/Show/Season 1/Show.S01E02.1080p.WEB.mkv")

    assert sidecar_path(episode, "en", "srt", NamingRules()).name == "Show.S01E02.1080p.WEB.en.srt"


@pytest.mark.parametrize(
    ("template", "naming", "expected"),
    [
        ("Subs/{stem}.{lang}{flags}.{ext}", NamingRules(sdh=True), "Subs/Movie (2009).en.sdh.srt"),
        ("{stem}.{lang}.whisper{flags}.{ext}", NamingRules(), "Movie (2009).en.whisper.srt"),
        ("subs/{lang}/{stem}.{ext}", NamingRules(lang_code="iso639-2"), "subs/eng/Movie (2009).srt"),
        ("./{stem}.{lang}.{ext}", NamingRules(), "Movie (2009).en.srt"),
    ],
)
def test_name_template_is_relative_to_the_video_folder(template: str, naming: NamingRules,
                                                       expected: str) -> None:
    rules = dataclasses.replace(naming, name_template=template)

    assert sidecar_path(MOVIE, "en", "srt", rules) == MOVIE.parent / expected


@pytest.mark.parametrize(
    "template",
    [
        "../{stem}.{lang}.{ext}",
        "Subs/../../{stem}.{ext}",
        "/tmp/{stem}.{ext}",
        "{stem}.{language}.{ext}",  # unknown placeholder
        "{0}.{ext}",
        "{stem}.{lang}.srt",  # no {ext}: the formats would overwrite each other
        "{stem",
        "",
    ],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="name_template"):
        NamingRules(name_template=template)


def test_template_naming_the_video_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="video itself"):
        sidecar_path(MOVIE, "en", "mkv", NamingRules(name_template="{stem}.{ext}"))


def test_unknown_language_and_format_are_refused() -> None:
    with pytest.raises(ValueError, match="klingon"):
        sidecar_path(MOVIE, "klingon", "srt", NamingRules())
    with pytest.raises(ValueError, match="format"):
        sidecar_path(MOVIE, "en", "s/rt", NamingRules())
    with pytest.raises(ValueError):
        NamingRules(lang_code="iso639-3")  # type: ignore[arg-type]


def test_every_whisper_language_has_both_codes() -> None:
    tokenizer = whisper_tokenizer()
    for code in tokenizer.LANGUAGES:
        two = language_tag(code, "iso639-1")
        three = language_tag(code, "iso639-2")
        assert 2 <= len(two) <= 3 and two.isalpha() and two.islower(), code
        assert len(three) == 3 and three.isalpha() and three.islower(), code
    # Whisper's English names and aliases ("castilian", "burmese") are understood too.
    for name, code in tokenizer.TO_LANGUAGE_CODE.items():
        assert language_tag(name, "iso639-2") == language_tag(code, "iso639-2"), name


# --- existing sidecars ----------------------------------------------------------------


def make_files(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_text("x")


@pytest.fixture
def movie_folder(tmp_path: Path) -> Path:
    make_files(
        tmp_path,
        [
            "Movie (2009).mkv",
            "Movie (2009).en.srt",
            "Movie (2009).eng.forced.SRT",
            "Movie (2009).english.sdh.ass",
            "Movie (2009).en.hi.srt",
            "Movie (2009).srt",
            "Movie (2009).de.srt",
            "Movie (2009).ger.vtt",
            "Movie (2009).Director's Commentary.fr.ssa",
            "Movie (2009).hi.sub",
            "Movie (2009).hi.idx",
            "movie (2009).EN.srt",
            "Movie (2009).nfo",
            "Movie (2009).en.txt",
            "Movie (2009) Extended.en.srt",
            "Movie (2009).Extended.mp4",
            "Movie (2009).Extended.en.srt",
            ".Movie (2009).en.srt",
            ".subwatch-abc.tmp",
            "Other.en.srt",
        ],
    )
    (tmp_path / "Movie (2009).fr.srt").mkdir()  # a folder, not a sidecar
    return tmp_path


def names(paths: list[Path]) -> list[str]:
    return sorted(p.name for p in paths)


def test_existing_english_sidecars(movie_folder: Path) -> None:
    found = existing_subtitles(movie_folder / "Movie (2009).mkv", "en")

    assert names(found) == sorted(
        [
            "Movie (2009).en.srt",
            "Movie (2009).eng.forced.SRT",
            "Movie (2009).english.sdh.ass",
            "Movie (2009).en.hi.srt",  # hearing-impaired English, not Hindi
            "Movie (2009).srt",  # no language: counts for any
            "movie (2009).EN.srt",
        ]
    )
    assert all(p.parent == movie_folder for p in found)


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("de", ["Movie (2009).de.srt", "Movie (2009).ger.vtt", "Movie (2009).srt"]),
        ("deu", ["Movie (2009).de.srt", "Movie (2009).ger.vtt", "Movie (2009).srt"]),
        ("German", ["Movie (2009).de.srt", "Movie (2009).ger.vtt", "Movie (2009).srt"]),
        ("hi", ["Movie (2009).hi.idx", "Movie (2009).hi.sub", "Movie (2009).srt"]),
        ("fr", ["Movie (2009).Director's Commentary.fr.ssa", "Movie (2009).srt"]),
        ("ja", ["Movie (2009).srt"]),
    ],
)
def test_existing_sidecars_for_other_languages(movie_folder: Path, language: str,
                                               expected: list[str]) -> None:
    assert names(existing_subtitles(movie_folder / "Movie (2009).mkv", language)) == sorted(expected)


def test_existing_sidecars_for_any_language(movie_folder: Path) -> None:
    found = existing_subtitles(movie_folder / "Movie (2009).mkv", None)

    assert names(found) == sorted(
        [
            "Movie (2009).en.srt",
            "Movie (2009).eng.forced.SRT",
            "Movie (2009).english.sdh.ass",
            "Movie (2009).en.hi.srt",
            "Movie (2009).srt",
            "Movie (2009).de.srt",
            "Movie (2009).ger.vtt",
            "Movie (2009).Director's Commentary.fr.ssa",
            "Movie (2009).hi.sub",
            "Movie (2009).hi.idx",
            "movie (2009).EN.srt",
        ]
    )


def test_other_video_with_a_longer_name_keeps_its_sidecars(movie_folder: Path) -> None:
    found = existing_subtitles(movie_folder / "Movie (2009).Extended.mp4", "en")

    assert names(found) == ["Movie (2009).Extended.en.srt"]


def test_chinese_and_cantonese_share_chi(tmp_path: Path) -> None:
    make_files(tmp_path, ["clip.mp4", "clip.chi.srt", "clip.yue.srt"])

    assert names(existing_subtitles(tmp_path / "clip.mp4", "zh")) == ["clip.chi.srt", "clip.yue.srt"]
    assert names(existing_subtitles(tmp_path / "clip.mp4", "yue")) == ["clip.chi.srt", "clip.yue.srt"]


def test_no_sidecars(tmp_path: Path) -> None:
    make_files(tmp_path, ["clip.mp4", "clip.nfo"])

    assert existing_subtitles(tmp_path / "clip.mp4", "en") == []
    assert existing_subtitles(tmp_path / "clip.mp4", None) == []


def test_our_own_name_is_found_again(tmp_path: Path) -> None:
    video = tmp_path / "Movie (2009).mkv"
    video.write_text("v")
    for naming in (NamingRules(), NamingRules(lang_code="iso639-2", sdh=True), NamingRules(forced=True)):
        sidecar = sidecar_path(video, "de", "srt", naming)
        sidecar.write_text("x")
        assert sidecar in existing_subtitles(video, "de")
        assert sidecar not in existing_subtitles(video, "en")
        sidecar.unlink()


# --- writing ----------------------------------------------------------------------


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse(path: Path) -> bool:
    return False


def test_new_sidecar_is_written_readable_and_alone(tmp_path: Path) -> None:
    target = tmp_path / "Movie.en.srt"

    assert write_sidecar(target, "1\n00:00:01,000 --> 00:00:02,000\nÄpfel 日本\n", refuse) is True
    assert target.read_text(encoding="utf-8") == "1\n00:00:01,000 --> 00:00:02,000\nÄpfel 日本\n"
    assert entries(tmp_path) == ["Movie.en.srt"]
    # Not mkstemp's 0600: the media server, another user, must read it.
    assert stat.S_IMODE(target.stat().st_mode) == (0o666 & ~current_umask()) | 0o444


def test_existing_user_file_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "Movie.en.srt"
    target.write_text("the user's own subtitles")
    asked: list[Path] = []

    def may_replace(path: Path) -> bool:
        asked.append(path)
        return False

    assert write_sidecar(target, "ours", may_replace) is False
    assert target.read_text() == "the user's own subtitles"
    assert asked == [target]
    assert entries(tmp_path) == ["Movie.en.srt"]


def test_our_own_file_is_replaced_keeping_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "Movie.en.srt"
    target.write_text("old")
    target.chmod(0o640)

    assert write_sidecar(target, "new", lambda path: file_sha256(path) == hashlib.sha256(b"old").hexdigest())
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert entries(tmp_path) == ["Movie.en.srt"]


def no_hard_links(source: object, target: object) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subtitles.writing.os, "link", no_hard_links)
    new, kept = tmp_path / "a.en.srt", tmp_path / "b.en.srt"
    kept.write_text("user")

    assert write_sidecar(new, "ours", refuse) is True
    assert write_sidecar(kept, "ours", refuse) is False
    assert new.read_text() == "ours" and kept.read_text() == "user"
    assert entries(tmp_path) == ["a.en.srt", "b.en.srt"]


def test_hard_link_failure_that_is_not_about_support_is_raised(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(subtitles.writing.os, "link", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_sidecar(tmp_path / "a.en.srt", "ours", refuse)
    assert entries(tmp_path) == []


def test_temp_file_never_survives_an_exception(tmp_path: Path) -> None:
    target = tmp_path / "Movie.en.srt"
    target.write_text("user")

    def broken(path: Path) -> bool:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):
        write_sidecar(target, "ours", broken)
    with pytest.raises(UnicodeEncodeError):
        write_sidecar(tmp_path / "other.srt", "bad \ud800 text", refuse)
    assert target.read_text() == "user"
    assert entries(tmp_path) == ["Movie.en.srt"]


def error_of(call: Callable[[], object]) -> str:
    """Run `call` without root (in a child process when we are root); return what it raised."""
    if os.geteuid() != 0:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever it was
            return f"{type(exc).__name__}: {exc}"
        return ""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, so permissions apply, and report back
        message = ""
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            call()
        except BaseException as exc:  # noqa: BLE001
            message = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    # Under root the check runs as "nobody", who cannot reach pytest's 0700 tmp_path.
    base = Path(tempfile.mkdtemp()) if os.geteuid() == 0 else tmp_path
    base.chmod(0o755)
    folder = base / "Movies"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
    if base != tmp_path:
        shutil.rmtree(base)


def test_read_only_folder_raises_an_error_naming_the_path(read_only_folder: Path) -> None:
    target = read_only_folder / "Movie.en.srt"

    message = error_of(lambda: write_sidecar(target, "ours", refuse))

    assert message.startswith("PermissionError"), message
    assert str(target) in message
    assert entries(read_only_folder) == []


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "x.srt"
    path.write_bytes(b"subtitle bytes" * 100_000)

    assert file_sha256(path) == hashlib.sha256(b"subtitle bytes" * 100_000).hexdigest()


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now: a writer killed mid-write
    alive = subprocess.Popen(["sleep", "60"])
    try:
        stale = tmp_path / f".subwatch-{gone.pid}-abc123_x.tmp"
        mine = tmp_path / f".subwatch-{os.getpid()}-q1w2e3r4.tmp"  # left by this pid before a restart
        busy = tmp_path / f".subwatch-{alive.pid}-zz9.tmp"  # `subwatch transcribe` writing right now
        others = [tmp_path / ".subwatch-abc.tmp", tmp_path / "Film.en.srt", tmp_path / ".subwatch-1-x.srt"]
        for path in [stale, mine, busy, *others]:
            path.write_text("1\n")
        assert sorted(subtitles.remove_stale_temps(tmp_path)) == sorted([stale, mine])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [busy, *others])
        assert subtitles.remove_stale_temps(tmp_path / "missing") == []
    finally:
        alive.kill()
        alive.wait()


def test_a_sidecar_is_written_through_a_temp_named_for_its_writer(tmp_path: Path) -> None:
    target = tmp_path / "Film.en.srt"
    target.write_text("old")
    seen: list[str] = []

    def may_replace(path: Path) -> bool:  # called while the new text waits in its temp file
        seen.extend(p.name for p in tmp_path.iterdir() if p != path)
        return True

    assert subtitles.write_sidecar(target, "new", may_replace)
    [name] = seen
    assert name.startswith(f".subwatch-{os.getpid()}-") and name.endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["Film.en.srt"] and target.read_text() == "new"
