"""The Prometheus exposition, and the trainer-side reporter's throttling and resilience."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.operator.metrics import Metrics
from kubetune.reporting import StatusReporter, format_eta, progress_event


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed as Prometheus parses the exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_exposition() -> None:
    m = Metrics()
    m.set_phase("ns", "a", "Training")
    m.set_phase("ns", "b", "Training")
    m.set_phase("ns", "c", "Failed")
    m.forget("ns", "c")
    m.observe("status", 0.02, failed=False)
    with pytest.raises(RuntimeError), m.reconcile("create"):
        raise RuntimeError("API down")
    text = m.render().decode()
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("kubetune_finetunejobs", phase="Training") == 2
    assert value("kubetune_finetunejobs", phase="Failed") == 0
    assert value("kubetune_reconcile_errors_total", handler="create") == 1
    assert value("kubetune_reconcile_errors_total", handler="status") == 0
    assert value("kubetune_reconcile_duration_seconds_bucket", handler="status", le="0.01") == 0
    assert value("kubetune_reconcile_duration_seconds_bucket", handler="status", le="0.025") == 1
    assert value("kubetune_reconcile_duration_seconds_bucket", handler="status", le="+Inf") == 1
    assert value("kubetune_reconcile_duration_seconds_count", handler="status") == 1
    assert "# TYPE kubetune_reconcile_duration_seconds histogram" in text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, None), (-1, None), (12, "12s"), (245, "4m05s"), (3720, "1h02m"), (90000, "25h00m")]
)
def test_format_eta(seconds: float | None, text: str | None) -> None:
    assert format_eta(seconds) == text


def test_progress_event_fills_printer_columns_and_the_reporter_rounds_the_loss() -> None:
    out = progress_event("training", step=84, total=200, etaSeconds=61, loss=1.234567)
    assert out["display"] == "42% 84/200"
    assert out["percent"] == 42.0
    assert out["eta"] == "1m01s"
    assert out["updatedAt"].endswith("Z")
    api = Recorder()
    StatusReporter("j", "ns", custom_objects_api=api).report(progress=out, force=True)
    assert api.patches[0]["status"]["progress"]["loss"] == 1.2346


class Recorder:
    """Stands in for CustomObjectsApi: records patches, fails on demand."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail = False

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            raise ConnectionError("connection refused")
        assert kwargs["_content_type"] == "application/merge-patch+json"
        self.patches.append(args[5])


def test_reporter_throttles_but_never_loses_the_last_update() -> None:
    api = Recorder()
    rep = StatusReporter("j", "ns", custom_objects_api=api, min_interval=60)
    rep.report(progress={"stage": "training", "step": 1, "totalSteps": 10})  # first: sent
    rep.report(progress={"stage": "training", "step": 2, "totalSteps": 10})  # throttled
    rep.report(progress={"stage": "training", "step": 3, "totalSteps": 10})  # throttled
    assert len(api.patches) == 1
    rep.report(progress={"stage": "exporting", "step": 10, "totalSteps": 10})  # stage change: sent
    assert api.patches[-1]["status"]["progress"]["stage"] == "exporting"
    rep.report(outputs={"model": "s3://b/m/"})  # throttled
    assert len(api.patches) == 2
    rep.close()  # flushed
    assert api.patches[-1] == {"status": {"outputs": {"model": "s3://b/m/"}}}
    fields = {k for p in api.patches for k in p["status"]}
    assert fields <= {"progress", "dataReport", "outputs"}, "the trainer writes only its own fields"


def test_reporter_survives_api_failures_and_retries_later() -> None:
    api = Recorder()
    rep = StatusReporter("j", "ns", custom_objects_api=api, min_interval=0.05)
    api.fail = True
    rep.report(progress={"stage": "training", "step": 1}, force=True)  # must not raise
    assert rep.failures == 1 and api.patches == []
    api.fail = False
    time.sleep(0.06)
    rep.report(data_report={"rowsRead": 5})
    assert api.patches and api.patches[0]["status"]["progress"]["step"] == 1
    assert api.patches[0]["status"]["dataReport"] == {"rowsRead": 5}


def test_reporter_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETUNE_STATUS_REPORTING", raising=False)
    assert StatusReporter.from_env() is None
    monkeypatch.setenv("KUBETUNE_STATUS_REPORTING", "kubernetes")
    monkeypatch.setenv("KUBETUNE_JOB_NAME", "job-1")
    monkeypatch.setenv("KUBETUNE_JOB_NAMESPACE", "team")
    rep = StatusReporter.from_env()
    assert rep is not None and (rep.name, rep.namespace) == ("job-1", "team")
