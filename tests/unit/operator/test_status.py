"""The pure status mapping: PyTorchJob conditions + trainer progress -> FineTuneJob status."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator import backends
from kubetune.operator import status as st

NOW = "2026-01-01T12:00:00Z"
EARLIER = "2026-01-01T11:00:00Z"


def pj(*conditions: tuple[str, str, str], suspend: bool = False, **status: Any) -> dict[str, Any]:
    conds = [
        {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": EARLIER}
        for t, r, m in conditions
    ]
    return {
        "metadata": {"name": "j", "annotations": {st.APPLIED_SPEC_ANNOTATION: st.spec_fingerprint(SPEC)}},
        "spec": {"runPolicy": {"suspend": suspend}},
        "status": {"conditions": conds, **status},
    }


SPEC: dict[str, Any] = {"model": {"source": "m"}, "output": {"uri": "s3://out/j/"}, "suspend": False}


def observed(pytorchjob: dict[str, Any] | None, status: dict[str, Any] | None = None, **spec: Any) -> st.Observed:
    return st.Observed(
        generation=3,
        spec={**SPEC, **spec},
        status=status if status is not None else {"pytorchJob": "j", "phase": "Pending"},
        job_api=backends.PYTORCHJOB,
        job_name="j",
        job=pytorchjob,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("conditions", "suspend", "user_suspended", "stage", "phase"),
    [
        ((), False, False, None, "Pending"),
        ((("Created", "PyTorchJobCreated", ""),), False, False, None, "Pending"),
        ((("Created", "c", ""), ("Running", "r", "")), False, False, "training", "Training"),
        ((("Running", "r", ""),), False, False, "exporting", "Exporting"),
        ((("Running", "r", ""),), False, False, "uploading", "Exporting"),
        ((("Restarting", "r", ""),), False, False, None, "Training"),
        ((("Running", "r", ""), ("Succeeded", "s", "")), False, False, "done", "Succeeded"),
        ((("Running", "r", ""), ("Failed", "f", "")), False, False, "failed", "Failed"),
        ((("Created", "c", ""),), True, True, None, "Suspended"),
        ((("Created", "c", ""),), True, False, None, "Queued"),  # Kueue holds it
        ((("Suspended", "s", ""),), False, False, None, "Suspended"),  # resumed, pods not back yet
        ((("Suspended", "s", ""), ("Failed", "f", "")), False, False, None, "Failed"),
    ],
)
def test_pytorchjob_phase(
    conditions: tuple[tuple[str, str, str], ...], suspend: bool, user_suspended: bool, stage: str | None, phase: str
) -> None:
    got, _ = st.pytorchjob_phase(pj(*conditions, suspend=suspend), user_suspended=user_suspended, stage=stage)
    assert got == phase


def test_no_pytorchjob_is_pending() -> None:
    assert st.pytorchjob_phase(None, user_suspended=False, stage=None) == ("Pending", None)


def test_running_carries_reason_message_and_start_time() -> None:
    obs = observed(pj(("Running", "PyTorchJobRunning", "PyTorchJob default/j is running."), startTime=EARLIER))
    out, events = st.observe(obs)
    assert out["phase"] == "Training"
    assert out["startTime"] == EARLIER
    running = st.find_condition(out["conditions"], "Running")
    assert running is not None
    assert (running["status"], running["reason"], running["message"]) == (
        "True",
        "PyTorchJobRunning",
        "PyTorchJob default/j is running.",
    )
    assert running["observedGeneration"] == 3
    assert out["observedGeneration"] == 3
    assert events == [st.Event("Normal", "Training", "Training started")]


def test_failed_prefers_the_trainers_last_words() -> None:
    status = {"pytorchJob": "j", "phase": "Training", "progress": {"stage": "failed", "message": "OOM at step 3"}}
    obs = observed(pj(("Failed", "PyTorchJobFailed", "1 Master replica(s) failed.")), status)
    out, events = st.observe(obs)
    failed = st.find_condition(out["conditions"], "Failed")
    assert failed is not None
    assert failed["reason"] == "PyTorchJobFailed"
    assert failed["message"] == "OOM at step 3 | 1 Master replica(s) failed."
    assert out["completionTime"] == NOW
    assert events[0].type == "Warning"
    assert events[0].message == "Failed: OOM at step 3 | 1 Master replica(s) failed."


def test_progress_message_of_a_live_stage_is_not_a_failure_reason() -> None:
    msg = st.failure_message({"message": "pod evicted"}, {"stage": "training", "message": "step 5"})
    assert msg == "pod evicted"


def test_succeeded_names_the_model_and_keeps_pytorchjob_times() -> None:
    status = {"pytorchJob": "j", "phase": "Exporting", "outputs": {"model": "s3://out/j/model/"}}
    out, _ = st.observe(observed(pj(("Succeeded", "PyTorchJobSucceeded", "done"), completionTime=EARLIER), status))
    assert out["phase"] == "Succeeded"
    assert out["completionTime"] == EARLIER
    ok = st.find_condition(out["conditions"], "Succeeded")
    assert ok is not None and ok["message"] == "model at s3://out/j/model/"


def test_operator_never_writes_trainer_fields() -> None:
    status = {"pytorchJob": "j", "progress": {"step": 1}, "outputs": {"model": "x"}, "dataReport": {"rowsRead": 1}}
    out, _ = st.observe(observed(pj(("Running", "r", "")), status))
    assert set(out) <= set(st.OPERATOR_FIELDS)


def test_same_state_twice_is_a_no_op_patch() -> None:
    first, _ = st.observe(observed(pj(("Running", "r", "m"))))
    status = {**first, "progress": {"step": 2}}
    second, events = st.observe(observed(pj(("Running", "r", "m")), status))
    assert st.status_patch(status, second) == {}
    assert events == []


def test_condition_transition_time_moves_only_with_status() -> None:
    conds = [st.condition("Running", True, "a", "", EARLIER)]
    same = st.set_condition(conds, st.condition("Running", True, "b", "new message", NOW))
    assert same[0]["lastTransitionTime"] == EARLIER and same[0]["reason"] == "b"
    flipped = st.set_condition(conds, st.condition("Running", False, "c", "", NOW))
    assert flipped[0]["lastTransitionTime"] == NOW


def test_invalid_spec_is_final_until_fixed() -> None:
    invalid = st.invalid_spec_status(["spec.x: bad"], 1, None, EARLIER)
    assert invalid["phase"] == "Failed"
    assert st.find_condition(invalid["conditions"], "Validated")["reason"] == "InvalidSpec"  # type: ignore[index]
    assert st.observe(observed(None, invalid)) == (invalid, [])
    fixed = st.created_status(backends.PYTORCHJOB, "j", 2, invalid, NOW)
    assert fixed["phase"] == "Pending" and fixed["completionTime"] is None
    assert st.find_condition(fixed["conditions"], "Failed") is None


def test_spec_edits_are_named_and_refused() -> None:
    obs = observed(pj(("Running", "r", "")), training={"learningRate": 0.1})
    out, events = st.observe(obs)
    refused = st.find_condition(out["conditions"], "SpecApplied")
    assert refused is not None and refused["status"] == "False" and refused["reason"] == "SpecImmutable"
    assert refused["message"].startswith("spec.training.learningRate changed after PyTorchJob j was created")
    assert any(e.reason == "SpecImmutable" for e in events)


def test_suspend_is_the_one_mutable_field() -> None:
    out, _ = st.observe(observed(pj(("Running", "r", "")), suspend=True))
    assert st.find_condition(out["conditions"], "SpecApplied")["status"] == "True"  # type: ignore[index]


@pytest.mark.parametrize(
    ("old", "new", "paths"),
    [
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {"a": 2}, ["spec.a"]),
        ({}, {"t": {"lr": 1, "e": 2}}, ["spec.t.e", "spec.t.lr"]),
        ({"d": [1]}, {"d": [2]}, ["spec.d"]),
        ({"a": {"b": 1}}, {"a": 3}, ["spec.a"]),
    ],
)
def test_changed_paths(old: dict[str, Any], new: dict[str, Any], paths: list[str]) -> None:
    assert st.changed_paths(old, new) == paths


def test_resume_event_names_the_resume() -> None:
    obs = observed(pj(("Running", "r", "")), {"pytorchJob": "j", "phase": "Suspended"})
    assert st.observe(obs)[1] == [st.Event("Normal", "Resumed", "Resumed: training again")]


def test_pod_failure_reason_and_last_line() -> None:
    pods = [
        {
            "metadata": {"name": "j-worker-0"},
            "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]},
        },
        {
            "metadata": {"name": "j-master-0"},
            "status": {
                "containerStatuses": [
                    {
                        "state": {"running": {}},
                        "lastState": {
                            "terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "step 1\nstep 2"}
                        },
                    }
                ]
            },
        },
    ]
    assert st.pod_failure(pods) == ("OOMKilled", "pod j-master-0: OOMKilled (exit code 137): step 2")
    assert st.pod_failure(pods[:1]) is None


def _pod_terminated(name: str, terminated: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}


@pytest.mark.parametrize("message", ["", " ", "\n \n\t", None])
def test_pod_failure_with_a_blank_termination_message(message: str | None) -> None:
    # A whitespace-only message used to raise IndexError, which aborted every status sync of the job.
    terminated: dict[str, Any] = {"exitCode": 1, "reason": "Error", "message": message}
    pods = [_pod_terminated("j-master-0", terminated)]
    assert st.pod_failure(pods) == ("Error", "pod j-master-0: Error (exit code 1)")


def test_pod_failure_skips_trailing_blank_lines() -> None:
    terminated = {"exitCode": 2, "reason": "Error", "message": "loading\n  CUDA out of memory  \n \n"}
    pods = [_pod_terminated("j-master-0", terminated)]
    assert st.pod_failure(pods) == ("Error", "pod j-master-0: Error (exit code 2): CUDA out of memory")


def test_failed_condition_is_written_once() -> None:
    first = observed(pj(("Failed", "PyTorchJobFailed", "failed")), {"pytorchJob": "j", "phase": "Training"})
    first.pod_failure = ("OOMKilled", "pod j-master-0: OOMKilled (exit code 137)")
    status, _ = st.observe(first)
    assert st.find_condition(status["conditions"], "Failed")["reason"] == "OOMKilled"  # type: ignore[index]
    again, _ = st.observe(observed(pj(("Failed", "PyTorchJobFailed", "failed")), status))
    assert st.status_patch(status, again) == {}


@pytest.mark.parametrize(
    ("conditions", "ready", "stalled"),
    [
        ((("Running", "r", ""),), "False", "False"),
        ((("Running", "r", ""), ("Succeeded", "PyTorchJobSucceeded", "done")), "True", "False"),
        ((("Running", "r", ""), ("Failed", "PyTorchJobFailed", "1 Master replica(s) failed.")), "False", "True"),
    ],
)
def test_ready_and_stalled_follow_kstatus(
    conditions: tuple[tuple[str, str, str], ...], ready: str, stalled: str
) -> None:
    out, _ = st.observe(observed(pj(*conditions)))
    ready_cond = st.find_condition(out["conditions"], "Ready")
    stalled_cond = st.find_condition(out["conditions"], "Stalled")
    assert ready_cond is not None and ready_cond["status"] == ready
    assert stalled_cond is not None and stalled_cond["status"] == stalled
    assert ready_cond["observedGeneration"] == 3
    if stalled == "True":
        assert stalled_cond["message"] == "1 Master replica(s) failed."


def test_invalid_spec_stalls_and_a_fix_clears_it() -> None:
    invalid = st.invalid_spec_status(["spec.x: bad"], 1, None, EARLIER)
    assert st.find_condition(invalid["conditions"], "Stalled")["status"] == "True"  # type: ignore[index]
    fixed = st.created_status(backends.PYTORCHJOB, "j", 2, invalid, NOW)
    assert st.find_condition(fixed["conditions"], "Stalled")["status"] == "False"  # type: ignore[index]
    assert st.find_condition(fixed["conditions"], "Ready")["status"] == "False"  # type: ignore[index]
