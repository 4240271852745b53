"""spec.suspend on a job Kueue manages: the test plays Kueue (FakeKueue: a Workload per queued job,
admitted at once, its job un-suspended while it is active, evicted and suspended once deactivated)
and the Kubeflow controllers. Kueue would revert a suspend written on the job itself, so the
operator deactivates the job's Workload instead, and the status says Suspended only once it is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.operator.harness import Cluster, FakeKueue, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, operator_factory: Callable[[], OperatorProcess]) -> Iterator[FakeKueue]:
    cluster.install_crds()  # FineTuneJob and PyTorchJob
    cluster.install_trainer_crds()
    fake = FakeKueue(cluster).install().start()
    op = operator_factory().start()
    yield fake
    print(op.log_tail())
    fake.stop()


def _child(cluster: Cluster, backend: str, name: str) -> dict[str, Any] | None:
    return cluster.trainjob(name) if backend == "trainjob" else cluster.pytorchjob(name)


def _suspended(cluster: Cluster, backend: str, name: str) -> bool:
    child = _child(cluster, backend, name) or {}
    spec = child.get("spec") or {}
    return bool(spec.get("suspend") if backend == "trainjob" else (spec.get("runPolicy") or {}).get("suspend"))


def _start_training(cluster: Cluster, backend: str, name: str) -> None:
    """The Kubeflow controller, once Kueue has let the job start."""
    if backend == "trainjob":
        cluster.set_trainjob_status(name, ready=1)
    else:
        cluster.set_pytorchjob_condition(name, "Running", "PyTorchJobRunning", "running")


def _active(kueue: FakeKueue, name: str) -> bool | None:
    workload = kueue.workload(name)
    return None if workload is None else workload["spec"].get("active") is not False


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_suspend_deactivates_the_workload_and_kueue_stops_the_job(
    cluster: Cluster, kueue: FakeKueue, backend: str
) -> None:
    name = f"kq-{backend}"
    cluster.create_job(job_manifest(name, backend=backend, queueName="team-a"))
    wait_for("Kueue's Workload", lambda: _active(kueue, name))
    wait_for(
        "Kueue admitting the job", lambda: _child(cluster, backend, name) and not _suspended(cluster, backend, name)
    )
    _start_training(cluster, backend, name)
    wait_for("phase Training", lambda: cluster.phase(name) == "Training")

    cluster.patch_job(name, {"spec": {"suspend": True}})
    wait_for("the Workload deactivated", lambda: _active(kueue, name) is False)
    wait_for("Kueue suspending the job", lambda: _suspended(cluster, backend, name))
    wait_for("phase Suspended", lambda: cluster.phase(name) == "Suspended")
    assert _active(kueue, name) is False and _suspended(cluster, backend, name), "Kueue did not start it again"
    wait_for(
        "the Suspending event", lambda: any("deactivated Kueue Workload" in m for m in cluster.event_messages(name))
    )

    cluster.patch_job(name, {"spec": {"suspend": False}})
    wait_for("the Workload active again", lambda: _active(kueue, name))
    wait_for("Kueue re-admitting the job", lambda: not _suspended(cluster, backend, name))
    if backend == "pytorchjob":
        cluster.set_pytorchjob_condition(name, "Running", "PyTorchJobRunning", "running again")
    wait_for("phase Training again", lambda: cluster.phase(name) == "Training")


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_a_job_created_suspended_stays_out_of_kueue_until_resumed(
    cluster: Cluster, kueue: FakeKueue, backend: str
) -> None:
    """Kueue admits and un-suspends every queued job it sees and cannot make a Workload inactive
    from the start, so a job created suspended is created without Kueue's labels: Kueue never sees
    it (no Workload, never started). On resume the operator adds the labels and leaves the job
    suspended: Kueue makes the Workload, admits it within quota and starts it."""
    name = f"kq-held-{backend}"
    cluster.create_job(job_manifest(name, backend=backend, queueName="team-a", suspend=True))
    wait_for("the training job", lambda: _child(cluster, backend, name))
    wait_for("phase Suspended", lambda: cluster.phase(name) == "Suspended")
    looked = kueue.passes
    wait_for("Kueue looking at every job twice more", lambda: kueue.passes >= looked + 2)
    child = _child(cluster, backend, name) or {}
    assert "kueue.x-k8s.io/queue-name" not in (child["metadata"].get("labels") or {})
    assert kueue.workload(name) is None and _suspended(cluster, backend, name), "Kueue started a held job"

    cluster.patch_job(name, {"spec": {"suspend": False}})
    wait_for("Kueue's Workload", lambda: _active(kueue, name))
    labels = (_child(cluster, backend, name) or {})["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    wait_for("Kueue admitting the job", lambda: not _suspended(cluster, backend, name))
    _start_training(cluster, backend, name)
    wait_for("phase Training", lambda: cluster.phase(name) == "Training")
    assert any("queued in Kueue LocalQueue team-a" in m for m in cluster.event_messages(name))
