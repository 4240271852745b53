"""The pieces both backends share: child names, labels, the training container's environment and
command line, and the pod template (PyTorchJob replicas and the TrainingRuntime's JobSet use the same one).
Pure functions: no I/O, no clients.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kubetune import __version__
from kubetune.api import v1alpha1 as api

CONFIG_DIR = "/etc/kubetune"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CACHE_DIR = "/var/cache/kubetune"

# Kubeflow v1 names pods and Services `<job>-worker-<index>`, JobSet `<job>-node-<job index>-<pod index>`;
# Services must be DNS-1035 labels (<= 63 characters, starting with a letter), so the job's name
# leaves room for the suffix.
MAX_JOB_NAME = 63 - len("-worker-") - 4
LABEL_JOB = "kubetune.io/finetunejob"
# OnFailure, not ExitCode: Kubeflow v1.9 counts restarts against runPolicy.backoffLimit only for
# OnFailure/Always, so with ExitCode a persistent retryable failure (an S3 outage, a bug that exits
# 143) would restart forever. The launcher's exit codes still say which kind of failure it was.
# A JobSet's Job (Trainer v2) takes OnFailure too, counting container restarts against backoffLimit.
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
    job: str  # the PyTorchJob, or the TrainJob and its TrainingRuntime
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


def job_name(finetunejob: str) -> str:
    """The PyTorchJob's or TrainJob's name (also the base of every child's name): the operator finds it by this."""
    return short_name(finetunejob, MAX_JOB_NAME)


def child_names(job: api.FineTuneJob) -> ChildNames:
    base = job_name(job.name)
    # ConfigMap/SA/Role names may be 253 long, but sharing the base keeps them recognisable.
    return ChildNames(
        job=base,
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


def metadata(job: api.FineTuneJob, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": job.namespace, "labels": {**labels(job), **(extra_labels or {})}}


# --------------------------------------------------------------------------------------------
# The training container and its pod
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


# How often torchrun restarts a node's workers in place (every node's, together) before it gives
# up and the pod fails, which Kubeflow then counts against backoffLimit. Each restart resumes from
# the last complete checkpoint, so a handful covers transient faults (a NIC flap, a peer pod
# rescheduled) without retraining for long on a fault that persists.
WORKER_RESTARTS = 3


def torchrun_args(
    run_id: str, config_path: str = CONFIG_PATH, shutdown_timeout: int = 270, max_restarts: int = WORKER_RESTARTS
) -> list[str]:
    # Elastic (c10d) rendezvous, not static: when one rank dies, its agent tears the round down and
    # every node's agent restarts its workers, which rejoin and resume from the last checkpoint;
    # a pod that is replaced entirely joins the next round the same way. Static rendezvous cannot
    # re-form, so the other ranks would hang in a collective until it timed out. torchrun reads
    # PET_NNODES (a fixed N: min = max), PET_NPROC_PER_NODE and the rendezvous endpoint from the
    # environment, which the launcher derives from either controller's (launch.py). On SIGTERM
    # torchrun gives the workers `shutdown_timeout` seconds (default 30) to checkpoint.
    return [
        "--rdzv-backend=c10d",
        f"--rdzv-id={run_id}",
        f"--max-restarts={max_restarts}",
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


def trainer_command(job: api.FineTuneJob, settings: RenderSettings, config_path: str = CONFIG_PATH) -> list[str]:
    """The training container's full command line (also what `kubetune run --local` runs)."""
    # Leave 30 s of the pod's grace period for the launcher and torchrun themselves.
    shutdown = max(settings.termination_grace_seconds - 30, 30)
    # In-place restarts are for a lost peer; one node has none, and a failure there restarts the pod.
    restarts = WORKER_RESTARTS if job.spec.resources.nodes > 1 else 0
    # The rendezvous is the job's own (its store lives in the master pod), so its name is id enough.
    return [*LAUNCHER, *torchrun_args(child_names(job).job, config_path, shutdown, restarts)]


def container_resources(spec: api.FineTuneJobSpec) -> dict[str, Any]:
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
    if res.cache_size:
        # The cache emptyDir's limit: a pod that writes more is evicted, so ask for the disk up front.
        limits["ephemeral-storage"] = requests["ephemeral-storage"] = res.cache_size
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


# Where Kueue looks for a job's LocalQueue; a child with it is Kueue's to start and stop.
QUEUE_NAME_LABEL = "kueue.x-k8s.io/queue-name"


def queue_labels(job: api.FineTuneJob, *, held: bool | None = None) -> dict[str, str]:
    """Kueue's labels, for the object Kueue manages (the PyTorchJob or the TrainJob).

    No queue name on a job held (`spec.suspend` at creation): Kueue admits and un-suspends every
    queued job it sees, and has no way to make its Workload inactive from the start, so a held job
    stays out of Kueue's sight until resumed; the operator then adds the label (and Kueue starts it)."""
    out: dict[str, str] = {}
    if job.spec.queue_name and not (job.spec.suspend if held is None else held):
        out[QUEUE_NAME_LABEL] = job.spec.queue_name
    if job.spec.priority:
        out["kueue.x-k8s.io/priority-class"] = job.spec.priority
    return out


# Kubeflow's own SDK sets this on training pods: an Istio sidecar (injected in Kubeflow profile
# namespaces) holds the rendezvous port and the pod's exit. spec.resources.podAnnotations overrides it.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}


def pod_template(job: api.FineTuneJob, settings: RenderSettings, container_name: str) -> dict[str, Any]:
    """The training pod: `container_name` is the one the controller looks for ("pytorch" for
    Kubeflow v1, "node" for Trainer v2's torch runtime)."""
    spec = job.spec
    res = spec.resources
    names = child_names(job)
    command = trainer_command(job, settings)
    container: dict[str, Any] = {
        "name": container_name,
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
    resources = container_resources(spec)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "serviceAccountName": res.service_account_name or names.service_account,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": [container],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shared_memory}},
            {"name": "config", "configMap": {"name": names.configmap}},
            {"name": "cache", "emptyDir": {"sizeLimit": res.cache_size} if res.cache_size else {}},
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
    if res.scheduler_name:
        pod["schedulerName"] = res.scheduler_name
    if res.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in res.image_pull_secrets]
    if spec.network.host_network:
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    meta = {
        "labels": {**(res.pod_labels or {}), **labels(job)},
        "annotations": {**POD_ANNOTATIONS, **(res.pod_annotations or {})},
    }
    return {"metadata": meta, "spec": pod}
