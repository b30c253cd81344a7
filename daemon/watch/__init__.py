"""Notice files that have finished arriving in watched folders, and only those.

The watcher does no work itself: it reports, and `daemon.intake` decides what
becomes a job. The modules, in the order the data flows through them:

- `rules`: what a watched folder is (`WatchSpec`) and which names in it can
  be media: hidden, temporary, system and non-media names are ruled out, a
  known media extension is taken, any other is left to ffprobe. No disk reads.
- `filesystems`: which filesystem a folder is on (mountinfo), so network and
  FUSE mounts are polled, and a folder's identity, which a remount changes.
- `walk`: the one way a folder is listed, for a scan (the daemon's backfill,
  `subwatch scan`) and for the polling observer alike.
- `folder`: one folder's supervisor thread and watchdog observer (inotify or
  polling), restarted when the folder is deleted, re-created or remounted;
  its events are handed on under the configured path.
- `stability`: `StabilityTracker`, which holds each arriving file until no
  event has touched it for `settle_seconds` and its size and mtime held still.
- `watcher`: `Watcher`, which feeds the events to the tracker and calls the
  daemon back (`on_ready`, `on_deleted`, `on_moved`) on its one dispatcher
  thread. It never runs ffprobe.
"""

from daemon.datatypes import MEDIA_EXTENSIONS
from daemon.watch.filesystems import (
    filesystem_type,
    filesystem_type_in,
    folder_identity,
    is_polled_filesystem,
    needs_polling,
    parse_mountinfo,
)
from daemon.watch.rules import NON_MEDIA_EXTENSIONS, WatchSpec, name_verdict, shown
from daemon.watch.stability import StabilityTracker
from daemon.watch.walk import FolderLister, scan
from daemon.watch.watcher import RECHECK_SECONDS, Watcher

__all__ = [
    "MEDIA_EXTENSIONS",
    "NON_MEDIA_EXTENSIONS",
    "RECHECK_SECONDS",
    "FolderLister",
    "StabilityTracker",
    "WatchSpec",
    "Watcher",
    "filesystem_type",
    "filesystem_type_in",
    "folder_identity",
    "is_polled_filesystem",
    "name_verdict",
    "needs_polling",
    "parse_mountinfo",
    "scan",
    "shown",
]
