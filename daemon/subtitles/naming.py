"""Sidecar names: the file naming Jellyfin, Plex and Emby read, or the folder's `name_template`.

Plex documents ISO 639-1 or 639-2/B codes in file names; Jellyfin's language
table (iso6392.txt) lists the B code first and accepts B, T, 639-1 and the
English name, so the B code ("ger", "fre", "chi") is the three-letter one both
servers read (`lang_code: iso639-2`). The languages themselves are
daemon/languages.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from daemon import languages

LangCode = Literal["iso639-1", "iso639-2"]


@dataclass(frozen=True)
class NamingRules:
    """How sidecar files are named.

    `name_template`, when set, is a path relative to the video's folder with
    the placeholders {stem}, {lang}, {flags} (e.g. ".sdh.forced" or "") and
    {ext}, e.g. "Subs/{stem}.{lang}{flags}.{ext}". It must contain {ext} (or
    the formats would overwrite each other) and must stay inside the folder.
    """

    lang_code: LangCode = "iso639-1"
    sdh: bool = False
    forced: bool = False
    name_template: str | None = None

    def __post_init__(self) -> None:
        if self.lang_code not in ("iso639-1", "iso639-2"):
            raise ValueError(f"lang_code must be 'iso639-1' or 'iso639-2', not {self.lang_code!r}")
        if self.name_template is not None:
            _check_template(self.name_template)


def language_tag(language: str, lang_code: LangCode = "iso639-1") -> str:
    """Given a language (Whisper code, ISO 639 code or English name), return its file-name tag.

    Raise ValueError if the language is unknown.
    """
    code = languages.from_any(language)
    if code is None:
        raise ValueError(f"unknown language {language!r}: expected a Whisper language code such as 'en'")
    lang = languages.LANGUAGES[code]
    return lang.iso2b if lang_code == "iso639-2" else lang.tag


def _check_relative(rendered: str, template: str) -> PurePosixPath:
    """Given a rendered template, return it as a relative path; raise ValueError if it leaves the folder."""
    path = PurePosixPath(rendered)
    if not rendered or path.is_absolute() or ".." in path.parts or rendered.endswith("/"):
        raise ValueError(
            f"name_template {template!r} must name a file inside the video's folder "
            f"(relative, no '..'), got {rendered!r}"
        )
    return path


def _check_template(template: str) -> None:
    """Given a name template, return None if usable; raise ValueError saying what is wrong."""
    try:
        sample = template.format(stem="Movie", lang="en", flags=".sdh", ext="srt")
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"name_template {template!r} is not valid ({exc!r}); the placeholders are {{stem}}, {{lang}}, "
            "{flags} and {ext}"
        ) from exc
    if "{ext}" not in template:
        raise ValueError(f"name_template {template!r} must contain {{ext}}, or formats overwrite each other")
    _check_relative(sample, template)


def sidecar_path(source: Path, language: str, fmt: str, naming: NamingRules) -> Path:
    """Given a video, a language and a format, return the sidecar's path.

    Without a template: beside the video, "Movie (2009).en.srt", with flags
    as Jellyfin and Plex read them: "Movie (2009).en.sdh.srt",
    "Movie (2009).en.forced.srt". Raise ValueError if the language or format is
    unknown, or if the template leads outside the video's folder or onto the
    video itself.
    """
    ext = fmt.lower().lstrip(".")
    if not re.fullmatch(r"[a-z0-9]+", ext):
        raise ValueError(f"bad subtitle format {fmt!r}")
    lang = language_tag(language, naming.lang_code)
    flags = (".sdh" if naming.sdh else "") + (".forced" if naming.forced else "")
    if naming.name_template is None:
        return source.with_name(f"{source.stem}.{lang}{flags}.{ext}")
    _check_template(naming.name_template)
    rendered = naming.name_template.format(stem=source.stem, lang=lang, flags=flags, ext=ext)
    path = source.parent / _check_relative(rendered, naming.name_template)
    if path == source:
        raise ValueError(f"name_template {naming.name_template!r} names the video itself: {source}")
    return path

