"""Writing sidecars: atomically, never over a subtitle the user put there, folders made as needed."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


class SidecarFolderError(OSError):
    """A sidecar's folder is missing and cannot be made for a lasting reason (a file has its name,
    no permission, a read-only mount); the message names it and says what to do. Retrying does not help."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message alone, without "[Errno 17]"


# errnos with which os.link says "this filesystem has no hard links" (FAT,
# exFAT, some SMB and FUSE mounts), as opposed to a real failure.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
)


def file_sha256(path: Path) -> str:
    """Given a file, return the hex SHA-256 of its bytes. Raise OSError if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    """Return this process's umask, read from /proc (os.umask() would have to change it for every
    thread to read it); 0o022 where /proc cannot tell."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


# Read for group and others on every sidecar, search too on every folder made for one: the media
# server, another user, must read them. Who can reach them at all, the media folder's own modes decide.
_SHARED_FILE, _SHARED_FOLDER = 0o044, 0o055


def _new_file_mode() -> int:
    """Return the mode of a new sidecar (mkstemp makes 0600 files): what this process's umask allows,
    and readable by group and others whatever the umask.

    The umask is the service's choice for its own files: systemd's UMask=0027
    keeps the job queue from other users. A sidecar is not one of those: the
    umask still decides who may write it, but read is given to all, so that the
    media server, another user, can read it as it could with the old UMask=0002.
    """
    return (0o666 & ~_umask()) | _SHARED_FILE


def _fsync_folder(folder: Path) -> None:
    # Makes the new name durable; some filesystems cannot open or sync a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# A sidecar is written to ".subwatch-<pid>-<random>.tmp" beside it first: the pid tells whose it is.
TEMP_PREFIX = ".subwatch-"
_TEMP_NAME = re.compile(r"\.subwatch-(\d+)-[a-z0-9_]+\.tmp")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Given a folder, delete the sidecar temp files in it whose writer is no longer running (a
    process killed mid-write leaves one) and return them. One of this process counts as stale too:
    call it before this process writes any sidecar there. Files that cannot be read or deleted are
    left as they are."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            found = _TEMP_NAME.fullmatch(entry.name)
            if found is None or (int(found[1]) != os.getpid() and _running(int(found[1]))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


def _publish_new(tmp: str, path: Path) -> bool:
    """Given a finished temp file, give it the name `path` if nothing has it; return False if taken.

    The temp name may remain (as a second link); the caller removes it.
    """
    try:
        os.link(tmp, path)  # fails if the name exists, however recent
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):  # no hard links: check, then rename (a small race remains)
            return False
        os.replace(tmp, path)
    return True


def write_sidecar(path: Path, text: str, may_replace: Callable[[Path], bool]) -> bool:
    """Given a sidecar path and its text, write it atomically and return True if it was written.

    The text goes to a hidden temp file in the same folder (media servers skip
    it), is synced, then published: under a new name without clobbering a file
    that appeared meanwhile, over an existing file only if `may_replace(path)`
    says so (the caller knows which sidecars it wrote). Return False, leaving
    the existing file untouched, otherwise. The temp file never outlives the
    call, unless the process dies during it (see `remove_stale_temps`). Raise
    OSError naming `path` if the folder cannot be written.
    """
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            mode = os.stat(path).st_mode & 0o7777  # a replaced file keeps its permissions
        except FileNotFoundError:
            mode = _new_file_mode()
        os.chmod(tmp, mode)
        if _publish_new(tmp, path):
            written = True
        elif may_replace(path):
            os.replace(tmp, path)
            written = True
        else:
            written = False
        if written:
            _fsync_folder(folder)
        return written
    finally:
        # Whatever happened: the temp link after os.link, the unused file, or
        # the half-written one after an error. Gone already after os.replace.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)



# errnos with which making a folder may work later (a full or failing disk); any other failure lasts.
_PASSING = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ENOMEM, errno.EINTR})


def make_folders(folder: Path) -> list[Path]:
    """Given the folder a sidecar goes in, create it and each missing folder above it; return the ones
    this call created, outermost first. Raise SidecarFolderError if one cannot be made for a lasting
    reason, OSError naming it if the disk may let it later."""
    missing: list[Path] = []
    for each in (folder, *folder.parents):
        if each.is_dir():
            break
        missing.append(each)
    created: list[Path] = []
    for each in reversed(missing):
        try:
            each.mkdir()
        except FileExistsError as exc:
            if each.is_dir():
                continue  # another job made it meanwhile
            raise SidecarFolderError(exc.errno, _cannot_make(each, "a file has that name")) from exc
        except OSError as exc:
            if exc.errno in _PASSING:
                raise OSError(exc.errno, f"cannot create the folder {each}: {exc.strerror}") from exc
            raise SidecarFolderError(exc.errno, _cannot_make(each, exc.strerror or str(exc))) from exc
        _share_folder(each)
        created.append(each)
    return created


def _share_folder(folder: Path) -> None:
    """Give a folder made for sidecars read and search for group and others (see _new_file_mode),
    keeping the rest of its mode, such as the set-group-ID bit inherited from its parent."""
    # A filesystem without modes (FAT, some SMB mounts) fixes them at mount time: nothing to do there.
    with contextlib.suppress(OSError):
        os.chmod(folder, stat.S_IMODE(folder.stat().st_mode) | _SHARED_FOLDER)


def _cannot_make(folder: Path, why: str) -> str:
    return (f"cannot create the folder {folder} for subtitles ({why}): make it a folder subwatch can "
            "write to, or change name_template; then `subwatch retry` the file")
