"""The transcriber pool: the loader, one worker per device, and what happens to a failed batch.

- `pool`: `Transcribers`, the loader thread (claims jobs, decodes their audio ahead of the
  model) and a worker thread per device, each with its decoder child (daemon.decoders);
- `workers`: which worker takes which decoded file (pure rules of device strings) and the
  prefetch buffer between loader and workers, bounded by seconds of audio;
- `blame`: after a failed batch, what each of its files gets: retried, requeued as a suspect,
  or charged a crash.
"""

from daemon.transcribers.pool import Activity, Cancelled, Transcribers, Worker, stored_transcript, waiting

__all__ = ["Activity", "Cancelled", "Transcribers", "Worker", "stored_transcript", "waiting"]
