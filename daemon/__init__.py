"""subwatch: watches media folders and writes Whisper subtitles beside new files."""

__version__ = "0.1.0"
