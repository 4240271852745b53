"""A started job that does not train yet says why (its pods' reason), and a suspend that a queue
(Kueue) undid is not reported as done."""

from __future__ import annotations

from typing import Any

from kubetune.operator import backends
from kubetune.operator import status as st
from tests.unit.operator.test_status import SPEC, observed, pj


def _pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Pending", **status}}


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"name": "pytorch", "state": {"waiting": {"reason": reason, "message": message}}}


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
}


def test_pod_waiting_names_the_scheduler_verdict() -> None:
    pods = [_pod("j-master-0", containerStatuses=[_waiting("ContainerCreating")]), _pod("j-worker-0")]
    pods[1]["status"]["conditions"] = [UNSCHEDULABLE]
    assert st.pod_waiting(pods) == (
        "Unschedulable",
        "pod j-worker-0: 0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
    )


def test_pod_waiting_names_image_and_secret_problems() -> None:
    pull = _waiting("ImagePullBackOff", 'Back-off pulling image "trainer:nope"')
    assert st.pod_waiting([_pod("j-node-0-0", containerStatuses=[pull])]) == (
        "ImagePullBackOff",
        'pod j-node-0-0: ImagePullBackOff: Back-off pulling image "trainer:nope"',
    )
    secret = _waiting("CreateContainerConfigError", 'secret "s3-creds" not found')
    assert st.pod_waiting([_pod("j-node-0-0", initContainerStatuses=[secret])]) == (
        "CreateContainerConfigError",
        'pod j-node-0-0: CreateContainerConfigError: secret "s3-creds" not found',
    )


def test_pods_that_are_starting_are_not_stuck() -> None:
    pods = [_pod("a", containerStatuses=[_waiting("ContainerCreating")]), _pod("b")]
    assert st.pod_waiting(pods) is None


def test_a_pending_job_carries_its_pods_reason_and_warns_once() -> None:
    reason = ("ImagePullBackOff", "pod j-master-0: ImagePullBackOff: Back-off pulling image")
    obs = observed(pj(("Created", "PyTorchJobCreated", "")))
    obs.pod_waiting = reason
    out, events = st.observe(obs)
    running = st.find_condition(out["conditions"], "Running") or {}
    assert out["phase"] == "Pending"
    assert (running["status"], running["reason"], running["message"]) == ("False", *reason)
    assert "ImagePullBackOff" in (st.find_condition(out["conditions"], "Ready") or {})["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "ImagePullBackOff")]
    obs.status = {**obs.status, **out}
    assert st.observe(obs)[1] == [], "the same reason again is no news"


def _pj_with_replicas(master_active: int, worker_active: int) -> dict[str, Any]:
    job = pj(("Created", "c", ""), ("Running", "PyTorchJobRunning", "running"))
    job["spec"]["pytorchReplicaSpecs"] = {"Master": {"replicas": 1}, "Worker": {"replicas": 3}}
    job["status"]["replicaStatuses"] = {"Master": {"active": master_active}, "Worker": {"active": worker_active}}
    return job


def test_master_running_with_workers_pending_is_not_training() -> None:
    assert st.observe(observed(_pj_with_replicas(1, 2)))[0]["phase"] == "Pending"
    assert st.observe(observed(_pj_with_replicas(1, 3)))[0]["phase"] == "Training"


def test_a_suspend_undone_by_kueue_is_not_reported_as_suspended() -> None:
    # spec.suspend is true, but Kueue un-suspended the admitted PyTorchJob (its Suspended condition
    # is still True until the training operator starts the pods again).
    job = pj(("Suspended", "PyTorchJobSuspended", "suspended"), suspend=False)
    out, _ = st.observe(observed(job, suspend=True))
    suspended = st.find_condition(out["conditions"], "Suspended") or {}
    assert out["phase"] != "Suspended"
    assert (suspended["status"], suspended["reason"]) == ("False", "Suspending")
    assert "not suspended" in suspended["message"]
    # Once Kueue has stopped it (Workload deactivated), it is.
    out, _ = st.observe(observed(pj(("Suspended", "s", ""), suspend=True), suspend=True))
    assert out["phase"] == "Suspended"


def test_trainjob_suspend_undone_by_kueue_is_not_suspended() -> None:
    trainjob = {
        "metadata": {"name": "j", "annotations": {st.APPLIED_SPEC_ANNOTATION: st.spec_fingerprint(SPEC)}},
        "spec": {"suspend": False},
        "status": {"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended"}]},
    }
    phase, _ = st.job_phase(backends.TRAINJOB, trainjob, user_suspended=True, stage=None)
    assert phase == "Pending"
    phase, _ = st.job_phase(backends.TRAINJOB, trainjob, user_suspended=False, stage=None)
    assert phase == "Suspended", "resumed by the user: the pods are on their way back"
