"""The Kubeflow Trainer v2 backend: a TrainJob (trainer.kubeflow.org/v1alpha1) and the namespaced
TrainingRuntime it runs on, both rendered per job.

Why a per-job TrainingRuntime rather than a shared ClusterTrainingRuntime: v2.3's per-job override
(`spec.runtimePatches`) cannot set priorityClassName, hostNetwork/dnsPolicy, the container's
imagePullPolicy or termination message, and a job's /dev/shm size would have to patch a volume the
runtime owns. The runtime carries the same pod template as the PyTorchJob's replicas; the TrainJob's
`spec.trainer` carries what v2 models there (image, command, args, env, nodes, processes, resources),
which the Trainer controller merges into the runtime's `node` container.

The Trainer's torch plugin finds the training container by the replicated job's ancestor label and
the container name `node`, and injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and
PET_MASTER_ADDR/PORT into it (never MASTER_ADDR: see the launcher).
"""

from __future__ import annotations

from typing import Any

from kubetune.api import v1alpha1 as api
from kubetune.render.pod import (
    LAUNCHER,
    RESTART_POLICY,
    RenderSettings,
    child_names,
    container_resources,
    metadata,
    pod_template,
    queue_labels,
    trainer_command,
    trainer_env,
)

GROUP = "trainer.kubeflow.org"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "TrainJob"
RUNTIME_KIND = "TrainingRuntime"
CONTAINER_NAME = "node"  # the torch plugin's trainer container
REPLICATED_JOB = "node"
ANCESTOR_LABEL = f"{GROUP}/trainjob-ancestor-step"
# Fields of the training container that the TrainJob's spec.trainer sets, so the runtime leaves them out.
TRAINER_FIELDS = ("image", "command", "args", "env", "resources")
# Whole-job restarts on top of backoffLimit's pod restarts, so the worst case is (1 + this) x backoffLimit.
JOBSET_RESTARTS = 1


def build_trainingruntime(job: api.FineTuneJob, settings: RenderSettings) -> dict[str, Any]:
    spec = job.spec
    template = pod_template(job, settings, CONTAINER_NAME)
    template["spec"]["restartPolicy"] = RESTART_POLICY
    container = template["spec"]["containers"][0]
    for field in TRAINER_FIELDS:
        container.pop(field, None)
    jobset: dict[str, Any] = {
        "replicatedJobs": [
            {
                "name": REPLICATED_JOB,
                "template": {
                    "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                    # One Job, one pod per node (the torch plugin sets its size from trainer.numNodes);
                    # with OnFailure the Job counts container restarts against backoffLimit.
                    "spec": {"backoffLimit": spec.run_policy.backoff_limit, "template": template},
                },
            }
        ],
    }
    # The Job fails once its pods' restarts exhaust backoffLimit (say, a pod that keeps failing on a
    # broken machine); JobSet then re-creates every pod, free to land elsewhere, this many times
    # before the TrainJob fails. Each re-creation resumes from the last complete checkpoint.
    jobset["failurePolicy"] = {"maxRestarts": JOBSET_RESTARTS, "restartStrategy": "Recreate"}
    if spec.run_policy.ttl_seconds_after_finished is not None:
        # Removes the JobSet (and its pods) once finished; the TrainJob stays, with its result.
        jobset["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    return {
        "apiVersion": API_VERSION,
        "kind": RUNTIME_KIND,
        "metadata": metadata(job, child_names(job).job, {f"{GROUP}/framework": "torch"}),
        "spec": {
            "mlPolicy": {"numNodes": spec.resources.nodes, "torch": {}},
            "template": {"spec": jobset},
        },
    }


def build_trainjob(job: api.FineTuneJob, settings: RenderSettings) -> dict[str, Any]:
    spec = job.spec
    name = child_names(job).job
    command = trainer_command(job, settings)
    trainer: dict[str, Any] = {
        "image": spec.image or settings.trainer_image,
        "command": command[: len(LAUNCHER)],
        "args": command[len(LAUNCHER) :],
        "env": trainer_env(job),
        "numNodes": spec.resources.nodes,
        "numProcPerNode": spec.resources.procs_per_node,
    }
    resources = container_resources(spec)
    if resources:
        trainer["resourcesPerNode"] = resources
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        # Kueue's trainjob integration reads its labels from the TrainJob.
        "metadata": metadata(job, name, queue_labels(job)),
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": name},
            "suspend": spec.suspend,
            "trainer": trainer,
        },
    }
    if spec.run_policy.active_deadline_seconds is not None:
        out["spec"]["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    return out
