"""The trainer's side of `kubectl get ftj`: rank 0 merge-patches its FineTuneJob's status.

The pod runs as a per-job ServiceAccount that may only `get` and `patch` the status of this one
FineTuneJob (rendered by `kubetune.render`). The trainer writes `status.progress`,
`status.dataReport` and `status.outputs`; the operator owns every other status field and derives
the phase from the PyTorchJob plus `progress.stage`.

Patches are throttled (one per `min_interval` seconds unless forced or the stage changed; the
latest update waits and is flushed on force/close) and never raise: a training run must not die
because the API server blinked.

    reporter = StatusReporter.from_env()   # None unless KUBETUNE_STATUS_REPORTING=kubernetes
    if reporter:
        reporter.report(progress=progress_event("training", step=10, total=100, loss=1.2))
        reporter.close()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from typing import Any

from kubetune.api.conditions import now_rfc3339

log = logging.getLogger(__name__)

# (connect, read) seconds: a hung API connection must not stall rank 0's training loop.
REQUEST_TIMEOUT = (5.0, 15.0)


def percent_done(step: int, total: int) -> tuple[float, str]:
    """(percent, display) for a printer column: floored, so 199/200 is "99%", never a premature 100%."""
    percent = math.floor(1000 * step / total) / 10
    return percent, f"{100 * step // total}% {step}/{total}"


def format_eta(seconds: float | None) -> str | None:
    """1h02m, 4m05s, 12s: short enough for a printer column. The one formatter trainer and status share."""
    if seconds is None or seconds < 0:
        return None
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_event(stage: str, *, step: int | None = None, total: int | None = None, **fields: Any) -> dict[str, Any]:
    """A Progress dict (camelCase fields of `kubetune.api.v1alpha1.Progress`) with the derived fields
    the printer columns show: percent, display (42% 84/200), eta, updatedAt. None fields are left
    out so a merge-patch never erases the last known value."""
    event: dict[str, Any] = {"stage": stage, "step": step, "totalSteps": total}
    if step is not None and total:
        event["percent"], event["display"] = percent_done(step, total)
    event.update(fields)
    if event.get("etaSeconds") is not None:
        event["eta"] = format_eta(event["etaSeconds"])
    event["updatedAt"] = now_rfc3339()
    return {k: v for k, v in event.items() if v is not None}


class StatusReporter:
    """Merge-patches `status.progress/dataReport/outputs` of one FineTuneJob."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        api_client: Any = None,
        custom_objects_api: Any = None,
        min_interval: float = 10.0,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        """`api_client`/`custom_objects_api` default to a client built from the environment on first use."""
        self.name = name
        self.namespace = namespace
        self.min_interval = min_interval
        self.request_timeout = request_timeout
        self._api_client = api_client
        self._custom: Any = custom_objects_api
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._last_sent = float("-inf")
        self._last_stage: str | None = None
        self.patches_sent = 0
        self.failures = 0

    @classmethod
    def from_env(cls) -> StatusReporter | None:
        if os.environ.get("KUBETUNE_STATUS_REPORTING", "").strip().lower() != "kubernetes":
            return None
        name = os.environ.get("KUBETUNE_JOB_NAME", "").strip()
        namespace = os.environ.get("KUBETUNE_JOB_NAMESPACE", "").strip() or "default"
        if not name:
            log.warning("KUBETUNE_STATUS_REPORTING=kubernetes but KUBETUNE_JOB_NAME is unset: no status reports")
            return None
        return cls(name, namespace)

    def report(
        self,
        *,
        progress: dict[str, Any] | None = None,
        data_report: dict[str, Any] | None = None,
        outputs: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        with self._lock:
            if progress is not None:
                merged = {**self._pending.get("progress", {}), **progress}
                if isinstance(merged.get("loss"), float):
                    merged["loss"] = round(merged["loss"], 4)  # what the Loss column can show
                self._pending["progress"] = merged
            if data_report is not None:
                self._pending["dataReport"] = {**self._pending.get("dataReport", {}), **data_report}
            if outputs is not None:
                self._pending["outputs"] = {**self._pending.get("outputs", {}), **outputs}
            stage = (progress or {}).get("stage")
            stage_changed = stage is not None and stage != self._last_stage
            due = time.monotonic() - self._last_sent >= self.min_interval
            if self._pending and (force or stage_changed or due):
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._flush_locked()

    def close(self) -> None:
        self.flush()
        if self._api_client is not None:
            with contextlib.suppress(Exception):  # closing a pool must not fail the run either
                self._api_client.close()

    def _flush_locked(self) -> None:
        from kubetune.operator.kube import FINETUNEJOB, MERGE_PATCH

        group, version, plural = FINETUNEJOB
        body = {"status": self._pending}
        try:
            custom = self._client()
            custom.patch_namespaced_custom_object_status(
                group,
                version,
                self.namespace,
                plural,
                self.name,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=self.request_timeout,
            )
        except Exception as exc:  # any API/network failure: keep training, retry with the next report
            self.failures += 1
            log.warning(f"could not report status to FineTuneJob {self.namespace}/{self.name}: {_short(exc)}")
            # Back off for one interval instead of hammering; the pending update is kept.
            self._last_sent = time.monotonic()
            self._last_stage = (self._pending.get("progress") or {}).get("stage") or self._last_stage
            return
        self.patches_sent += 1
        self._last_stage = ((self._pending.get("progress") or {}).get("stage")) or self._last_stage
        self._pending = {}
        self._last_sent = time.monotonic()

    def _client(self) -> Any:
        if self._custom is None:
            from kubernetes import client

            from kubetune.operator.kube import connect

            if self._api_client is None:
                self._api_client = connect()
            self._custom = client.CustomObjectsApi(self._api_client)
        return self._custom


def _short(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
