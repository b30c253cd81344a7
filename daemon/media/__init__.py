"""Media stage: ask ffprobe what a file holds, and decode its audio with ffmpeg onto disk.

Every ffmpeg/ffprobe call goes through `tool.run_tool`: it opens the one file it
is given and nothing else (formats that refer to other files are refused, see
`tool`), runs for a bounded time in its own process group, and keeps only the
end of stderr for the error message.

- `probing`: `probe` (ffprobe's report as a MediaInfo) and `choose_audio_stream`.
- `decoding`: `load_audio` (one stream as 16 kHz mono float32 in an unnamed
  temporary file, daemon.samples.DiskSamples, never whole in memory) and
  `decode_upload` (the same for an uploaded file, capped in length).
- `errors`: MediaError and its kinds (MediaGone, Refused, TooLong).
"""

from daemon.media.decoding import SAMPLE_RATE, decode_timeout, decode_upload, load_audio
from daemon.media.errors import MediaError, MediaGone, Refused, TooLong
from daemon.media.probing import choose_audio_stream, probe, read_head, to_iso639_1
from daemon.media.tool import SINGLE_FILE_FORMATS, run_tool

__all__ = [
    "SAMPLE_RATE", "SINGLE_FILE_FORMATS", "MediaError", "MediaGone", "Refused", "TooLong",
    "choose_audio_stream", "decode_timeout", "decode_upload", "load_audio", "probe", "read_head",
    "run_tool", "to_iso639_1",
]
