"""The chart grants the operator what its real API calls need, and nothing more.

The operator runs cluster-wide (as the chart's default deploys it) through one job's whole life
(create, adopt what exists, suspend, fail with a pod to explain it, lose its PyTorchJob), and a
second job the same way on Kubeflow Trainer v2 (TrainJob, picked by `auto`); every
request it makes is recorded by the API emulator under its own token and turned into the RBAC
attributes the API server would check. The chart's grants must equal that set, plus the few rights
only a real API server asks for (named below, with why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from kubetune.api.validation import parse_job
from kubetune.render import RenderSettings, build_children
from tests.integration.deploy.deploy_helm import CHART, NAMESPACE, RELEASE, find_helm, run_helm
from tests.integration.operator.harness import TJ, Cluster, FakeKueue, OperatorProcess, job_manifest, wait_for

pytestmark = pytest.mark.integration

Grants = dict[tuple[str, str], set[str]]


def _trainer_role() -> Grants:
    """The per-job Role the operator creates (from the real renderer): a real API server lets it
    create a Role only with rights it holds itself (RBAC escalation prevention)."""
    job = parse_job(job_manifest("rbac-probe"))
    (role,) = [o for o in build_children(job, RenderSettings()) if o["kind"] == "Role"]
    grants: Grants = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def _checked_only_by_a_real_api_server() -> Grants:
    """Rights the emulator cannot show a need for: the OwnerReferencesPermissionEnforcement
    admission plugin requires `update` on the owner's finalizers to set blockOwnerDeletion on a
    child, and escalation prevention requires the trainer Role's rights."""
    grants: Grants = {("kubetune.io", "finetunejobs/finalizers"): {"update"}}
    for key, verbs in _trainer_role().items():
        grants[key] = grants.get(key, set()) | verbs
    return grants


@pytest.fixture(scope="module")
def operator_calls(cluster: Cluster, operator_factory: Callable[..., OperatorProcess]) -> Iterator[Grants]:
    cluster.install_crds()
    cluster.install_trainer_crds()
    kueue = FakeKueue(cluster).install().start()
    # A job whose children (all but the PyTorchJob) exist before the operator sees it: it reads them
    # (409 on create) to check they are its own.
    adopted = cluster.create_job(job_manifest("adopted", backend="pytorchjob"))
    for child in build_children(parse_job({k: v for k, v in adopted.items() if k != "status"}), RenderSettings()):
        if child["kind"] == "PyTorchJob":
            continue
        child["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "name": "adopted",
                "uid": adopted["metadata"]["uid"],
            }
        ]
        _create(cluster, child)
    op = operator_factory(("--all-namespaces",)).start()
    try:
        wait_for("the adopted job's PyTorchJob", lambda: cluster.pytorchjob("adopted"))
        cluster.create_job(job_manifest("life", backend="pytorchjob"))
        first = wait_for("the PyTorchJob", lambda: cluster.pytorchjob("life"))
        cluster.set_pytorchjob_condition("life", "Running", "PyTorchJobRunning", "running")
        wait_for("phase Training", lambda: cluster.phase("life") == "Training")

        cluster.patch_job("life", {"spec": {"suspend": True}})  # patches the PyTorchJob
        wait_for("suspend propagated", lambda: cluster.existing_pytorchjob("life")["spec"]["runPolicy"]["suspend"])
        cluster.patch_job("life", {"spec": {"suspend": False}})
        wait_for("resumed", lambda: not cluster.existing_pytorchjob("life")["spec"]["runPolicy"]["suspend"])

        cluster.custom.delete_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", "life")
        wait_for(
            "the PyTorchJob made again",
            lambda: (pj := cluster.pytorchjob("life")) and pj["metadata"]["uid"] != first["metadata"]["uid"],
        )
        cluster.create_failed_pod("life-master-0", "life", exitCode=137, reason="OOMKilled")  # read for the reason
        cluster.set_pytorchjob_condition("life", "Failed", "PyTorchJobFailed", "1 Master replica(s) failed.")
        wait_for("the OOM reason", lambda: (cluster.condition("life", "Failed") or {}).get("reason") == "OOMKilled")
        wait_for("the Failed event", lambda: any(e.reason == "Failed" for e in cluster.events("life")))

        cluster.create_job(job_manifest("life-v2"))  # auto: TrainJob, its API being served
        first = wait_for("the TrainJob", lambda: cluster.trainjob("life-v2"))
        cluster.set_trainjob_status("life-v2", ready=1)
        wait_for("phase Training", lambda: cluster.phase("life-v2") == "Training")
        cluster.patch_job("life-v2", {"spec": {"suspend": True}})  # patches the TrainJob
        wait_for("suspend propagated", lambda: (cluster.trainjob("life-v2") or {})["spec"]["suspend"])
        cluster.custom.delete_namespaced_custom_object(*TJ, "default", "trainjobs", "life-v2")
        wait_for(  # its TrainingRuntime is still there: read to check it is this job's
            "the TrainJob made again",
            lambda: (tj := cluster.trainjob("life-v2")) and tj["metadata"]["uid"] != first["metadata"]["uid"],
        )
        cluster.create_failed_pod(
            "life-v2-node-0-0", "life-v2", label="jobset.sigs.k8s.io/jobset-name", exitCode=137, reason="OOMKilled"
        )
        cluster.set_trainjob_status("life-v2", ("Failed", "JobSetFailed", "failed"))
        wait_for("the OOM reason", lambda: (cluster.condition("life-v2", "Failed") or {}).get("reason") == "OOMKilled")

        cluster.create_job(job_manifest("queued", queueName="team-a"))  # Kueue's: suspended through its Workload
        wait_for("the TrainJob admitted", lambda: (tj := cluster.trainjob("queued")) and not tj["spec"].get("suspend"))
        cluster.patch_job("queued", {"spec": {"suspend": True}})
        wait_for("the Workload deactivated", lambda: (kueue.workload("queued") or {})["spec"]["active"] is False)
    finally:
        print(op.log_tail())
        op.stop()
        kueue.stop()
    calls: Grants = {}
    for group, resource, verb in cluster.server.api_calls(OperatorProcess.TOKEN):
        calls.setdefault((group, resource), set()).add(verb)
    yield calls


