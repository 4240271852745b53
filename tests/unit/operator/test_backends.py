"""Which backend a job runs on, and the TrainJob's status -> FineTuneJob status (pure parts)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator import backends
from kubetune.operator import status as st

NOW = "2026-01-01T12:00:00Z"
SPEC: dict[str, Any] = {"model": {"source": "org/m"}, "output": {"uri": "s3://out/j/"}, "suspend": False}


def tj(*conditions: tuple[str, str], suspend: bool = False, ready: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {"type": t, "status": "True", "reason": r, "message": f"{t} message", "lastTransitionTime": NOW}
            for t, r in conditions
        ]
    }
    if ready is not None:
        status["jobsStatus"] = [{"name": "node", "ready": ready, "active": 1, "succeeded": 0, "failed": 0}]
    return {
        "kind": "TrainJob",
        "metadata": {"name": "j", "annotations": {st.APPLIED_SPEC_ANNOTATION: st.spec_fingerprint(SPEC)}},
        "spec": {"suspend": suspend},
        "status": status,
    }


@pytest.mark.parametrize(
    ("trainjob", "user_suspended", "stage", "phase"),
    [
        (None, False, None, "Pending"),
        (tj(), False, None, "Pending"),
        (tj(ready=0), False, None, "Pending"),  # pods scheduled or starting, not all ready
        (tj(ready=1), False, "training", "Training"),
        (tj(ready=1), False, "uploading", "Exporting"),
        (tj(("Complete", "JobSetCompleted")), False, "done", "Succeeded"),
        (tj(("Failed", "JobSetFailed")), False, "failed", "Failed"),
        (tj(("Suspended", "Suspended"), suspend=True), True, None, "Suspended"),
        (tj(("Suspended", "Suspended"), suspend=True), False, None, "Queued"),  # Kueue holds it
        (tj(("Suspended", "Suspended")), False, None, "Suspended"),  # resumed, pods not back yet
        (tj(("Suspended", "Suspended"), ("Failed", "DeadlineExceeded")), False, None, "Failed"),
    ],
)
def test_trainjob_phase(trainjob: dict[str, Any] | None, user_suspended: bool, stage: str | None, phase: str) -> None:
    got, _ = st.trainjob_phase(trainjob, user_suspended=user_suspended, stage=stage)
    assert got == phase


def test_status_records_the_backend_and_the_trainjob_and_keeps_its_reasons() -> None:
    failed = tj(("Failed", "DeadlineExceeded"))
    obs = st.Observed(
        generation=2,
        spec=SPEC,
        status={"backend": "trainjob", "trainJob": "j", "phase": "Training"},
        job_api=backends.TRAINJOB,
        job_name="j",
        job=failed,
        now=NOW,
    )
    out, events = st.observe(obs)
    assert out["backend"] == "trainjob" and out["trainJob"] == "j" and "pytorchJob" not in out
    assert out["phase"] == "Failed" and out["completionTime"] == NOW
    cond = st.find_condition(out["conditions"], "Failed") or {}
    assert cond["reason"] == "DeadlineExceeded" and cond["message"] == "Failed message"
    assert [e.reason for e in events] == ["Failed"]
    spec_applied = st.find_condition(out["conditions"], "SpecApplied") or {}
    assert spec_applied["message"] == "the TrainJob matches the spec"


def test_created_status_names_the_child_of_its_backend() -> None:
    out = st.created_status(backends.TRAINJOB, "j", 1, {}, NOW)
    assert out["backend"] == "trainjob" and out["trainJob"] == "j"
    assert (st.find_condition(out["conditions"], "PyTorchJobCreated") or {})["message"] == "Created TrainJob j"


def test_auto_prefers_trainjob_and_an_explicit_backend_waits_for_its_own_api() -> None:
    both, v1_only, none = {"trainjob", "pytorchjob"}, {"pytorchjob"}, set[str]()

    def served(names: set[str]) -> Any:
        return lambda api: api.name in names

    assert backends.choose("auto", served(both)) is backends.TRAINJOB
    assert backends.choose("auto", served(v1_only)) is backends.PYTORCHJOB
    assert backends.choose("auto", served(none)) is None
    assert backends.choose("pytorchjob", served(both)) is backends.PYTORCHJOB
    assert backends.choose("trainjob", served(v1_only)) is None
    neither = backends.missing_message("auto")
    assert "Kubeflow Trainer v2.3" in neither and "Training Operator v1.9" in neither
    assert backends.missing_reason("trainjob") == "TrainJobCRDMissing"
    assert backends.missing_reason("auto") == "PyTorchJobCRDMissing"  # the reason it always had


def test_jobs_made_before_status_backend_existed_are_pytorchjobs() -> None:
    assert backends.recorded({"pytorchJob": "j"}) is backends.PYTORCHJOB
    assert backends.recorded({"backend": "trainjob", "trainJob": "j"}) is backends.TRAINJOB
    assert backends.recorded({}) is None
    assert not backends.child_made({"backend": "trainjob"})


@pytest.mark.parametrize("job_api", [backends.TRAINJOB, backends.PYTORCHJOB])
def test_suspend_patch_lands_where_the_controller_reads_it(job_api: backends.JobApi) -> None:
    from kubetune import render
    from kubetune.api.validation import parse_job

    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j", "namespace": "default"},
        "spec": {**SPEC, "datasets": [{"source": "s3://data/x.jsonl"}], "suspend": True},
    }
    rendered = render.build_children(parse_job(doc), backend=job_api.name)[-1]
    assert job_api.suspended(rendered) is True
    patched = _merge(rendered, job_api.suspend_patch(False))
    assert job_api.suspended(patched) is False


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out
