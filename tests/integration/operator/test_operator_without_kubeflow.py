"""The operator started in a cluster without the Kubeflow Training Operator: it says what to
install, keeps retrying with backoff (no crash loop), and proceeds once the CRD appears. Also:
a namespaced operator leaves other namespaces alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.operator.harness import Cluster, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator(cluster: Cluster, operator_factory: Callable[[], OperatorProcess]) -> Iterator[OperatorProcess]:
    cluster.install_crds(pytorchjob=False)
    op = operator_factory().start()
    yield op
    print(op.log_tail())


def test_waits_for_the_pytorchjob_crd_then_proceeds(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.create_job(job_manifest("early"))
    waiting = wait_for(
        "the CRD-missing condition",
        lambda: (c := cluster.condition("early", "PyTorchJobCreated")) and c["status"] == "False" and c,
    )
    assert waiting["reason"] == "PyTorchJobCRDMissing"
    assert "Kubeflow Training Operator" in waiting["message"]
    assert "pytorchjobs.kubeflow.org" in waiting["message"]
    assert cluster.phase("early") == "Pending"
    wait_for("a retry", lambda: operator.metric("kubetune_reconcile_errors_total", handler="create") >= 2, timeout=10)
    assert operator.proc is not None and operator.proc.poll() is None, "waiting must not crash the operator"

    cluster.install_pytorchjob_crd()
    installed = time.monotonic()
    wait_for("the PyTorchJob after the CRD appears", lambda: cluster.pytorchjob("early"), timeout=30)
    assert time.monotonic() - installed < 30
    created = wait_for(
        "PyTorchJobCreated True",
        lambda: (c := cluster.condition("early", "PyTorchJobCreated")) and c["status"] == "True" and c,
    )
    assert created["message"] == "Created PyTorchJob early"

    # The operator also started watching the new kind: PyTorchJob status reaches the FineTuneJob.
    cluster.set_pytorchjob_condition("early", "Running", "PyTorchJobRunning", "running")
    wait_for("phase Training", lambda: cluster.phase("early") == "Training")


def test_other_namespaces_are_left_alone(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.core.create_namespace({"metadata": {"name": "elsewhere"}})
    manifest = job_manifest("outsider")
    cluster.custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", "elsewhere", "finetunejobs", manifest)
    cluster.create_job(job_manifest("insider"))
    wait_for("the watched namespace's job handled", lambda: cluster.pytorchjob("insider"))
    outsider = cluster.custom.get_namespaced_custom_object(
        "kubetune.io", "v1alpha1", "elsewhere", "finetunejobs", "outsider"
    )
    assert "status" not in outsider
    assert not any(k.startswith("kubetune.io/") for k in outsider["metadata"].get("annotations") or {})
