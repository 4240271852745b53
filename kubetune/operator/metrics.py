"""Prometheus metrics on `/metrics`, through prometheus_client (exposition format and content type
by construction):

- `kubetune_finetunejobs{phase}`: FineTuneJobs this operator has seen, by phase (every phase listed);
- `kubetune_reconcile_total{handler}`, `kubetune_reconcile_errors_total{handler}`: handler runs,
  and those that raised (Kopf retries them);
- `kubetune_reconcile_duration_seconds{handler}`: handler latency (histogram).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import aiohttp.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubetune.api.conditions import PHASES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _PhaseCollector(Collector):
    """The job count per phase, computed from the phase of each job at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "kubetune_finetunejobs", "FineTuneJobs seen by this operator, by phase.", labels=["phase"]
        )
        for phase, count in self.metrics.jobs_by_phase().items():
            family.add_metric([phase], count)
        yield family


class Metrics:
    """The operator's metrics, in a registry of their own. Thread-safe: sync handlers run in
    Kopf's thread pool."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self.reconciles = Counter(
            "kubetune_reconcile", "Handler runs, by handler.", ["handler"], registry=self.registry
        )
        self.errors = Counter(
            "kubetune_reconcile_errors",
            "Handler runs that raised (and will be retried).",
            ["handler"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Handler latency.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_PhaseCollector(self))

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def forget(self, namespace: str, name: str) -> None:
        self.set_phase(namespace, name, None)

    def jobs_by_phase(self) -> dict[str, int]:
        with self._lock:
            counts = dict.fromkeys(PHASES, 0)
            for phase in self._phases.values():
                counts[phase] = counts.get(phase, 0) + 1
            return counts

    def observe(self, handler: str, seconds: float, *, failed: bool) -> None:
        self.reconciles.labels(handler).inc()
        errors = self.errors.labels(handler)  # listed at 0 from the first run, not the first error
        if failed:
            errors.inc()
        self.duration.labels(handler).observe(seconds)

    @contextmanager
    def reconcile(self, handler: str) -> Iterator[None]:
        """Time a handler; an exception counts as a reconcile error and propagates (Kopf retries)."""
        start = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        finally:
            self.observe(handler, time.perf_counter() - start, failed=failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> aiohttp.web.AppRunner:
    """Start `/metrics` on the port; the caller keeps the runner and calls `cleanup()` on shutdown.

    Served from Kopf's own event loop (aiohttp), not prometheus_client's extra HTTP thread."""

    async def handle(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", handle)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
