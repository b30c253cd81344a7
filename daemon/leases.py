"""The node's heartbeat: the leases on the jobs it holds renewed, and other nodes' lapsed leases
taken back into the queue.

Every claim holds a lease (queue.lifecycle) that lapses `node.lease_seconds` after its last renewal,
by the database's clock. This thread renews this node's several times per lease, so only a node
that died, hung or lost the database for longer than a lease loses its jobs; and it puts back the
jobs of any other node whose lease lapsed, each with its journal line, so the queue does not wait
for that node to come back. A node that comes back after losing a lease finds the job's token
changed, and writes nothing for it (`JobQueue.holds`, `LeaseLost`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from daemon.logs import job_log
from daemon.queue import JobQueue, QueueError, Recovered

log = logging.getLogger("subwatch")

BEATS_PER_LEASE = 6  # renewed this often per lease: a few missed beats (a slow database) cost nothing


class LeaseKeeper:
    """A thread that renews this node's leases and reaps other nodes' lapsed ones until stopped."""

    def __init__(self, jobs: JobQueue, reaped: Callable[[], None],
                 workers: Callable[[], list[str]] = list) -> None:
        self._jobs = jobs
        self._reaped = reaped  # called after a gone node's jobs were put back or its owed sends taken
        self._workers = workers  # the devices this node's transcribers run on, for the status
        self._stop = threading.Event()
        self._soon = threading.Event()  # beat now, not at the next interval (stop, or workers changed)
        self._thread: threading.Thread | None = None
        self._failing = False  # said once when the database fails, once when it works again

    @property
    def failing(self) -> bool:
        """True while the job database did not answer this node's last heartbeat (/healthz says so)."""
        return self._failing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._soon.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def beat_soon(self) -> None:
        """Beat now instead of at the next interval: the workers changed, and the status should say."""
        self._soon.set()

    def beat(self) -> list[Recovered]:
        """Renew this node's leases, put back other nodes' lapsed jobs (each logged) and take over what
        a gone node owed (notifications, media server updates); return the jobs put back."""
        self._jobs.renew(self._workers())
        reaped = self._jobs.reap_lapsed()
        for back in reaped:
            job_log(log, "requeued", back.job.path, lapsed_note(back), back.job.id, level=logging.WARNING)
        adopted = self._jobs.adopt_owed()
        if adopted:
            log.info("took over %d notification(s) and media server update(s) a gone node owed", adopted)
        if reaped or adopted:
            self._reaped()
        return reaped

    def _run(self) -> None:
        interval = self._jobs.lease_seconds / BEATS_PER_LEASE
        while True:
            self._soon.wait(interval)
            self._soon.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
            except QueueError as exc:
                if not self._failing:
                    log.error("the job database %s cannot be used: %s; the daemon goes on, holding new "
                              "arrivals, and tries again every %.0f s", self._jobs.where, exc, interval)
                self._failing = True
                continue
            except Exception:  # a fault of ours must not end the heartbeat: its leases would lapse
                log.exception("unexpected error renewing this node's leases")
                continue
            if self._failing:
                log.info("the job database %s is back", self._jobs.where)
                self._failing = False


def lapsed_note(back: Recovered) -> str:
    """Given a job put back because its node's lease lapsed, return the details of its line."""
    where = "before the model began on it" if back.cause == "waiting" else "while the model transcribed it"
    alone = "; transcribed alone next" if back.cause == "in_model" else ""
    return (f"node {back.job.node or '?'} stopped renewing its lease {where}{alone}; attempt not counted, "
            "and no crash: a node's death is no evidence against a file")
