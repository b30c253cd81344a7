"""Subtitle stage: cues from Whisper's words, their renderings, sidecar names, and safe writes.

Modules, in the order the data flows through them:

- script: how text is written (scripts without spaces, display widths, punctuation).
- tokens: Whisper's words as timed tokens, cut by character where the script allows.
- cues: tokens grouped into cues that follow broadcast practice (`CueRules`,
  `build_cues`); repeated-line loops kept once (daemon.loops).
- render: cues as SubRip, WebVTT, plain text and JSON (`RENDERERS`).
- naming: a sidecar's path, as Jellyfin, Plex and Emby read it or as the
  folder's `name_template` says (`NamingRules`, `sidecar_path`).
- existing: the subtitles already beside a video (`existing_subtitles`).
- writing: atomic writes that never clobber a subtitle the user put there
  (`write_sidecar`).

The package imports nothing from the daemon but daemon.datatypes,
daemon.languages and daemon.loops, and nothing heavy (no whisper, no torch).
"""

from daemon.subtitles.cues import CueRules, build_cues
from daemon.subtitles.existing import SUBTITLE_EXTENSIONS, existing_subtitles
from daemon.subtitles.naming import LangCode, NamingRules, language_tag, sidecar_path
from daemon.subtitles.render import RENDERERS, Renderer, render_json, render_srt, render_txt, render_vtt
from daemon.subtitles.writing import (
    TEMP_PREFIX,
    file_sha256,
    remove_stale_temps,
    write_sidecar,
)

__all__ = [
    "RENDERERS",
    "SUBTITLE_EXTENSIONS",
    "TEMP_PREFIX",
    "CueRules",
    "LangCode",
    "NamingRules",
    "Renderer",
    "build_cues",
    "existing_subtitles",
    "file_sha256",
    "language_tag",
    "remove_stale_temps",
    "render_json",
    "render_srt",
    "render_txt",
    "render_vtt",
    "sidecar_path",
    "write_sidecar",
]
