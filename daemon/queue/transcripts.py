"""Finished transcripts, kept for copies of the same content and for `subwatch rewrite`.

A transcript is keyed by content fingerprint and the rules that shape decoding
(`TranscriptKey`): a copy of the same content at another path, and `subwatch
rewrite` after a layout change, write sidecars from it without decoding.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from daemon.datatypes import Segment, Transcript, TranscriptKey, Word
from daemon.queue.database import Database, QueueError
from daemon.queue.engines import Connection


def key_text(key: TranscriptKey) -> str:
    """Given the rules that shape a transcript, return the text stored for them (equal for equal rules)."""
    return json.dumps(asdict(key), sort_keys=True)


def transcript_json(transcript: Transcript) -> str:
    """Given a transcript, return it as compact JSON (each word as [start, end, text, probability]).

    Floats are written with repr's shortest exact digits, so `transcript_from_json` gives back
    an equal Transcript.
    """
    return json.dumps({
        "language": transcript.language,
        "language_probability": transcript.language_probability,
        "duration": transcript.duration,
        "speech_seconds": transcript.speech_seconds,
        "uncovered_seconds": transcript.uncovered_seconds,
        "segments": [
            {"start": s.start, "end": s.end, "text": s.text,
             "words": [[w.start, w.end, w.text, w.probability] for w in s.words]}
            for s in transcript.segments
        ],
    }, separators=(",", ":"))


def transcript_from_json(text: str) -> Transcript:
    """Given text made by `transcript_json`, return the Transcript. Raise ValueError if it is not."""
    try:
        data = json.loads(text)
        segments = tuple(
            Segment(s["start"], s["end"], s["text"], tuple(Word(*w) for w in s["words"]))
            for s in data["segments"]
        )
        return Transcript(
            segments, data["language"], data["language_probability"], data["duration"],
            data["speech_seconds"], data["uncovered_seconds"],
        )
    except (TypeError, KeyError) as err:
        raise ValueError(f"not a stored transcript: {err!r}") from err


def store(conn: Connection, content: str, key: TranscriptKey, transcript: Transcript) -> None:
    """Given a content fingerprint, the rules that shaped a transcript of it and the transcript,
    store it (replacing one stored under the same fingerprint and rules), inside the caller's transaction."""
    conn.execute(
        "INSERT INTO transcripts (fingerprint, rules, transcript, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (fingerprint, rules) DO UPDATE SET transcript = excluded.transcript, "
        "created_at = excluded.created_at",
        (content, key_text(key), transcript_json(transcript), time.time()),
    )


def drop_unused(conn: Connection, content: str) -> None:
    """Given a content fingerprint, delete the transcripts stored for it unless a job still has it."""
    conn.execute(
        "DELETE FROM transcripts WHERE fingerprint = ? "
        "AND NOT EXISTS (SELECT 1 FROM jobs WHERE fingerprint = ?)",
        (content, content),
    )


class TranscriptStore:
    """The `transcripts` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def store(self, content: str, key: TranscriptKey, transcript: Transcript) -> None:
        """Given a content fingerprint, the rules that shaped a transcript of it and the transcript,
        store it (replacing one stored under the same fingerprint and rules)."""
        with self._db.write() as conn:
            store(conn, content, key, transcript)

    def get(self, content: str, key: TranscriptKey) -> Transcript | None:
        """Given a content fingerprint and the rules that shape a transcript, return the stored
        transcript, or None if there is none. Raise QueueError if the stored one cannot be read."""
        row = self._db.query(
            "SELECT transcript FROM transcripts WHERE fingerprint = ? AND rules = ?",
            (content, key_text(key)),
        ).fetchone()
        return None if row is None else self._parsed(row["transcript"], content)

    def of_job(self, job_id: int) -> Transcript | None:
        """Given a job id, return the stored transcript its sidecars were written from, or None if
        there is none (not done, or done before transcripts were stored). Raise QueueError if the
        stored one cannot be read."""
        row = self._db.query(
            "SELECT t.transcript, t.fingerprint FROM jobs j JOIN transcripts t "
            "ON t.fingerprint = j.fingerprint AND t.rules = j.transcript_rules WHERE j.id = ?",
            (job_id,),
        ).fetchone()
        return None if row is None else self._parsed(row["transcript"], row["fingerprint"])

    def _parsed(self, text: str, content: str) -> Transcript:
        """Given a stored transcript's JSON, return the Transcript. Raise QueueError if it is unreadable."""
        try:
            return transcript_from_json(text)
        except ValueError as err:
            raise QueueError(
                f"the transcript stored for content {content} in {self._db.where} cannot be read ({err}); "
                "`subwatch forget` its file and scan it again to transcribe it anew"
            ) from err
