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


# The layout without a template, as a template: what `sidecar_path` writes then.
_DEFAULT_TEMPLATE = "{stem}.{lang}{flags}.{ext}"
# Stand-ins for the placeholders while a template is read as a path ("\0" is in no file name).
_MARKS = {name: f"\0{name}\0" for name in ("stem", "lang", "flags", "ext")}


def moved_sidecar(sidecar: Path, old: Path, new: Path, naming: NamingRules | None = None) -> Path | None:
    """Given a sidecar of the video `old` and the video's new path `new`, return the sidecar's new path,
    keeping its place in the layout: "Subs/Movie.en.srt" of "Movie.mkv" becomes "Subs/Film.en.srt"
    of "Film.mkv", in the new video's folder.

    `naming` is the layout the sidecar was written in: where its template puts the stem in a folder
    name too ("{stem}/{lang}.{ext}"), that folder is renamed as well. A sidecar that does not fit
    the layout keeps its folder, its name's leading stem replaced. Return None if the sidecar is not
    under old's folder or its name does not start with old's stem.
    """
    try:
        relative = PurePosixPath(sidecar.relative_to(old.parent).as_posix())
    except ValueError:
        return None
    template = (naming.name_template if naming else None) or _DEFAULT_TEMPLATE
    moved = _restem(relative, template, old.stem, new.stem)
    if moved is None and relative.name.startswith(old.stem):
        moved = relative.with_name(new.stem + relative.name[len(old.stem):])
    return None if moved is None else new.parent / moved


def _restem(relative: PurePosixPath, template: str, old_stem: str, new_stem: str) -> PurePosixPath | None:
    """Given a sidecar's path relative to its video's folder and the template it was named by, return
    the path the template gives with `new_stem` instead of `old_stem`; None if it does not fit."""
    try:
        marked = PurePosixPath(template.format(**_MARKS)).as_posix()  # "./x" and "a//b" as a path has them
    except (KeyError, IndexError, ValueError, AttributeError):
        return None
    pattern: list[str] = []
    seen: set[str] = set()
    for i, piece in enumerate(marked.split("\0")):
        if i % 2 == 0:
            pattern.append(re.escape(piece))
        elif piece == "stem":
            pattern.append(re.escape(old_stem))
        else:
            pattern.append(f"(?P={piece})" if piece in seen else f"(?P<{piece}>[^/]*?)")
            seen.add(piece)
    found = re.fullmatch("".join(pattern), relative.as_posix())
    if found is None:
        return None
    values = {name: found.groupdict().get(name, "") for name in _MARKS} | {"stem": new_stem}
    return PurePosixPath(template.format(**values))
