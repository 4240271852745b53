"""A started job whose pods do not run says why while it waits, not only once it failed: the test
plays the scheduler and the kubelet (pod conditions and container waiting states) and the
Kubeflow controllers; no training job status changes, so the operator has to look at the pods."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.operator.harness import Cluster, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration
# The operator looks at a Pending job's pods every 10 s (handlers.WAITING_INTERVAL).
WITHIN = 30.0


@pytest.fixture(scope="module")
def operator(cluster: Cluster, operator_factory: Callable[[], OperatorProcess]) -> Iterator[OperatorProcess]:
    cluster.install_crds()
    cluster.install_trainer_crds()
    op = operator_factory().start()
    yield op
    print(op.log_tail())


def _running(cluster: Cluster, name: str) -> tuple[str, str, str]:
    cond = cluster.condition(name, "Running") or {}
    return cond.get("status", ""), cond.get("reason", ""), cond.get("message", "")


def test_unschedulable_workers_hold_a_running_master_in_pending(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("wait-gpu", backend="pytorchjob"))  # 2 nodes: master + 1 worker
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("wait-gpu"))
    scheduler_says = "0/8 nodes are available: 8 Insufficient nvidia.com/gpu."
    cluster.create_waiting_pod(
        "wait-gpu-worker-0",
        "wait-gpu",
        "training.kubeflow.org/job-name",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduler_says}],
    )
    # The Training Operator says Running once the master runs; the worker is still Pending.
    cluster.set_pytorchjob_condition(
        "wait-gpu",
        "Running",
        "PyTorchJobRunning",
        "PyTorchJob wait-gpu is running.",
        replicaStatuses={"Master": {"active": 1}, "Worker": {"active": 0}},
    )
    wait_for(
        "the scheduler's message in status",
        lambda: _running(cluster, "wait-gpu") == ("False", "Unschedulable", f"pod wait-gpu-worker-0: {scheduler_says}"),
        timeout=WITHIN,
    )
    assert cluster.phase("wait-gpu") == "Pending", "not Training while a worker waits for a GPU"
    wait_for("the Warning event", lambda: any(e.reason == "Unschedulable" for e in cluster.events("wait-gpu")))

    cluster.set_pytorchjob_condition(
        "wait-gpu",
        "Running",
        "PyTorchJobRunning",
        "running",
        replicaStatuses={"Master": {"active": 1}, "Worker": {"active": 1}},
    )
    wait_for("phase Training once every replica runs", lambda: cluster.phase("wait-gpu") == "Training")


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "registry.local/kubetune/trainer:test"'),
        ("CreateContainerConfigError", 'secret "s3-credentials" not found'),
    ],
)
def test_a_trainjob_whose_container_cannot_start_says_why(
    cluster: Cluster, operator: OperatorProcess, reason: str, message: str
) -> None:
    name = f"wait-{reason.lower()}"
    cluster.create_job(job_manifest(name, backend="trainjob"))
    wait_for("the TrainJob", lambda: cluster.trainjob(name))
    pod = f"{name}-node-0-0-x"
    cluster.create_waiting_pod(pod, name, "jobset.sigs.k8s.io/jobset-name", waiting={"reason": "ErrImagePull"})
    cluster.set_trainjob_status(name, ready=0)
    wait_for("the first reason", lambda: _running(cluster, name)[1] == "ErrImagePull", timeout=WITHIN)
    # The kubelet's next verdict changes no TrainJob status: only the operator's timer finds it.
    container = {"name": "trainer", "image": "trainer", "imageID": "", "ready": False, "restartCount": 0}
    container["state"] = {"waiting": {"reason": reason, "message": message}}
    cluster.core.patch_namespaced_pod_status(
        pod, "default", {"status": {"containerStatuses": [container]}}, _content_type="application/merge-patch+json"
    )
    wait_for(
        f"{reason} in status",
        lambda: _running(cluster, name) == ("False", reason, f"pod {pod}: {reason}: {message}"),
        timeout=WITHIN,
    )
    assert cluster.phase(name) == "Pending"
    ready = cluster.condition(name, "Ready") or {}
    assert reason in ready["message"]
