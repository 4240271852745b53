"""The operator on a cluster with Kubeflow Trainer v2 (and the v1 Training Operator beside it):
`auto` picks TrainJob, the test plays the Trainer controller (TrainJob conditions and jobsStatus)
and Kueue (suspending a TrainJob it has not admitted); everything asserted is what the API holds.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubetune.api.validation import parse_job
from kubetune.render import TRAINJOB, RenderSettings, build_children
from tests.integration.operator.harness import TJ, Cluster, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(cluster: Cluster, operator_factory: Callable[[], OperatorProcess]) -> Iterator[OperatorProcess]:
    cluster.install_crds()  # FineTuneJob and PyTorchJob
    cluster.install_trainer_crds()
    op = operator_factory().start()
    yield op
    print(op.log_tail())


def _as_rendered(obj: dict[str, Any]) -> dict[str, Any]:
    """A child as stored, minus what the API server and the operator add."""
    out = {k: v for k, v in obj.items() if k != "status"}
    drop = ("uid", "resourceVersion", "creationTimestamp", "generation", "ownerReferences", "annotations")
    out["metadata"] = {k: v for k, v in out["metadata"].items() if k not in drop}
    return out


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.job(name).get("status") or {}


def test_auto_creates_the_rendered_trainjob_on_its_runtime(cluster: Cluster, operator: OperatorProcess) -> None:
    created = cluster.create_job(job_manifest("tj-create"))
    trainjob = wait_for("the TrainJob", lambda: cluster.trainjob("tj-create"))
    expected = build_children(
        parse_job({k: v for k, v in created.items() if k != "status"}),
        RenderSettings(trainer_image="registry.local/kubetune/trainer:test"),
        TRAINJOB,
    )
    runtime = cluster.trainingruntime("tj-create")
    assert runtime is not None
    assert _as_rendered(runtime) == _as_rendered(expected[-2])
    assert _as_rendered(trainjob) == _as_rendered(expected[-1])
    for child in (runtime, trainjob):
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [created["metadata"]["uid"]]
    assert cluster.pytorchjob("tj-create") is None, "auto prefers TrainJob where both are served"

    status = wait_for(
        "status.trainJob", lambda: _status(cluster, "tj-create").get("trainJob") and _status(cluster, "tj-create")
    )
    assert status["backend"] == "trainjob" and status["phase"] == "Pending" and "pytorchJob" not in status
    made = cluster.condition("tj-create", "PyTorchJobCreated") or {}
    assert made["status"] == "True" and made["message"] == "Created TrainJob tj-create"
    wait_for("the Created event", lambda: "Created TrainJob tj-create" in cluster.event_messages("tj-create"))

    # `kubectl get ftj -o wide`: the server prints the CRD's columns, Backend among the wide ones.
    url = f"{cluster.api.configuration.host}/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs/tj-create"
    request = urllib.request.Request(url, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    with urllib.request.urlopen(request, timeout=5) as response:
        table = json.load(response)
    columns = [c["name"] for c in table["columnDefinitions"]]
    backend = next(c for c in table["columnDefinitions"] if c["name"] == "Backend")
    assert backend["priority"] == 1, "shown by -o wide"
    assert table["rows"][0]["cells"][columns.index("Backend")] == "trainjob"


def test_trainjob_status_becomes_the_phases(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("tj-life"))
    wait_for("the TrainJob", lambda: cluster.trainjob("tj-life"))
    wait_for("status.trainJob", lambda: _status(cluster, "tj-life").get("trainJob"))
    cluster.set_trainjob_status("tj-life", ready=0)  # pods scheduled, not all ready: not training yet
    wait_for("observed", lambda: (cluster.condition("tj-life", "SpecApplied") or {}).get("status") == "True")
    assert cluster.phase("tj-life") == "Pending"

    cluster.set_trainjob_status("tj-life", ready=1)
    wait_for("phase Training", lambda: cluster.phase("tj-life") == "Training")
    assert (cluster.condition("tj-life", "Running") or {}).get("status") == "True"
    assert _status(cluster, "tj-life").get("startTime")

    cluster.set_trainjob_status("tj-life", ("Complete", "JobSetCompleted", "jobset completed"), ready=0, active=0)
    wait_for("phase Succeeded", lambda: cluster.phase("tj-life") == "Succeeded")
    status = _status(cluster, "tj-life")
    assert status["completionTime"]
    assert (cluster.condition("tj-life", "Ready") or {}).get("status") == "True"


def test_a_failed_trainjob_names_the_pods_reason(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("tj-oom"))
    wait_for("the TrainJob", lambda: cluster.trainjob("tj-oom"))
    cluster.set_trainjob_status("tj-oom", ready=1)
    wait_for("phase Training", lambda: cluster.phase("tj-oom") == "Training")
    cluster.create_failed_pod(
        "tj-oom-node-0-1-abcde", "tj-oom", label="jobset.sigs.k8s.io/jobset-name", exitCode=137, reason="OOMKilled"
    )
    cluster.set_trainjob_status("tj-oom", ("Failed", "JobSetFailed", "jobset failed"), ready=0, active=0)
    wait_for("phase Failed", lambda: cluster.phase("tj-oom") == "Failed")
    failed = cluster.condition("tj-oom", "Failed") or {}
    assert failed["reason"] == "OOMKilled"
    assert "pod tj-oom-node-0-1-abcde: OOMKilled (exit code 137)" in failed["message"]
    assert "jobset failed" in failed["message"]


def test_suspend_reaches_the_trainjob_and_kueue_holding_it_is_queued(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.create_job(job_manifest("tj-pause", queueName="team-a"))
    trainjob = wait_for("the TrainJob", lambda: cluster.trainjob("tj-pause"))
    assert trainjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # Kueue suspends a TrainJob it has not admitted yet.
    cluster.custom.patch_namespaced_custom_object(
        *TJ,
        "default",
        "trainjobs",
        "tj-pause",
        {"spec": {"suspend": True}},
        _content_type="application/merge-patch+json",
    )
    wait_for("phase Queued", lambda: cluster.phase("tj-pause") == "Queued")
    cluster.custom.patch_namespaced_custom_object(
        *TJ,
        "default",
        "trainjobs",
        "tj-pause",
        {"spec": {"suspend": False}},
        _content_type="application/merge-patch+json",
    )
    cluster.set_trainjob_status("tj-pause", ready=1)
    wait_for("phase Training", lambda: cluster.phase("tj-pause") == "Training")

    cluster.patch_job("tj-pause", {"spec": {"suspend": True}})
    wait_for("suspend propagated", lambda: (cluster.trainjob("tj-pause") or {})["spec"]["suspend"] is True)
    cluster.set_trainjob_status("tj-pause", ("Suspended", "Suspended", "TrainJob is suspended"), ready=0, active=0)
    wait_for("phase Suspended", lambda: cluster.phase("tj-pause") == "Suspended")
    wait_for("the Suspending event", lambda: "Suspending TrainJob tj-pause" in cluster.event_messages("tj-pause"))

    cluster.patch_job("tj-pause", {"spec": {"suspend": False}})
    wait_for("resume propagated", lambda: (cluster.trainjob("tj-pause") or {})["spec"]["suspend"] is False)
    cluster.set_trainjob_status("tj-pause", ("Suspended", "Resumed", "TrainJob is resumed", "False"), ready=1)
    wait_for("phase Training again", lambda: cluster.phase("tj-pause") == "Training")


def test_a_deleted_trainjob_is_made_again_once(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("tj-lost"))
    first = wait_for("the TrainJob", lambda: cluster.trainjob("tj-lost"))
    runtime = cluster.trainingruntime("tj-lost")
    assert runtime is not None
    cluster.set_trainjob_status("tj-lost", ready=1)
    wait_for("phase Training", lambda: cluster.phase("tj-lost") == "Training")

    cluster.custom.delete_namespaced_custom_object(*TJ, "default", "trainjobs", "tj-lost")
    again = wait_for(
        "a new TrainJob",
        lambda: (tj := cluster.trainjob("tj-lost")) and tj["metadata"]["uid"] != first["metadata"]["uid"] and tj,
    )
    assert again["spec"] == first["spec"], "the same job again (it resumes from the checkpoints)"
    assert (cluster.trainingruntime("tj-lost") or {})["metadata"]["uid"] == runtime["metadata"]["uid"], "adopted"
    wait_for(
        "the Recreated event",
        lambda: "Re-created TrainJob tj-lost (it was deleted)" in cluster.event_messages("tj-lost"),
    )
    owners = [ref["name"] for tj in cluster.trainjobs() for ref in tj["metadata"]["ownerReferences"]]
    assert owners.count("tj-lost") == 1


def test_an_explicit_backend_is_kept(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("tj-v1", backend="pytorchjob"))
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob("tj-v1"))
    wait_for("status.backend", lambda: _status(cluster, "tj-v1").get("backend") == "pytorchjob")
    assert _status(cluster, "tj-v1")["pytorchJob"] == "tj-v1"
    assert cluster.trainjob("tj-v1") is None
