"""What a failed batch says about its files: retried, requeued as suspects, or charged a crash.

Decoding runs in a child process per worker (daemon.decoders). When a batch fails:

- the child died of a fault (a crashing signal, the OOM killer, a hang) with several
  files in it: any of them may be the cause, so all go back to the queue as suspects,
  each to be transcribed alone, and none is charged;
- it died of a fault with one file in it: that file is charged a crash, and fails
  once it has `max_attempts` of them ("the decoder crashed (SIGSEGV) 3 times on this
  file alone"); after running out of memory it is first tried again with one window
  at a time;
- it died of something else (a SIGKILL or SIGTERM from outside, a stop): evidence
  against nothing; the files go back to the queue, attempts not counted;
- the child lived and reported an error: out of memory as above; anything else fails
  a lone file as any error would, and a batch is tried again one file at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from daemon.config import Config
from daemon.datatypes import Job, JobState
from daemon.decoders import Death, DecoderDied, DecoderError
from daemon.decoders.deaths import out_of_memory
from daemon.logs import job_log
from daemon.outcomes import Outcomes, one_line_error
from daemon.queue import JobQueue, until_answered

log = logging.getLogger("subwatch")

Live = list[tuple[Any, Job]]  # (pipeline.Prepared, its running job)
SMALLEST_BATCH = 1  # windows decoded at once when a file is tried again after running out of memory


class Blame:
    """Decides, after a failed batch, what happens to each of its files (see the module's docstring)."""

    def __init__(self, jobs: JobQueue, outcomes: Outcomes, config: Callable[[], Config]) -> None:
        self._jobs = jobs
        self._outcomes = outcomes
        self._config = config

    def after(self, device: str, live: Live, failure: BaseException,
              batch_size: int | None) -> list[tuple[Live, int | None]]:
        """Given a batch that raised `failure` on `device`, put each file where it belongs; return the
        batches the worker transcribes again at once, each with its batch size cap."""
        if isinstance(failure, DecoderDied):
            return self._died(device, live, failure.death, batch_size)
        if isinstance(failure, DecoderError) and failure.kind == "memory":
            return self._died(device, live, out_of_memory(str(failure)), batch_size)
        error = one_line_error(failure)
        if len(live) == 1:
            self._outcomes.failed(live[0][1], error, permanent=False)
            return []
        log.warning("a batch of %d files failed (%s); transcribing them one at a time", len(live), error)
        return [([one], batch_size) for one in live]

    def _died(self, device: str, live: Live, death: Death,
              batch_size: int | None) -> list[tuple[Live, int | None]]:
        if not death.fault:
            for _, job in live:
                self._outcomes.release(job.id, f"its decoder on {device} was stopped ({death.cause}); "
                                               "returned to the queue, nothing charged")
            return []
        if len(live) > 1:
            if death.memory:
                return [([one], None) for one in live]  # alone, each with all the memory there is
            others = len(live) - 1
            for job in until_answered(lambda: self._jobs.suspect([job.id for _, job in live])):
                job_log(log, "requeued", job.path, f"in its decoder on {device} when it died ({death.cause}) "
                        f"with {others} other file(s); transcribed alone next, nothing charged", job.id)
            return []
        return self._alone(device, live, death, batch_size)

    def _alone(self, device: str, live: Live, death: Death,
               batch_size: int | None) -> list[tuple[Live, int | None]]:
        item, job = live[0]
        if death.memory and batch_size != SMALLEST_BATCH:
            job_log(log, "retrying", job.path, f"ran out of memory alone on {device} ({death.cause}); "
                    "trying again with one window at a time", job.id, level=logging.WARNING)
            return [(live, SMALLEST_BATCH)]
        current = until_answered(lambda: self._jobs.get(job.id)) or job
        max_attempts = self._config().max_attempts
        charged = until_answered(
            lambda: self._jobs.charge_crash(job.id, death.charge(current.crashes + 1), max_attempts))
        if charged.state is JobState.FAILED:
            self._outcomes.report_failure(charged, charged.error or "")
            return []
        job_log(log, "requeued", job.path, f"its decoder on {device} died with it alone ({death.cause}): "
                f"crash {charged.crashes} of {max_attempts}; transcribed alone again", job.id,
                level=logging.WARNING)
        return []
