"""FineTuneJob -> the Kubernetes objects that run it. Pure functions: no I/O, no clients.

`kubetune render` prints `build_children(job, settings)`; the operator creates exactly that list
(adding owner references). What ends up in the cluster:

- ConfigMap `<name>-config`: the fully resolved FineTuneJob the trainer reads (`config.yaml`).
- ServiceAccount/Role/RoleBinding `<name>-trainer` (only without spec.resources.serviceAccountName):
  the pods may `get`/`patch` only this FineTuneJob's status, which is how progress reaches
  `kubectl get ftj`. A user's own ServiceAccount may be shared by several jobs, so it is never
  bound to one job's Role: those pods do not report progress (the phase still follows the PyTorchJob).
- PyTorchJob `<name>` (kubeflow.org/v1): Master x1 + Worker x(nodes-1), container `pytorch`
  running torchrun, GPUs, /dev/shm, NCCL env, credentials through secretKeyRef only, and a
  securityContext that passes Pod Security "restricted" (the trainer image runs as uid 1000).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune import __version__
from kubetune.api import v1alpha1 as api
from kubetune.api.locations import location_kind

CONFIG_DIR = "/etc/kubetune"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CACHE_DIR = "/var/cache/kubetune"
CONTAINER_NAME = "pytorch"  # the Kubeflow training operator requires this name

# Kubeflow names pods and Services `<job>-worker-<index>`; Services must be DNS-1035 labels
# (<= 63 characters, starting with a letter), so the PyTorchJob name leaves room for the suffix.
MAX_JOB_NAME = 63 - len("-worker-") - 4
LABEL_JOB = "kubetune.io/finetunejob"
# OnFailure, not ExitCode: Kubeflow v1.9 counts restarts against runPolicy.backoffLimit only for
# OnFailure/Always, so with ExitCode a persistent retryable failure (an S3 outage, a bug that exits
# 143) would restart forever. The launcher's exit codes still say which kind of failure it was.
RESTART_POLICY = "OnFailure"
# Pod Security "restricted": the image must name a numeric non-root USER (the trainer image's is
# 1000); Kubernetes refuses to start a container whose image would run as root.
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class RenderSettings:
    """Cluster-wide defaults the operator injects (set by the Helm chart)."""

    trainer_image: str = f"ghcr.io/kubetune/trainer:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    # Time for the trainer to write a checkpoint after SIGTERM (preemption, eviction, suspend).
    termination_grace_seconds: int = 300


@dataclass(frozen=True)
class ChildNames:
    pytorchjob: str
    configmap: str
    service_account: str
    role: str
    role_binding: str


def _digest(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def short_name(name: str, max_len: int) -> str:
    """A DNS-1035 label of at most max_len characters, stable for the same input.

    Long names keep their start and get a hash of the full name, so two long names that share a
    prefix never collide.
    """
    out = name if name[:1].isalpha() else f"ftj-{name}"
    if len(out) <= max_len:
        return out
    keep = max_len - 7
    return f"{out[:keep].rstrip('-')}-{_digest(name)}"


def pytorchjob_name(finetunejob: str) -> str:
    """The PyTorchJob's name (also the base of every child's name): the operator finds it by this."""
    return short_name(finetunejob, MAX_JOB_NAME)


def child_names(job: api.FineTuneJob) -> ChildNames:
    base = pytorchjob_name(job.name)
    # ConfigMap/SA/Role names may be 253 long, but sharing the base keeps them recognisable.
    return ChildNames(
        pytorchjob=base,
        configmap=f"{base}-config",
        service_account=f"{base}-trainer",
        role=f"{base}-trainer",
        role_binding=f"{base}-trainer",
    )


def reports_status(job: api.FineTuneJob) -> bool:
    """Whether the pods run as the per-job ServiceAccount that may patch this job's status."""
    return not job.spec.resources.service_account_name


def labels(job: api.FineTuneJob) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune-trainer",
        "app.kubernetes.io/instance": short_name(job.name, 63),
        "app.kubernetes.io/managed-by": "kubetune",
        "app.kubernetes.io/part-of": "kubetune",
        LABEL_JOB: short_name(job.name, 63),
    }


