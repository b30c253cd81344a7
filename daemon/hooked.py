"""Files and renames another program reports (a webhook), checked before the intake acts on them.

The paths come from outside: any text at all, mapped by `http.path_map`. Each is looked at once
(a stat), and whatever that raises (a name too long, a NUL byte, a loop of links, no permission)
becomes a refusal that names the path and says what to check, never an exception. A rename is
followed only when it happened here: nothing left at the old path and a regular file at the new.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.config import Config
from daemon.watch import Watcher, name_verdict, shown

log = logging.getLogger("subwatch.intake")

NO_SUCH_FILE = "no such file"


@dataclass(frozen=True)
class Hooked:
    """What became of a file a webhook named: accepted (queued once settled), ignored (the
    folder's rules leave it out) or refused (it cannot be taken: why)."""

    verdict: Literal["accepted", "ignored", "refused"]
    reason: str  # one line; it may name the path
    kind: str = ""  # the reason without the path, where it names one: log lines are counted per kind

    @property
    def key(self) -> str:
        """Return the kind of reason, for counting (never a path)."""
        return self.kind or self.reason


OUTSIDE = Hooked("refused", "outside every watched folder (add its folder to `folders`, fix http.path_map, "
                 "or set http.accept_unwatched: true)")


def hooked_file(config: Config, watcher: Watcher, path: Path) -> Hooked:
    """Given the config, the watcher and a file another program says is new (a path here), hand it to
    the watcher to be reported once it has settled, under the rules of the folder holding it (the
    `defaults` outside every folder when http.accept_unwatched is set); return what became of it."""
    rules = config.folder_for(path)
    if rules is None:
        return OUTSIDE
    found = _look(path, "")
    if isinstance(found, Hooked):
        if found.kind == NO_SUCH_FILE:
            return Hooked("refused", found.reason + _map_hint(config), found.kind)
        return found
    if stat.S_ISDIR(found.st_mode):
        return Hooked("ignored", "a folder (a series or season added): its files are hooked one by one")
    if not stat.S_ISREG(found.st_mode):
        return Hooked("refused", "not a regular file (a FIFO, device or socket): only files are taken")
    if name_verdict(path, rules.watch) is False:
        return Hooked("ignored", "not taken by the folder's include/exclude rules or not media")
    watcher.take(path, rules.watch)
    log.info("%s: reported by a webhook; queued once it has settled", shown(path))
    return Hooked("accepted", "")


def rename_refused(config: Config, old: Path, new: Path) -> Hooked | None:
    """Given the config and a rename another program reports (paths here), return why it is not to
    be followed (nothing is moved then), or None when it happened here: `new` is a regular file in a
    folder subwatch takes files from, and nothing is left at `old`."""
    if config.folder_for(new) is None:
        return OUTSIDE
    found = _look(new, "the new path: ")
    if isinstance(found, Hooked):
        hint = _map_hint(config) if found.kind == NO_SUCH_FILE else ""
        return Hooked("refused", found.reason + "; nothing moved" + hint, found.kind)
    if not stat.S_ISREG(found.st_mode):
        return Hooked("refused", "the new path is not a file here; nothing moved", "new path not a file")
    before = _look(old, "the old path: ", follow=False)
    if not isinstance(before, Hooked):
        return Hooked("refused", f"the old path {shown(old)} is still there, so this is no rename here; "
                      "nothing moved", "old path still there")
    if before.kind != NO_SUCH_FILE:
        return Hooked("refused", before.reason + "; nothing moved", before.kind)
    return None


def _look(path: Path, which: str, *, follow: bool = True) -> os.stat_result | Hooked:
    """Given a path from a webhook and how to call it in a reason, return its stat (`follow`: of what
    a link points to), or why it cannot be had: kind NO_SUCH_FILE, or the error's, the path named."""
    try:
        return os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return Hooked("refused", f"{which}no such file here", NO_SUCH_FILE)
    except (OSError, ValueError, UnicodeError) as exc:  # too long, a NUL byte, a loop of links, ...
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return Hooked("refused", f"{which}cannot look at {shown(path)} here ({what}); check the path the "
                      "other program sends", what)


def _map_hint(config: Config) -> str:
    if config.http is not None and config.http.path_map:
        return "; check that http.path_map maps the other program's paths to this machine's"
    return "; if the other program sees the media under another path, map it with http.path_map"