def _create(cluster: Cluster, obj: dict[str, Any]) -> None:
    creators = {
        "ConfigMap": cluster.core.create_namespaced_config_map,
        "ServiceAccount": cluster.core.create_namespaced_service_account,
        "Role": cluster.rbac.create_namespaced_role,
        "RoleBinding": cluster.rbac.create_namespaced_role_binding,
    }
    creators[obj["kind"]]("default", obj)


def _chart_grants(*args: str) -> dict[str | None, Grants]:
    """Scope (None: cluster-wide) -> what the chart lets the operator's ServiceAccount do there."""
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found: run scripts/install-helm.sh (installs .tools/bin/helm) or set KUBETUNE_HELM")
    proc = run_helm(helm, ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args])
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (account,) = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    out: dict[str | None, Grants] = {}
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if not any(s["name"] == account for s in binding["subjects"]):
            continue
        scope = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault(scope, {}).setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _difference(left: Grants, right: Grants) -> list[str]:
    return sorted(
        f"{group or 'core'}/{resource}: {sorted(verbs - right.get((group, resource), set()))}"
        for (group, resource), verbs in left.items()
        if verbs - right.get((group, resource), set())
    )


def test_cluster_wide_chart_grants_exactly_what_the_operator_calls(operator_calls: Grants) -> None:
    assert ("kubeflow.org", "pytorchjobs") in operator_calls, "the scenario did not run"
    assert ("trainer.kubeflow.org", "trainjobs") in operator_calls, "the TrainJob scenario did not run"
    needed = {**operator_calls}
    for key, verbs in _checked_only_by_a_real_api_server().items():
        needed[key] = needed.get(key, set()) | verbs
    (granted,) = _chart_grants().values()
    assert _difference(needed, granted) == [], "the chart misses rights the operator uses"
    extra = _difference(granted, needed)
    assert extra == [], f"the chart grants rights the operator never uses: {extra}"


def test_namespaced_chart_grants_the_same_per_namespace(operator_calls: Grants) -> None:
    grants = _chart_grants("--values", str(CHART / "ci" / "namespaced-values.yaml"))
    cluster_scoped = {
        k: v for k, v in operator_calls.items() if k == ("apiextensions.k8s.io", "customresourcedefinitions")
    }
    namespaced = {k: v for k, v in operator_calls.items() if k not in cluster_scoped and k[1] != "namespaces"}
    for key, verbs in _checked_only_by_a_real_api_server().items():
        namespaced[key] = namespaced.get(key, set()) | verbs
    assert grants[None] == cluster_scoped
    for namespace in ("ml-team-a", "ml-team-b"):
        assert _difference(namespaced, grants[namespace]) == [], namespace
        assert _difference(grants[namespace], namespaced) == [], namespace