def _meta(job: api.FineTuneJob, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": job.namespace, "labels": {**labels(job), **(extra_labels or {})}}


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
        "metadata": _meta(job, child_names(job).configmap),
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
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(job, names.service_account)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(job, names.role),
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
            "metadata": _meta(job, names.role_binding),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role},
            "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": job.namespace}],
        },
    ]


# --------------------------------------------------------------------------------------------
# PyTorchJob
# --------------------------------------------------------------------------------------------


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def trainer_env(job: api.FineTuneJob) -> list[dict[str, Any]]:
    """Environment of every training container (also what `kubetune run --local` sets)."""
    spec = job.spec
    nccl = spec.network.nccl
    env = [
        _env("KUBETUNE_CONFIG", CONFIG_PATH),
        _env("KUBETUNE_JOB_NAME", job.name),
        _env("KUBETUNE_JOB_NAMESPACE", job.namespace),
        _env("KUBETUNE_STATUS_REPORTING", "kubernetes" if reports_status(job) else "off"),
        _env("KUBETUNE_CACHE_DIR", CACHE_DIR),
        _env("KUBETUNE_TERMINATION_LOG", "/dev/termination-log"),
        _env("HF_HOME", f"{CACHE_DIR}/hf"),
        _env("PYTHONUNBUFFERED", "1"),
        _env("TOKENIZERS_PARALLELISM", "false"),
        # Fail fast on a hung collective instead of waiting for the NCCL watchdog's default.
        _env("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        _env("NCCL_DEBUG", str(nccl.debug)),
        _env("NCCL_IB_DISABLE", "1" if nccl.ib_disable else "0"),
    ]
    if nccl.socket_ifname:
        env.append(_env("NCCL_SOCKET_IFNAME", nccl.socket_ifname))
    for key in sorted(nccl.env or {}):
        env.append(_env(key, (nccl.env or {})[key]))
    storage = spec.storage
    if storage.endpoint:
        # S3 only: a global AWS_ENDPOINT_URL would also redirect STS and break IRSA web identity.
        env.append(_env("AWS_ENDPOINT_URL_S3", storage.endpoint))
    if storage.region:
        env.append(_env("AWS_REGION", storage.region))
        env.append(_env("AWS_DEFAULT_REGION", storage.region))
    secret = storage.credentials_secret
    if secret is not None:
        refs = [
            ("AWS_ACCESS_KEY_ID", secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", secret.secret_access_key_key),
        ]
        if secret.session_token_key:
            refs.append(("AWS_SESSION_TOKEN", secret.session_token_key))
        for var, key in refs:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
    for extra in spec.env or []:
        if extra.secret_key_ref is not None:
            ref = {"name": extra.secret_key_ref.name, "key": extra.secret_key_ref.key}
            env.append({"name": extra.name, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append(_env(extra.name, extra.value or ""))
    return env


def torchrun_args(config_path: str = CONFIG_PATH, shutdown_timeout: int = 270) -> list[str]:
    # torchrun reads PET_NNODES, PET_NPROC_PER_NODE and PET_NODE_RANK (set by the Kubeflow operator)
    # itself; the rendezvous address comes from the MASTER_* variables Kubeflow injects. On SIGTERM
    # torchrun gives the workers `shutdown_timeout` seconds (default 30) to checkpoint before SIGKILL.
    return [
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        f"--shutdown-timeout={shutdown_timeout}",
        "-m",
        "kubetune.trainer",
        "--config",
        config_path,
    ]


# The launcher runs torchrun and turns the workers' own exit codes into the container's (torchrun
# alone reports 1 for everything), so a pod's exit code says what failed: 2 bad config/data, 4 model,
# 5 OOM, 6 NaN, 7 export check, 143 preemption and other retryable failures.
LAUNCHER = ["python", "-m", "kubetune.trainer.launch"]


def trainer_command(settings: RenderSettings, config_path: str = CONFIG_PATH) -> list[str]:
    """The training container's full command line (also what `kubetune run --local` runs)."""
    # Leave 30 s of the pod's grace period for the launcher and torchrun themselves.
    shutdown = max(settings.termination_grace_seconds - 30, 30)
    return [*LAUNCHER, *torchrun_args(config_path, shutdown)]


def _resources(spec: api.FineTuneJobSpec) -> dict[str, Any]:
    res = spec.resources
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if res.gpus_per_node > 0:
        limits[res.gpu_resource] = res.gpus_per_node
        requests[res.gpu_resource] = res.gpus_per_node
    if res.cpu:
        limits["cpu"] = requests["cpu"] = res.cpu
    if res.memory:
        limits["memory"] = requests["memory"] = res.memory
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _tolerations(spec: api.FineTuneJobSpec) -> list[dict[str, Any]]:
    res = spec.resources
    if res.tolerations is not None:
        return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in res.tolerations]
    if res.gpus_per_node > 0:
        # GPU node pools are usually tainted with the GPU resource name (GKE, EKS, AKS, GPU operator).
        return [{"key": res.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    return []


def pod_template(job: api.FineTuneJob, settings: RenderSettings) -> dict[str, Any]:
    spec = job.spec
    res = spec.resources
    names = child_names(job)
    command = trainer_command(settings)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command[: len(LAUNCHER)],
        "args": command[len(LAUNCHER) :],
        "env": trainer_env(job),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
    }
    for vol in spec.volumes or []:
        container["volumeMounts"].append({"name": vol.name, "mountPath": vol.mount_path, "readOnly": vol.read_only})
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "serviceAccountName": res.service_account_name or names.service_account,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": [container],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shared_memory}},
            {"name": "config", "configMap": {"name": names.configmap}},
            {"name": "cache", "emptyDir": {}},
            *[
                {"name": v.name, "persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": v.read_only}}
                for v in spec.volumes or []
            ],
        ],
    }
    tolerations = _tolerations(spec)
    if tolerations:
        pod["tolerations"] = tolerations
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.affinity:
        pod["affinity"] = res.affinity
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    if spec.network.host_network:
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {"metadata": {"labels": labels(job)}, "spec": pod}


def build_pytorchjob(job: api.FineTuneJob, settings: RenderSettings) -> dict[str, Any]:
    spec = job.spec
    res = spec.resources
    names = child_names(job)
    template = pod_template(job, settings)
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
    extra: dict[str, str] = {}
    if spec.queue_name:
        extra["kueue.x-k8s.io/queue-name"] = spec.queue_name
    if spec.priority:
        extra["kueue.x-k8s.io/priority-class"] = spec.priority
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _meta(job, names.pytorchjob, extra),
        "spec": {
            "nprocPerNode": str(res.procs_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }


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
    places += [(f"spec.datasets[{i}].source", d.source) for i, d in enumerate(job.spec.datasets)]
    for where, value in places:
        if location_kind(value) == "path" and not _mounted(value, job):
            problems.append(
                f"{where}: '{value}' is a path, but no spec.volumes entry mounts it in the training pods; "
                "use an s3:// URI (or a hub id), or mount a PersistentVolumeClaim there"
            )
    return problems


def build_children(job: api.FineTuneJob, settings: RenderSettings | None = None) -> list[dict[str, Any]]:
    """Everything the operator creates for a FineTuneJob, in creation order (PyTorchJob last)."""
    settings = settings or RenderSettings()
    return [build_configmap(job), *build_rbac(job), build_pytorchjob(job, settings)]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(json.loads(json.dumps(objects)), sort_keys=False, explicit_start=True)


__all__ = [
    "CONFIG_PATH",
    "LABEL_JOB",
    "ChildNames",
    "RenderSettings",
    "build_children",
    "build_configmap",
    "build_pytorchjob",
    "build_rbac",
    "child_names",
    "cluster_problems",
    "config_yaml",
    "labels",
    "pod_template",
    "pytorchjob_name",
    "reports_status",
    "resolved_config",
    "short_name",
    "to_yaml",
    "torchrun_args",
    "trainer_command",
    "trainer_env",
]
