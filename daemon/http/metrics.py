"""Prometheus' /metrics, computed from the queue database on each scrape.

Counts and sums come from the job table (daemon.queue.stats), not from counters
kept in memory: they survive restarts and agree with `subwatch status`. A
"counter" here can go down when jobs are forgotten or retried; Prometheus'
rate() reads that as a reset, as after a restart.

Names follow Prometheus' conventions (base units, `_total` on counters); no
label holds a path (a model given as a file is named by its file name).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from daemon.datatypes import JobState
from daemon.http.context import DaemonView
from daemon.http.snapshot import gpu_memory, model_name
from daemon.jobsjson import nodes_json
from daemon.queue.stats import realtime_factors

# From seconds to hours: a clip, an episode on a GPU, a film on a CPU.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
# Seconds of media per second taken: a slow CPU is below 1, a large GPU batch in the hundreds.
REALTIME_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)


class QueueCollector(Collector):
    """The metrics of one running daemon, read when Prometheus scrapes."""

    def __init__(self, daemon: DaemonView) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Metric]:
        jobs = self._daemon.jobs
        stats = jobs.stats
        counts = jobs.counts()
        by_state = GaugeMetricFamily("subwatch_jobs", "Jobs in the queue, by state.", labels=["state"])
        for state in JobState:
            by_state.add_metric([state.value], counts.get(state, 0))
        yield by_state

        finished = CounterMetricFamily("subwatch_jobs_finished", "Jobs that ended, by outcome.",
                                       labels=["outcome"])
        for state in (JobState.DONE, JobState.FAILED, JobState.SKIPPED):
            finished.add_metric([state.value], counts.get(state, 0))
        yield finished

        media, speech = stats.totals()
        yield CounterMetricFamily("subwatch_media_seconds", "Seconds of media subtitled (done jobs).",
                                  value=media)
        yield CounterMetricFamily("subwatch_speech_seconds", "Seconds of speech in the media subtitled.",
                                  value=speech)

        timings = stats.done_timings()
        yield histogram("subwatch_job_duration_seconds", "Seconds each done job took to transcribe.",
                        [taken for _, taken in timings], DURATION_BUCKETS)
        yield histogram("subwatch_realtime_factor", "Media seconds per second taken, per done job.",
                        realtime_factors(timings), REALTIME_BUCKETS)

        oldest = stats.oldest_pending_since()
        yield GaugeMetricFamily("subwatch_queue_oldest_pending_seconds",
                                "How long the oldest pending job has waited (0 when none waits).",
                                value=max(0.0, time.time() - oldest) if oldest is not None else 0.0)

        loaded = GaugeMetricFamily("subwatch_model_loaded", "1 for each model loaded, by model and device.",
                                   labels=["model", "device"])
        for model in self._daemon.models.loaded():
            loaded.add_metric([model_name(model.spec), model.device], 1)
        yield loaded

        memory = GaugeMetricFamily("subwatch_gpu_memory_bytes", "GPU memory this process holds, by card.",
                                   labels=["device"])
        for device, size in gpu_memory().items():
            memory.add_metric([device], size)
        yield memory

        # Every node sharing the queue, as each node sees them: /metrics on any host shows the cluster.
        up = GaugeMetricFamily("subwatch_node_up", "1 for each daemon using the queue that is alive, 0 once "
                               "it stopped or its heartbeat lapsed.", labels=["node"])
        holding = GaugeMetricFamily("subwatch_node_running_jobs", "Files each daemon holds now.",
                                    labels=["node"])
        for node in nodes_json(jobs):
            up.add_metric([node["name"]], 0 if node["gone"] else 1)
            holding.add_metric([node["name"]], len(node["running"]))
        yield up
        yield holding

        told = CounterMetricFamily("subwatch_media_server_notifications",
                                   "Media servers told of new sidecars, by server kind and outcome.",
                                   labels=["kind", "outcome"])
        for kind, outcome, n in stats.server_outcomes():
            told.add_metric([kind, outcome], n)
        yield told


def histogram(name: str, documentation: str, values: Sequence[float], bounds: Sequence[float]) -> Metric:
    """Given observations and the buckets' upper bounds, return them as a Prometheus histogram."""
    buckets = [(_bound(le), sum(1 for v in values if v <= le)) for le in bounds]
    buckets.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=float(sum(values)))


def _bound(value: float) -> str:
    return repr(float(value))


def metrics_routes(daemon: DaemonView) -> list[BaseRoute]:
    """Return the /metrics route."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(daemon))

    def scrape() -> bytes:
        try:
            return generate_latest(registry)
        finally:
            daemon.jobs.close_thread()  # a pool thread: its connection is not kept between scrapes

    async def metrics(request: Request) -> Response:
        return Response(await run_in_threadpool(scrape), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]
