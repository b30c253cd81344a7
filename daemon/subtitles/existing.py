"""Existing sidecars: the subtitles beside a video that a media server would show for a language."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon import languages
from daemon.datatypes import MEDIA_EXTENSIONS

SUBTITLE_EXTENSIONS = frozenset({".srt", ".vtt", ".ass", ".ssa", ".sub", ".idx", ".smi", ".sup"})
# Flags Jellyfin and Plex read between the language and the extension.
_FLAGS = frozenset({"default", "forced", "foreign", "sdh", "cc", "hi"})
# Media files that may share a folder (and a name prefix) with the video: their
# sidecars are theirs, not ours ("Movie.mkv" vs "Movie.Extended.mkv").
# Disc images count too: a player shows sidecars for them, though subwatch never transcribes one.
_MEDIA_EXTENSIONS = frozenset(f".{extension}" for extension in MEDIA_EXTENSIONS | {"iso"})


def _sidecar_language(tags: Sequence[str]) -> str | None:
    """Given the dot-separated tags between a video's name and a sidecar's extension, return its language.

    The last tag that names a language wins (as in Jellyfin). "hi" is Hindi
    alone but the hearing-impaired flag after another language ("en.hi").
    """
    for i in range(len(tags) - 1, -1, -1):
        tag = tags[i].lower()
        if tag in _FLAGS and (tag != "hi" or any(languages.from_any(t) for t in tags[:i])):
            continue
        code = languages.from_any(tag)
        if code is not None:
            return code
    return None


def _same_language(a: str, b: str) -> bool:
    return a == b or languages.LANGUAGES[a].iso2b == languages.LANGUAGES[b].iso2b  # zh and yue are both "chi"


def existing_subtitles(source: Path, language: str | None) -> list[Path]:
    """Given a video, return the subtitle sidecars beside it that a media server shows for `language`.

    A sidecar is "<video stem>[.tags].<subtitle ext>" (stem and extension
    compared without case). One without a language tag counts for every
    language; `language=None` returns every sidecar of the video. Raise
    ValueError if `language` is unknown, OSError if the folder cannot be read.
    """
    wanted = None if language is None else languages.from_any(language)
    if language is not None and wanted is None:
        raise ValueError(f"unknown language {language!r}")
    stem = source.stem.casefold()
    entries = [p for p in source.parent.iterdir() if not p.name.startswith(".")]
    # Longer names of other media here, e.g. "movie.extended" beside "movie".
    others = [p.stem.casefold() for p in entries
              if p.suffix.lower() in _MEDIA_EXTENSIONS and p.stem.casefold().startswith(stem + ".")]
    found: list[Path] = []
    for path in entries:
        if path.suffix.lower() not in SUBTITLE_EXTENSIONS or not path.is_file():
            continue
        base = path.name[: -len(path.suffix)]
        folded = base.casefold()
        if folded != stem and not folded.startswith(stem + "."):
            continue
        if any(folded == other or folded.startswith(other + ".") for other in others):
            continue
        found_language = _sidecar_language(base[len(stem) + 1 :].split(".")) if folded != stem else None
        if wanted is None or found_language is None or _same_language(found_language, wanted):
            found.append(path)
    return sorted(found)

