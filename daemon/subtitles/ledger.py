"""The sidecar ledger: which sidecars, and which folders made for them, are subwatch's.

A sidecar is subwatch's while the ledger records it and its bytes still hash to
what was written; one the user edited, or put there, is the user's and is never
replaced, moved or removed. Every write, move and removal of sidecars goes
through `SidecarLedger`, which keeps its records in the job queue's database
(`SidecarRecords`, implemented by daemon.queue.JobQueue), so the daemon, the
pipeline and the CLI agree on it across restarts and crashes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from daemon.subtitles.naming import NamingRules, moved_sidecar
from daemon.subtitles.writing import file_sha256, make_folders, write_sidecar

__all__ = ["JobSidecars", "SidecarLedger", "SidecarRecords", "Sidecars", "Unrecorded"]

log = logging.getLogger("subwatch.subtitles")


class SidecarRecords(Protocol):
    """Where the ledger keeps its records: daemon.queue.JobQueue."""

    def record_sidecar(self, path: Path, sha256: str, job_id: int) -> None: ...
    def sidecar_hash(self, path: Path) -> str | None: ...
    def move_sidecar(self, old: Path, new: Path) -> bool: ...
    def forget_sidecar(self, path: Path) -> bool: ...
    def sidecars_of(self, job_id: int) -> list[Path]: ...
    def record_sidecar_folder(self, path: Path) -> None: ...
    def is_sidecar_folder(self, path: Path) -> bool: ...
    def forget_sidecar_folder(self, path: Path) -> bool: ...
    def find(self, path: Path) -> Any: ...  # the job at a media path (with .id), or None
    def forget(self, path: Path) -> bool: ...


class Sidecars(Protocol):
    """What writing one file's sidecars needs (pipeline.complete): whose a path is, and a safe write."""

    def owns(self, path: Path) -> bool: ...
    def write(self, path: Path, text: str) -> bool: ...


class SidecarLedger:
    """The daemon's record of its sidecars and the folders it made for them, and the only way they
    are written, moved with their video, or removed."""

    def __init__(self, records: SidecarRecords) -> None:
        self.records = records

    def owns(self, path: Path) -> bool:
        """Given a subtitle path, return True if subwatch wrote it and nobody has edited it since."""
        recorded = self.records.sidecar_hash(path)
        return recorded is not None and path.is_file() and file_sha256(path) == recorded

    def for_job(self, job_id: int) -> JobSidecars:
        """Given a job id, return what writes that job's sidecars (for pipeline.complete)."""
        return JobSidecars(self, job_id)

    def write(self, job_id: int, path: Path, text: str) -> bool:
        """Given a job, a sidecar path and its text, write it and return True, or return False and
        leave the file if it is the user's.

        Missing folders of the path are made and recorded as subwatch's. The sidecar is recorded
        before it is written: killed between the two, the daemon finds on restart that the file is
        its own and replaces it instead of mistaking it for the user's. Raise SidecarFolderError
        if a folder cannot be made for good, OSError naming the path for other failures.
        """
        mine = self.owns(path)  # asked before recording: the record is about to describe the new text
        self._make_folders(path.parent)
        self.records.record_sidecar(path, hashlib.sha256(text.encode("utf-8")).hexdigest(), job_id)
        return write_sidecar(path, text, may_replace=lambda _: mine)

    def follow(self, job_id: int, old: Path, new: Path, naming: NamingRules | None) -> list[Path]:
        """Given a finished job whose video moved from `old` to `new`, and the layout its sidecars
        were written in, move each sidecar recorded for it (edited or not: it is that video's) to its
        place beside `new` in that layout (see naming.moved_sidecar); return the new paths. A sidecar
        already gone, or whose new name is taken, stays; folders subwatch made that are left empty go."""
        moved = []
        for sidecar in self.records.sidecars_of(job_id):
            target = moved_sidecar(sidecar, old, new, naming)
            if target is None or target == sidecar or target.exists() or not sidecar.exists():
                continue
            try:
                self._make_folders(target.parent)
                sidecar.rename(target)
            except OSError as exc:
                log.warning("cannot move %s to %s (%s); it stays where it is", sidecar, target, exc)
                continue
            self.records.move_sidecar(sidecar, target)
            moved.append(target)
            self._prune(sidecar.parent)
        return moved

    def remove_stale(self, job_id: int, current: Sequence[Path]) -> tuple[list[Path], list[Path]]:
        """Given a job and the sidecar paths its layout names now, delete the job's other sidecars
        that are still as subwatch wrote them and drop the record of all of them (an edited one is
        the user's now); return (removed, left because edited)."""
        removed, left = [], []
        for path in self.records.sidecars_of(job_id):
            if path in current:
                continue
            if self.owns(path):
                path.unlink(missing_ok=True)
                removed.append(path)
            elif path.exists():
                left.append(path)
            self.records.forget_sidecar(path)
            self._prune(path.parent)
        return removed, left

    def forget(self, media: Path) -> bool:
        """Given a media path, forget its job (JobQueue.forget: the sidecars stay, as the user's) and
        remove the folders subwatch made for them that are empty; return False if it had no job."""
        job = self.records.find(media)
        sidecars = self.records.sidecars_of(job.id) if job is not None else []
        if not self.records.forget(media):
            return False
        for folder in sorted({p.parent for p in sidecars}, reverse=True):
            self._prune(folder)
        return True

    def folders_of(self, job_id: int, media: Path) -> set[Path]:
        """Given a job and its media path, return the folders its sidecars are written in: the media's
        folder and those of its recorded sidecars (where a killed write leaves its temp file)."""
        return {media.parent, *(p.parent for p in self.records.sidecars_of(job_id))}

    def _make_folders(self, folder: Path) -> None:
        for made in make_folders(folder):
            self.records.record_sidecar_folder(made)

    def _prune(self, folder: Path) -> None:
        """Remove `folder` and the folders above it while they are empty and subwatch made them."""
        while self.records.is_sidecar_folder(folder):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass  # removed by someone else: only the record is left
            except OSError:
                return  # not empty (a file of the user's, or another video's subtitles)
            self.records.forget_sidecar_folder(folder)
            folder = folder.parent


@dataclass(frozen=True)
class JobSidecars:
    """One job's view of the ledger: what pipeline.complete writes through."""

    ledger: SidecarLedger
    job_id: int

    def owns(self, path: Path) -> bool:
        return self.ledger.owns(path)

    def write(self, path: Path, text: str) -> bool:
        return self.ledger.write(self.job_id, path, text)


@dataclass(frozen=True)
class Unrecorded:
    """Sidecars written with no ledger (`subwatch transcribe`): each existing file is the user's,
    or, with `overwrite`, replaced; missing folders are made."""

    overwrite: bool = False

    def owns(self, path: Path) -> bool:
        return self.overwrite

    def write(self, path: Path, text: str) -> bool:
        make_folders(path.parent)
        return write_sidecar(path, text, may_replace=lambda _: self.overwrite)

