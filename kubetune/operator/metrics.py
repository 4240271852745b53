"""Prometheus metrics, served in the text exposition format on `/metrics`.

prometheus_client is not a dependency of the operator image; the three metric shapes needed here
(a labelled gauge, a labelled counter, a labelled histogram) fit in a page, so they are written out.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp.web

from kubetune.operator.status import PHASES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """The operator's metrics. Thread-safe: sync handlers run in Kopf's thread pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._errors: dict[str, int] = defaultdict(int)
        self._reconciles: dict[str, int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)

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
        with self._lock:
            self._reconciles[handler] += 1
            if failed:
                self._errors[handler] += 1
            buckets = self._buckets.setdefault(handler, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, bound in enumerate((*LATENCY_BUCKETS, math.inf)):
                if seconds <= bound:
                    buckets[i] += 1
            self._sums[handler] += seconds

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

    def render(self) -> str:
        lines = [
            "# HELP kubetune_finetunejobs FineTuneJobs seen by this operator, by phase.",
            "# TYPE kubetune_finetunejobs gauge",
        ]
        for phase, count in self.jobs_by_phase().items():
            lines.append(f"kubetune_finetunejobs{_labels((('phase', phase),))} {count}")
        with self._lock:
            lines += [
                "# HELP kubetune_reconcile_total Handler runs, by handler.",
                "# TYPE kubetune_reconcile_total counter",
                *(
                    f"kubetune_reconcile_total{_labels((('handler', h),))} {n}"
                    for h, n in sorted(self._reconciles.items())
                ),
                "# HELP kubetune_reconcile_errors_total Handler runs that raised (and will be retried).",
                "# TYPE kubetune_reconcile_errors_total counter",
                *(
                    f"kubetune_reconcile_errors_total{_labels((('handler', h),))} {self._errors.get(h, 0)}"
                    for h in sorted(self._reconciles)
                ),
                "# HELP kubetune_reconcile_duration_seconds Handler latency.",
                "# TYPE kubetune_reconcile_duration_seconds histogram",
            ]
            for handler, buckets in sorted(self._buckets.items()):
                for bound, count in zip((*LATENCY_BUCKETS, math.inf), buckets, strict=False):
                    labels = _labels((("handler", handler), ("le", _number(bound))))
                    lines.append(f"kubetune_reconcile_duration_seconds_bucket{labels} {count}")
                lines.append(
                    f"kubetune_reconcile_duration_seconds_sum{_labels((('handler', handler),))} "
                    f"{self._sums[handler]:.6f}"
                )
                lines.append(
                    f"kubetune_reconcile_duration_seconds_count{_labels((('handler', handler),))} {buckets[-1]}"
                )
        return "\n".join(lines) + "\n"


async def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> aiohttp.web.AppRunner:
    """Start `/metrics` on the port; the caller keeps the runner and calls `cleanup()` on shutdown."""

    async def handle(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(
            text=metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Format": "text/plain; version=0.0.4"},
        )

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", handle)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner
