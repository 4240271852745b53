"""FineTuneJob -> the Kubernetes objects that run it. Pure functions: no I/O, no clients.

`kubetune render` prints `build_children(job, settings, backend)`; the operator creates exactly that
list (adding owner references). What ends up in the cluster:

- ConfigMap `<name>-config`: the fully resolved FineTuneJob the trainer reads (`config.yaml`).
- ServiceAccount/Role/RoleBinding `<name>-trainer` (only without spec.resources.serviceAccountName):
  the pods may `get`/`patch` only this FineTuneJob's status, which is how progress reaches
  `kubectl get ftj`. A user's own ServiceAccount may be shared by several jobs, so it is never
  bound to one job's Role: those pods do not report progress (the phase still follows the job).
- The training job, by backend (`spec.backend`; `auto` is resolved by the caller):
  - `pytorchjob`: PyTorchJob `<name>` (kubeflow.org/v1, Kubeflow Training Operator v1), see pytorchjob.py;
  - `trainjob`: TrainingRuntime + TrainJob `<name>` (trainer.kubeflow.org/v1alpha1, Kubeflow
    Trainer v2), see trainjob.py.
  Both run the same pod (pod.py): torchrun through the launcher, GPUs, /dev/shm, NCCL env,
  credentials through secretKeyRef only, and a securityContext that passes Pod Security "restricted"
  (the trainer image runs as uid 1000).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from kubetune.api import v1alpha1 as api
from kubetune.api.locations import location_kind
from kubetune.render.pod import (
    CONFIG_KEY,
    CONFIG_PATH,
    LABEL_JOB,
    ChildNames,
    RenderSettings,
    child_names,
    job_name,
    labels,
    metadata,
    pod_template,
    reports_status,
    short_name,
    torchrun_args,
    trainer_command,
    trainer_env,
)
from kubetune.render.pytorchjob import build_pytorchjob
from kubetune.render.trainjob import build_trainingruntime, build_trainjob

PYTORCHJOB, TRAINJOB = "pytorchjob", "trainjob"
BACKENDS = (TRAINJOB, PYTORCHJOB)


# --------------------------------------------------------------------------------------------
# ConfigMap
# --------------------------------------------------------------------------------------------


def resolved_config(job: api.FineTuneJob) -> dict[str, Any]:
    """The FineTuneJob as the trainer sees it: every default filled in, no status, no cluster noise."""
    manifest = job.to_manifest()
    manifest["metadata"] = {
        k: v for k, v in manifest["metadata"].items() if k in ("name", "namespace", "uid", "generation")
    }
    manifest["metadata"].setdefault("namespace", job.namespace)
    return manifest


def config_yaml(job: api.FineTuneJob) -> str:
    header = f"# Resolved by kubetune from FineTuneJob {job.namespace}/{job.name}. The trainer reads this file.\n"
    return header + yaml.safe_dump(resolved_config(job), sort_keys=False)


def build_configmap(job: api.FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(job, child_names(job).configmap),
        "data": {CONFIG_KEY: config_yaml(job)},
    }


# --------------------------------------------------------------------------------------------
# RBAC for progress reporting
# --------------------------------------------------------------------------------------------


def build_rbac(job: api.FineTuneJob) -> list[dict[str, Any]]:
    """A per-job ServiceAccount whose Role may read this FineTuneJob and patch its status, nothing else.

    None with spec.resources.serviceAccountName (e.g. for IRSA): that account may run other jobs'
    pods too, and binding this Role to it would let them patch this job's status.
    """
    if not reports_status(job):
        return []
    names = child_names(job)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(job, names.service_account)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(job, names.role),
            "rules": [
                {
                    "apiGroups": [api.GROUP],
                    "resources": [api.PLURAL],
                    "resourceNames": [job.name],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [api.GROUP],
                    "resources": [f"{api.PLURAL}/status"],
                    "resourceNames": [job.name],
                    "verbs": ["get", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(job, names.role_binding),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role},
            "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": job.namespace}],
        },
    ]


def _mounted(path: str, job: api.FineTuneJob) -> bool:
    local = path[7:] if path.startswith("file://") else path
    return any(
        local == v.mount_path.rstrip("/") or local.startswith(v.mount_path.rstrip("/") + "/")
        for v in job.spec.volumes or []
    )


def cluster_problems(job: api.FineTuneJob) -> list[str]:
    """What is valid for `kubetune run --local` but cannot work in a pod, as `path: message` lines.

    A local path must lie on a mounted volume: anything else is the container's own filesystem,
    which vanishes with the pod (an output) or was never there (a model or dataset).
    """
    problems: list[str] = []
    places = [("spec.model.source", job.spec.model.source), ("spec.output.uri", job.spec.output.uri)]
    if job.spec.model.reference is not None:
        places.append(("spec.model.reference", job.spec.model.reference))
    places += [(f"spec.datasets[{i}].source", d.source) for i, d in enumerate(job.spec.datasets)]
    for where, value in places:
        if location_kind(value) == "path" and not _mounted(value, job):
            problems.append(
                f"{where}: '{value}' is a path, but no spec.volumes entry mounts it in the training pods; "
                "use an s3:// URI (or a hub id), or mount a PersistentVolumeClaim there"
            )
    return problems


def resolve_backend(requested: str, auto: str) -> str:
    """The backend a job runs on: its spec.backend, or `auto` when that is `auto`."""
    return auto if requested == "auto" else requested


def build_children(
    job: api.FineTuneJob, settings: RenderSettings | None = None, backend: str = PYTORCHJOB
) -> list[dict[str, Any]]:
    """Everything the operator creates for a FineTuneJob, in creation order (the training job last:
    it is what the operator checks to know the rest exists). `backend`: trainjob or pytorchjob."""
    settings = settings or RenderSettings()
    shared = [build_configmap(job), *build_rbac(job)]
    if backend == TRAINJOB:
        return [*shared, build_trainingruntime(job, settings), build_trainjob(job, settings)]
    if backend == PYTORCHJOB:
        return [*shared, build_pytorchjob(job, settings)]
    raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(json.loads(json.dumps(objects)), sort_keys=False, explicit_start=True)


__all__ = [
    "BACKENDS",
    "CONFIG_PATH",
    "LABEL_JOB",
    "PYTORCHJOB",
    "TRAINJOB",
    "ChildNames",
    "RenderSettings",
    "build_children",
    "build_configmap",
    "build_pytorchjob",
    "build_rbac",
    "build_trainingruntime",
    "build_trainjob",
    "child_names",
    "cluster_problems",
    "config_yaml",
    "job_name",
    "labels",
    "metadata",
    "pod_template",
    "reports_status",
    "resolve_backend",
    "resolved_config",
    "short_name",
    "to_yaml",
    "torchrun_args",
    "trainer_command",
    "trainer_env",
]
