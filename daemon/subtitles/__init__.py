"""Subtitle stage: cues from Whisper's words, their renderings, sidecar names, and safe writes.

Modules, in the order the data flows through them:

- script: how text is written (scripts without spaces, display widths, punctuation).
- tokens: Whisper's words as timed tokens, cut by character where the script allows.
- cues: tokens grouped into cues that follow broadcast practice (`CueRules`,
  `build_cues`); repeated-line loops kept once (daemon.loops).
- render: cues as SubRip, WebVTT, plain text and JSON (`RENDERERS`).
- naming: a sidecar's path, as Jellyfin, Plex and Emby read it or as the
  folder's `name_template` says (`NamingRules`, `sidecar_path`), and where it
  goes when its video is renamed (`moved_sidecar`).
- existing: the subtitles already beside a video (`existing_subtitles`).
- writing: atomic writes that never clobber a subtitle the user put there,
  folders made as needed (`write_sidecar`, `make_folders`).
- ledger: which sidecars and folders are subwatch's, kept in the job queue's
  database; every write, move and removal goes through it (`SidecarLedger`).

The package imports nothing from the daemon but daemon.datatypes,
daemon.languages and daemon.loops, and nothing heavy (no whisper, no torch).
"""

from daemon.subtitles.cues import CueRules, build_cues
from daemon.subtitles.existing import SUBTITLE_EXTENSIONS, existing_subtitles
from daemon.subtitles.ledger import JobSidecars, SidecarLedger, SidecarRecords, Sidecars, Unrecorded
from daemon.subtitles.naming import LangCode, NamingRules, language_tag, moved_sidecar, sidecar_path
from daemon.subtitles.render import RENDERERS, Renderer, render_json, render_srt, render_txt, render_vtt
from daemon.subtitles.writing import (
    TEMP_PREFIX,
    SidecarFolderError,
    file_sha256,
    make_folders,
    remove_stale_temps,
    write_sidecar,
)

__all__ = [
    "RENDERERS",
    "SUBTITLE_EXTENSIONS",
    "TEMP_PREFIX",
    "CueRules",
    "JobSidecars",
    "LangCode",
    "NamingRules",
    "Renderer",
    "SidecarFolderError",
    "SidecarLedger",
    "SidecarRecords",
    "Sidecars",
    "Unrecorded",
    "build_cues",
    "existing_subtitles",
    "file_sha256",
    "language_tag",
    "make_folders",
    "moved_sidecar",
    "remove_stale_temps",
    "render_json",
    "render_srt",
    "render_txt",
    "render_vtt",
    "sidecar_path",
    "write_sidecar",
]
