"""The few Kubernetes API calls the operator makes, through the official client.

Kopf watches and reports; these calls read the FineTuneJob and its training job fresh (status follows
what the API server holds, not what an event said) and create the rendered children.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.api import v1alpha1 as api
from kubetune.operator import backends
from kubetune.operator.backends import JobApi

FINETUNEJOB = (api.GROUP, api.VERSION, api.PLURAL)
TRAININGRUNTIME = (backends.TRAINJOB.group, backends.TRAINJOB.version, "trainingruntimes")
# Rendered children that are custom resources: kind -> (group, version, plural).
CUSTOM_KINDS = {
    **{job_api.kind: job_api.resource for job_api in backends.BY_NAME.values()},
    "TrainingRuntime": TRAININGRUNTIME,
}
MERGE_PATCH = "application/merge-patch+json"
# Kopf's peering object (cluster-wide), through which 2+ operator replicas agree which one acts.
CLUSTER_PEERING = ("kopf.dev", "v1", "clusterkopfpeerings")
# Kueue's Workload: one per queued training job, owned by it. `spec.active: false` is Kueue's
# supported way to stop a job it manages (it evicts the Workload and suspends the job itself).
WORKLOAD = ("kueue.x-k8s.io", "v1beta1", "workloads")


def connect(pool_size: int = 0) -> client.ApiClient:
    """The kubeconfig when KUBECONFIG is set (local runs, tests), else the pod's service account.
    `pool_size`: how many threads call the API at once; the client keeps that many connections
    open (its default, 5 per CPU, would drop and re-open connections during a burst)."""
    configuration = client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig.split(os.pathsep)[0], client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        if kubeconfig:
            raise
        config.load_kube_config(client_configuration=configuration)
    if pool_size:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, pool_size)
    return client.ApiClient(configuration)


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self._apis_seen: set[str] = set()

    # ---- FineTuneJob -------------------------------------------------------------------------

    def get_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _none_if_missing(
            lambda: self.custom.get_namespaced_custom_object(*FINETUNEJOB[:2], namespace, FINETUNEJOB[2], name)
        )

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any]) -> str | None:
        """Merge-patch the status; the resourceVersion it was stored under."""
        group, version, plural = FINETUNEJOB
        stored = self.custom.patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": status}, _content_type=MERGE_PATCH
        )
        return ((stored or {}).get("metadata") or {}).get("resourceVersion")

    # ---- the training job (PyTorchJob or TrainJob) -------------------------------------------

    def served(self, job_api: JobApi) -> bool:
        """Whether the API server serves the backend's resource (discovery; remembered once seen)."""
        if job_api.name in self._apis_seen:
            return True
        try:
            resources = self.custom.get_api_resources(job_api.group, job_api.version)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        if any(r.name == job_api.plural for r in resources.resources or []):
            self._apis_seen.add(job_api.name)
            return True
        return False

    def get_job(self, job_api: JobApi, namespace: str, name: str) -> dict[str, Any] | None:
        group, version, plural = job_api.resource
        return _none_if_missing(
            lambda: self.custom.get_namespaced_custom_object(group, version, namespace, plural, name)
        )

    def patch_job(self, job_api: JobApi, namespace: str, name: str, patch: dict[str, Any]) -> None:
        group, version, plural = job_api.resource
        self.custom.patch_namespaced_custom_object(
            group, version, namespace, plural, name, patch, _content_type=MERGE_PATCH
        )

    def job_pods(self, job_api: JobApi, namespace: str, name: str) -> list[dict[str, Any]]:
        """The training pods, by the label their controller puts on them."""
        # Raw JSON: a pod status the client's models reject (a field missing) must not hide the reason.
        response = self.core.list_namespaced_pod(
            namespace, label_selector=f"{job_api.pod_label}={name}", _preload_content=False
        )
        return list(json.loads(response.data).get("items") or [])

    # ---- replicas ------------------------------------------------------------------------------

    def ensure_peering(self, name: str) -> None:
        """Create the ClusterKopfPeering `name` if missing: Kopf needs it and does not make it (the
        chart ships only its CRD: a custom resource in the same Helm release as its CRD fails to
        install)."""
        group, version, plural = CLUSTER_PEERING
        body = {"apiVersion": f"{group}/{version}", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        try:
            self.custom.create_cluster_custom_object(group, version, plural, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    # ---- Kueue -------------------------------------------------------------------------------

    def workloads_of(self, namespace: str, owner_uid: str) -> list[dict[str, Any]] | None:
        """The Kueue Workloads owned by a training job; None where Kueue is not installed."""
        group, version, plural = WORKLOAD
        try:
            listed = self.custom.list_namespaced_custom_object(group, version, namespace, plural)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return [
            dict(w)
            for w in listed.get("items") or []
            if any(ref.get("uid") == owner_uid for ref in (w.get("metadata") or {}).get("ownerReferences") or [])
        ]

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        group, version, plural = WORKLOAD
        self.custom.patch_namespaced_custom_object(
            group, version, namespace, plural, name, {"spec": {"active": active}}, _content_type=MERGE_PATCH
        )

    # ---- children ----------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create one rendered child; None when it already exists (409)."""
        namespace = obj["metadata"]["namespace"]
        kind = obj["kind"]
        try:
            if kind in CUSTOM_KINDS:
                group, version, plural = CUSTOM_KINDS[kind]
                created: Any = self.custom.create_namespaced_custom_object(group, version, namespace, plural, obj)
                return dict(created)
            creators = {
                "ConfigMap": self.core.create_namespaced_config_map,
                "ServiceAccount": self.core.create_namespaced_service_account,
                "Role": self.rbac.create_namespaced_role,
                "RoleBinding": self.rbac.create_namespaced_role_binding,
            }
            # Raw JSON: turning the answer into the client's model classes costs more CPU than the call.
            response = creators[kind](namespace, obj, _preload_content=False)
            return dict(json.loads(response.data))
        except ApiException as exc:
            if exc.status == 409:
                return None
            if exc.status == 404 and kind in CUSTOM_KINDS:
                self._apis_seen.clear()  # a CRD went away: check discovery again
            raise

    def read(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The stored version of a rendered child."""
        namespace, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        if kind in CUSTOM_KINDS:
            group, version, plural = CUSTOM_KINDS[kind]
            return _none_if_missing(
                lambda: self.custom.get_namespaced_custom_object(group, version, namespace, plural, name)
            )
        readers = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
        }
        found = _none_if_missing(lambda: readers[kind](name, namespace, _preload_content=False))
        return None if found is None else dict(json.loads(found.data))


def _none_if_missing(call: Any) -> Any:
    try:
        return call()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
