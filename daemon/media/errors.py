"""The media stage's errors: each carries the file's path, says what went wrong and what to do."""

from __future__ import annotations

from pathlib import Path


class MediaError(Exception):
    """A file could not be probed or decoded.

    `permanent` is True when trying again cannot help (not media, no audio, corrupt);
    False for transient trouble (ffmpeg killed or too slow, out of memory, disk) worth a retry.
    """

    def __init__(self, path: Path, message: str, *, permanent: bool) -> None:
        self.path = path
        self.permanent = permanent
        super().__init__(message)


class MediaGone(MediaError):
    """The file disappeared before or while it was read (deleted or moved away)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "the file is gone (deleted or moved before it was read)", permanent=True)


class Refused(MediaError):
    """The file is in a format that can make ffmpeg read other files or streams (a playlist, a
    manifest, a list of files, an image sequence, an MP4 with external data): never read, whatever
    it holds. Permanent; `format` is ffmpeg's name for it (hls, dash, concat, …)."""

    def __init__(self, path: Path, format: str, message: str) -> None:  # noqa: A002 (ffmpeg's word)
        self.format = format
        super().__init__(path, message, permanent=True)


class TooLong(MediaError):
    """The media runs longer than the limit it is read under (a folder's max_hours, an upload's
    cap): permanent; the message names the limit."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(path, message, permanent=True)
