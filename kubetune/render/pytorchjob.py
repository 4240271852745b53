"""The Kubeflow Training Operator v1 backend: one PyTorchJob (kubeflow.org/v1), Master x1 +
Worker x(nodes-1), container `pytorch` running torchrun."""

from __future__ import annotations

from typing import Any

from kubetune.api import v1alpha1 as api
from kubetune.render.pod import RESTART_POLICY, RenderSettings, child_names, metadata, pod_template, queue_labels

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER_NAME = "pytorch"  # the Kubeflow training operator requires this name


def build_pytorchjob(job: api.FineTuneJob, settings: RenderSettings) -> dict[str, Any]:
    spec = job.spec
    res = spec.resources
    template = pod_template(job, settings, CONTAINER_NAME)
    replica_specs: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": RESTART_POLICY, "template": template},
    }
    if res.nodes > 1:
        replica_specs["Worker"] = {"replicas": res.nodes - 1, "restartPolicy": RESTART_POLICY, "template": template}
    run_policy: dict[str, Any] = {
        "backoffLimit": spec.run_policy.backoff_limit,
        # Pods still running when the job ends (workers after the master finished) hold GPUs.
        "cleanPodPolicy": "Running",
        "suspend": spec.suspend,
    }
    if spec.run_policy.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    if spec.run_policy.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata(job, child_names(job).job, queue_labels(job)),
        "spec": {
            "nprocPerNode": str(res.procs_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }
