"""The operator tests' view of the world: the API as a user, the Kubeflow controller and a
trainer see it (`Cluster`), and the operator as a real, killable `kubetune operator` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from kubetune.api.crd import build_crd
from kubetune.local import free_port
from tests.integration.operator.k8s_emulator import RunningApiServer

# The Kubeflow Training Operator v1.9 and Trainer v2.3 CRDs, vendored (as tests/unit/render uses them).
FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
PYTORCHJOB_CRD = FIXTURES / "kubeflow.org_pytorchjobs.yaml"
TRAINER_CRDS = [FIXTURES / f"trainer.kubeflow.org_{plural}.yaml" for plural in ("trainjobs", "trainingruntimes")]
FTJ = ("kubetune.io", "v1alpha1")
PJ = ("kubeflow.org", "v1")
TJ = ("trainer.kubeflow.org", "v1alpha1")
MERGE = "application/merge-patch+json"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until check() returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiException, KeyError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def job_manifest(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
        "datasets": [{"source": "s3://data/alpaca.jsonl", "format": "alpaca"}],
        "output": {"uri": f"s3://models/{name}/"},
        "resources": {"nodes": 2, "gpusPerNode": 1},
    }
    body.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": body}


class Cluster:
    """The API server as the tests see it: a user, the Kubeflow controller, and a trainer."""

    def __init__(self, server: RunningApiServer) -> None:
        self.server = server
        self.api = kubernetes.config.new_client_from_config(str(server.kubeconfig))
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.api)
        self.ext = kubernetes.client.ApiextensionsV1Api(self.api)

    def install_crds(self, *, pytorchjob: bool = True) -> None:
        self.ext.create_custom_resource_definition(build_crd())
        if pytorchjob:
            self.install_pytorchjob_crd()

    def install_pytorchjob_crd(self) -> None:
        self.ext.create_custom_resource_definition(yaml.safe_load(PYTORCHJOB_CRD.read_text()))

    def install_trainer_crds(self) -> None:
        """Kubeflow Trainer v2: TrainJob and TrainingRuntime."""
        for path in TRAINER_CRDS:
            self.ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))

    # ---- the user --------------------------------------------------------------------------

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.create_namespaced_custom_object(*FTJ, "default", "finetunejobs", manifest))

    def job(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(*FTJ, "default", "finetunejobs", name))

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.custom.patch_namespaced_custom_object(
                *FTJ, "default", "finetunejobs", name, patch, _content_type=MERGE
            )
        )

    def delete_job(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*FTJ, "default", "finetunejobs", name)

    def phase(self, name: str) -> str | None:
        return (self.job(name).get("status") or {}).get("phase")

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        conds = (self.job(name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def events(self, name: str) -> list[Any]:
        return [
            e
            for e in self.core.list_namespaced_event("default").items
            if e.involved_object and e.involved_object.name == name
        ]

    def event_messages(self, name: str) -> list[str]:
        return [e.message for e in self.events(name)]

    # ---- the Kubeflow training operator and the kubelet ---------------------------------------

    def create_failed_pod(
        self, name: str, pytorchjob: str, label: str = "training.kubeflow.org/job-name", **terminated: Any
    ) -> None:
        """A training pod whose container ended as `terminated` says (exitCode, reason, message);
        `label`: the one its controller sets (JobSet's jobset-name for a TrainJob's pods)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {label: pytorchjob}},
            "spec": {"containers": [{"name": "pytorch", "image": "trainer"}]},
        }
        self.core.create_namespaced_pod("default", pod)
        container = {
            "name": "pytorch",
            "image": "trainer",
            "imageID": "trainer@sha256:0",
            "ready": False,
            "restartCount": 0,
            "state": {"terminated": terminated},
        }
        self.core.patch_namespaced_pod_status(
            name, "default", {"status": {"containerStatuses": [container]}}, _content_type=MERGE
        )

    def create_waiting_pod(
        self, name: str, job: str, label: str, *, conditions: Any = (), waiting: dict[str, str] | None = None
    ) -> None:
        """A training pod that does not run: the scheduler's `conditions` (PodScheduled=False), or
        its container `waiting` (reason, message) as the kubelet reports it."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {label: job}},
            "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
        }
        self.core.create_namespaced_pod("default", pod)
        status: dict[str, Any] = {"phase": "Pending", "conditions": list(conditions)}
        if waiting is not None:
            status["containerStatuses"] = [
                {"name": "trainer", "image": "trainer", "imageID": "", "ready": False, "restartCount": 0}
                | {"state": {"waiting": waiting}}
            ]
        self.core.patch_namespaced_pod_status(name, "default", {"status": status}, _content_type=MERGE)

    def pytorchjob(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(*PJ, "default", "pytorchjobs", name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def existing_pytorchjob(self, name: str) -> dict[str, Any]:
        found = self.pytorchjob(name)
        assert found is not None, f"PyTorchJob {name} does not exist"
        return found

    def pytorchjobs(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(*PJ, "default", "pytorchjobs")["items"])

    def set_pytorchjob_condition(self, name: str, type_: str, reason: str, message: str = "", **status: Any) -> None:
        """What the Kubeflow controller does: the new condition True, the exclusive ones False."""
        pj = self.pytorchjob(name)
        assert pj is not None, f"PyTorchJob {name} does not exist"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        exclusive = {"Running", "Restarting", "Succeeded", "Failed", "Suspended"}
        conds = [c for c in (pj.get("status") or {}).get("conditions") or [] if c["type"] != type_]
        for c in conds:
            if type_ in exclusive and c["type"] in exclusive and c["status"] == "True":
                c.update(status="False", lastTransitionTime=now)
        conds.append(
            {
                "type": type_,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            }
        )
        self.custom.patch_namespaced_custom_object_status(
            *PJ, "default", "pytorchjobs", name, {"status": {"conditions": conds, **status}}, _content_type=MERGE
        )

    # ---- Kubeflow Trainer v2 --------------------------------------------------------------------

    def trainjob(self, name: str) -> dict[str, Any] | None:
        return self._get(TJ, "trainjobs", name)

    def trainingruntime(self, name: str) -> dict[str, Any] | None:
        return self._get(TJ, "trainingruntimes", name)

    def trainjobs(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(*TJ, "default", "trainjobs")["items"])

    def set_trainjob_status(
        self, name: str, *conditions: tuple[str, ...], ready: int | None = None, active: int = 1
    ) -> None:
        """What the Trainer controller writes: conditions (type, reason, message[, status: True]) and
        the jobsStatus of the replicated job `node` (ready: Jobs whose pods are all ready)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status: dict[str, Any] = {
            "conditions": [
                {"type": c[0], "status": (c[3:] or ("True",))[0], "reason": c[1], "message": c[2]}
                | {"lastTransitionTime": now}
                for c in conditions
            ]
        }
        if ready is not None:
            status["jobsStatus"] = [
                {"name": "node", "ready": ready, "active": active, "succeeded": 0, "failed": 0, "suspended": 0}
            ]
        self.custom.patch_namespaced_custom_object_status(
            *TJ, "default", "trainjobs", name, {"status": status}, _content_type=MERGE
        )

    def _get(self, group_version: tuple[str, str], plural: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(*group_version, "default", plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


class OperatorProcess:
    """`kubetune operator --namespace default` as a real process, killable and restartable."""

    # Its bearer token: `RunningApiServer.api_calls(OperatorProcess.TOKEN)` lists what it did.
    TOKEN = "kubetune-operator"

    def __init__(
        self,
        server: RunningApiServer,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        scope: tuple[str, ...] = ("--namespace", "default"),
    ) -> None:
        self.server = server
        self.workdir = workdir
        self.scope = scope
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(server.kubeconfig_for(self.TOKEN)),
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
            "KUBETUNE_HEALTH_PORT": str(self.health_port),
            "KUBETUNE_LOG_FORMAT": "plain",
            "KUBETUNE_TRAINER_IMAGE": "registry.local/kubetune/trainer:test",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def mode(self) -> tuple[str, ...]:
        """Standalone, unless the scope asks for peering with other replicas."""
        return () if "--peering" in self.scope else ("--standalone",)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("operator-*.log")))

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.starts}.log"

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "operator", *self.scope, *self.mode],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for("the operator's /healthz", self.healthy, timeout=30)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"operator exited:\n{self.log_tail()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as rsp:
                return bool(rsp.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no chance to finish what it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes does on a rollout; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's /metrics, parsed as Prometheus parses it (0 when absent:
        a labelled counter appears with its first increment)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as rsp:
            text = rsp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def log_tail(self, lines: int = 60) -> str:
        paths = sorted(self.workdir.glob("operator-*.log"))
        text = "\n".join(p.read_text(errors="replace") for p in paths)
        return "\n".join(text.splitlines()[-lines:])


# ---- Kueue ------------------------------------------------------------------------------------

KUEUE = ("kueue.x-k8s.io", "v1beta1")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue's Workload CRD, as much of it as the tests use (kueue.x-k8s.io_workloads.yaml upstream):
# spec.active (default true) is what stops a queued job; status.admission is set on admission.
WORKLOAD_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloads.kueue.x-k8s.io"},
    "spec": {
        "group": "kueue.x-k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "Workload", "plural": "workloads", "singular": "workload", "listKind": "WorkloadList"},
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
# The training jobs Kueue manages here: (group, version, plural, where the job says it is suspended).
KUEUE_JOBS = (
    (*PJ, "pytorchjobs", ("spec", "runPolicy", "suspend")),
    (*TJ, "trainjobs", ("spec", "suspend")),
)


class FakeKueue:
    """Kueue's job reconciler as a FineTuneJob's children meet it, with quota for everything: a
    queued job (queue-name label) gets a Workload it owns; an active Workload is admitted and its
    job un-suspended (also when someone else suspended it: that is the fight); a deactivated one
    (spec.active: false) is evicted and its job suspended until it is active again."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kueue", daemon=True)
        self.errors: list[BaseException] = []
        self.passes = 0  # completed looks at every job: "Kueue has seen it" without sleeping

    def install(self) -> FakeKueue:
        self.cluster.ext.create_custom_resource_definition(WORKLOAD_CRD)
        return self

    def start(self) -> FakeKueue:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors

    def workload(self, job_name: str) -> dict[str, Any] | None:
        found = [w for w in self._workloads() if any(r["name"] == job_name for r in w["metadata"]["ownerReferences"])]
        return found[0] if found else None

    def _workloads(self) -> list[dict[str, Any]]:
        return list(self.cluster.custom.list_namespaced_custom_object(*KUEUE, "default", "workloads")["items"])

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.step()
                self.passes += 1
            except ApiException as exc:
                if exc.status not in (404, 409, 422):  # raced with the operator or a deletion
                    self.errors.append(exc)
            except Exception as exc:
                self.errors.append(exc)
                return

    def step(self) -> None:
        custom = self.cluster.custom
        by_owner = {r["uid"]: w for w in self._workloads() for r in w["metadata"]["ownerReferences"]}
        for group, version, plural, path in KUEUE_JOBS:
            for job in custom.list_namespaced_custom_object(group, version, "default", plural)["items"]:
                meta = job["metadata"]
                if QUEUE_LABEL not in (meta.get("labels") or {}):
                    continue
                workload = by_owner.get(meta["uid"])
                if workload is None:
                    workload = self._make_workload(job, meta["labels"][QUEUE_LABEL])
                active = (workload.get("spec") or {}).get("active") is not False
                suspended: Any = job
                for key in path:
                    suspended = (suspended or {}).get(key)
                if active is bool(suspended):  # admitted: start it; deactivated: evict it
                    patch: dict[str, Any] = {path[-1]: not active}
                    for key in reversed(path[:-1]):
                        patch = {key: patch}
                    custom.patch_namespaced_custom_object(
                        group, version, "default", plural, meta["name"], patch, _content_type=MERGE
                    )

    def _make_workload(self, job: dict[str, Any], queue: str) -> dict[str, Any]:
        meta = job["metadata"]
        workload = {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "Workload",
            "metadata": {
                "name": f"{job['kind'].lower()}-{meta['name']}-{meta['uid'][:5]}",
                "ownerReferences": [
                    {
                        "apiVersion": job["apiVersion"],
                        "kind": job["kind"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"queueName": queue, "active": True, "podSets": [{"name": "node", "count": 1}]},
        }
        return dict(self.cluster.custom.create_namespaced_custom_object(*KUEUE, "default", "workloads", workload))
