"""What a watched folder is (`WatchSpec`) and which names in it can be media: read no disk.

A name is ruled out when it is hidden, temporary (a download still going),
in a system folder, a known non-media extension, or outside the folder's
include/exclude globs. A known media extension is taken on its name; any
other extension is left for ffprobe to decide (`name_verdict` returns None),
which the intake does, never the watcher's thread.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from daemon.datatypes import MEDIA_EXTENSIONS
from daemon.text import printable

NON_MEDIA_EXTENSIONS = frozenset({
    # subtitles and their indexes
    "srt", "vtt", "ass", "ssa", "sub", "idx", "sup", "smi", "sami", "lrc", "ttml", "dfxp", "usf",
    # metadata, artwork, text
    "nfo", "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "svg", "txt", "json",
    "xml", "md", "pdf", "log", "ini", "cfg", "conf", "yaml", "yml", "csv", "html", "htm", "url", "lnk",
    "db", "sqlite", "cue", "m3u", "m3u8", "pls", "sh", "py", "js", "css",
    # downloads and archives
    "nzb", "torrent", "sfv", "md5", "sha1", "sha256", "par2", "rar", "zip", "7z", "tar", "gz", "xz",
    "bz2", "iso", "img", "exe",
    # disc structure files that are not streams themselves
    "ifo", "bup", "bdmv", "clpi", "mpls",
})

# Names a downloader or editor writes while a file is incomplete; the rename
# to the final name is what counts. Compared case-folded.
TEMP_SUFFIXES = (
    ".part", ".partial", ".tmp", ".temp", ".crdownload", ".!qb", ".!ut", ".download", ".filepart",
    ".aria2", ".inprogress",
)

# Folders whose content is never media to transcribe, wherever they appear
# (NAS thumbnails and recycle bins, sync tool state). Hidden folders (".*",
# which covers .stfolder and .Trash-1000) are skipped as well.
SYSTEM_FOLDERS = frozenset({
    "@eadir", "#recycle", "#snapshot", "@recycle", "@recently-snapshot", "$recycle.bin", "lost+found",
    "system volume information",
})


@dataclass(frozen=True)
class WatchSpec:
    """One watched folder and its rules.

    `poll` None chooses by filesystem (network and FUSE mounts are polled).
    `include`/`exclude` are globs matched case-insensitively against the path
    relative to `path`, and against the same with a leading "/" so that
    "*/Extras/*" also catches an Extras folder at the top. An empty `include`
    takes every media file.
    """

    path: Path
    recursive: bool = True
    poll: bool | None = None
    poll_interval: float = 30.0
    settle_seconds: float = 10.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.settle_seconds < 0:
            raise ValueError(f"{self.path}: settle_seconds must be >= 0, not {self.settle_seconds}")
        if self.poll_interval <= 0:
            raise ValueError(f"{self.path}: poll_interval must be > 0, not {self.poll_interval}")


def shown(path: str | bytes | os.PathLike[str]) -> str:
    """Given a path, return it fit for one log line (control characters and undecodable bytes escaped)."""
    return printable(os.fsdecode(path))


def is_ignored_folder_name(name: str) -> bool:
    """Given one folder name, return whether nothing below it is ever reported."""
    folded = name.casefold()
    return folded.startswith(".") or folded in SYSTEM_FOLDERS


def is_ignored_file_name(name: str) -> bool:
    """Given a file name, return whether it is hidden, an office lock or a download still in progress."""
    folded = name.casefold()
    return folded.startswith((".", "~$")) or folded.endswith(TEMP_SUFFIXES)


def extension(name: str) -> str:
    """Given a file name, return its last extension, case-folded and without the dot ("" if none)."""
    stem, dot, ext = name.rpartition(".")
    return ext.casefold() if dot and stem else ""


def may_be_media_name(name: str) -> bool:
    """Given a file name alone, return whether it may be media: not ignored, not a non-media extension."""
    return not is_ignored_file_name(name) and extension(name) not in NON_MEDIA_EXTENSIONS


@functools.lru_cache(maxsize=256)
def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """Given glob patterns, return one case-insensitive regex matching any of them."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


def _matches_any(patterns: tuple[str, ...], relative: str) -> bool:
    regex = _glob_regex(patterns)
    return bool(regex.match(relative) or regex.match("/" + relative))


def _relative(path: Path, root: Path) -> str | None:
    """Given a path and a watched folder, return the path relative to it ("a/b.mkv"), or None if outside."""
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        return None
    return None if relative in ("", ".") else relative


def is_ignored_folder(path: Path, spec: WatchSpec) -> bool:
    """Given a folder under `spec.path`, return whether it is outside it, ignored or in an ignored one."""
    relative = _relative(path, spec.path)
    return relative is None or any(is_ignored_folder_name(part) for part in relative.split("/"))


def name_verdict(path: Path, spec: WatchSpec) -> bool | None:
    """Given a file path under `spec.path`, return True if its name makes it a media candidate, False if
    the name rules it out, or None if only its content can tell (an unknown extension). Reads no disk.
    """
    relative = _relative(path, spec.path)
    if relative is None:
        return False
    *folders, name = relative.split("/")
    if any(is_ignored_folder_name(folder) for folder in folders) or not may_be_media_name(name):
        return False
    if spec.include and not _matches_any(spec.include, relative):
        return False
    if spec.exclude and _matches_any(spec.exclude, relative):
        return False
    return True if extension(name) in MEDIA_EXTENSIONS else None
