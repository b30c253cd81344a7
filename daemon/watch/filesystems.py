"""Which filesystem a folder is on (from /proc/self/mountinfo), whether inotify sees its changes or
it must be polled, and which folder a path is now (its identity, which a remount changes)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

# Filesystems where inotify misses changes made by other machines or by the
# backing store, so the folder is polled instead. FUSE types are "fuse.<name>".
POLLED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "v9fs", "virtiofs", "vboxsf", "vmhgfs", "drvfs",
    "sshfs", "davfs", "ceph", "glusterfs", "afs", "ncpfs", "lustre", "gpfs", "beegfs", "fuse",
})

Identity = tuple[int, int]  # (st_dev, st_ino) of a watched folder: it changes on re-creation or remount


def folder_identity(path: str | os.PathLike[str]) -> Identity | None:
    """Given a folder path, return (st_dev, st_ino) of the folder there now, or None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def _unescape_mount_field(field: str) -> str:
    """Given a mountinfo field, return it with the kernel's octal escapes (\\040 for space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """Given the text of /proc/self/mountinfo, return (mount point, filesystem type) pairs in file order."""
    mounts = []
    for line in text.splitlines():
        before, separator, after = line.partition(" - ")
        fields, rest = before.split(), after.split()
        if separator and len(fields) >= 5 and rest:
            mounts.append((_unescape_mount_field(fields[4]), rest[0]))
    return mounts


def _is_under(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_type_in(mountinfo: str, path: str | os.PathLike[str]) -> str:
    """Given mountinfo text and an absolute, resolved path, return the type of the filesystem holding it.

    The mount with the longest mount point that contains the path wins; of
    equal ones the later, which is mounted on top. Return "unknown" if none.
    """
    target = os.fspath(path)
    found, found_length = "unknown", -1
    for mount_point, fstype in parse_mountinfo(mountinfo):
        if _is_under(target, mount_point) and len(mount_point) >= found_length:
            found, found_length = fstype, len(mount_point)
    return found


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """Given a path, return the type of the filesystem it is on ("ext4", "nfs4", "fuse.sshfs", ...).

    Return "unknown" where /proc/self/mountinfo cannot be read (not Linux).
    """
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return "unknown"
    return filesystem_type_in(text, os.path.realpath(path))


def is_polled_filesystem(fstype: str) -> bool:
    """Given a filesystem type, return whether inotify misses changes on it (network, FUSE, VM shares)."""
    return fstype in POLLED_FILESYSTEMS or fstype.startswith("fuse.")


def needs_polling(path: str | os.PathLike[str]) -> bool:
    """Given a folder, return whether it must be polled because inotify cannot see writes there."""
    return is_polled_filesystem(filesystem_type(path))
