"""The Helm chart through the real Helm binary: lint, template over the ci/ values files, and the
rendered manifests validated against the Kubernetes 1.33 OpenAPI schemas.

Needs .tools/bin/helm (scripts/install-helm.sh) or KUBETUNE_HELM; fails, never skips, without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api import v1alpha1 as api
from kubetune.api.crd import build_crd
from kubetune.render import build_rbac
from tests.integration.deploy.deploy_helm import CHART, NAMESPACE, Render, run_helm

pytestmark = pytest.mark.integration

VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
OPERATOR_ENV = {
    "KUBETUNE_NAMESPACES",
    "KUBETUNE_TRAINER_IMAGE",
    "KUBETUNE_TRAINER_IMAGE_PULL_POLICY",
    "KUBETUNE_METRICS_PORT",
    "KUBETUNE_HEALTH_PORT",
    "KUBETUNE_LOG_FORMAT",
    "KUBETUNE_LOG_LEVEL",
}

# What the operator must be able to do in a namespace it serves; (apiGroup, resource) -> verbs.
# tests/integration/operator/test_operator_rbac.py derives the same from the operator's recorded API
# calls; this copy keeps the chart tests runnable without the operator.
REQUIRED_NAMESPACED = {
    ("kubetune.io", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("kubetune.io", "finetunejobs/status"): {"get", "patch"},
    # No delete: children go with their FineTuneJob through garbage collection; a PyTorchJob or
    # TrainJob deleted by hand is created again.
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "patch"},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "patch"},
    ("trainer.kubeflow.org", "trainingruntimes"): {"get", "create"},
    # Created, and read by name when they exist already: never listed, watched or patched.
    ("", "configmaps"): {"get", "create"},
    ("", "serviceaccounts"): {"get", "create"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create"},
    ("", "events"): {"create"},
    ("", "pods"): {"list"},
    # Suspend/resume of a Kueue-managed job: its Workload's spec.active, found by owner reference.
    ("kueue.x-k8s.io", "workloads"): {"list", "patch"},
}


def trainer_role_grants() -> dict[tuple[str, str], set[str]]:
    """The per-job Role the operator creates (from the real renderer). Kubernetes refuses to let
    the operator create a Role granting more than it holds itself."""
    job = api.FineTuneJob.model_validate(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "rbac-probe", "namespace": "ml-team-a"},
            "spec": {
                "model": {"source": "Qwen/Qwen2.5-0.5B"},
                "datasets": [{"source": "s3://data/train.jsonl"}],
                "output": {"uri": "s3://models/rbac-probe/"},
            },
        }
    )
    (role,) = [o for o in build_rbac(job) if o["kind"] == "Role"]
    return _grants(role["rules"])


# Rights an operator never needs; their presence means the RBAC is not least-privilege.
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate"}
FORBIDDEN_RESOURCES = {"*", "secrets", "nodes", "clusterroles", "clusterrolebindings"}

# The parts of a prometheus-operator ServiceMonitor the chart sets (kubernetes-validate does not
# know monitoring.coreos.com, so it is checked against this subset of its CRD schema instead).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$",
                            },
                        },
                    },
                },
            },
        },
    },
}


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _operator_grants(docs: list[dict[str, Any]], sa_name: str) -> dict[str | None, dict[tuple[str, str], set[str]]]:
    """Namespace (None = cluster-wide) -> what the operator's ServiceAccount may do there."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    out: dict[str | None, dict[tuple[str, str], set[str]]] = {}
    for binding in _by_kind(docs, "ClusterRoleBinding") + _by_kind(docs, "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name for s in binding["subjects"]):
            continue
        scope = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for key, verbs in _grants(role["rules"]).items():
            out.setdefault(scope, {}).setdefault(key, set()).update(verbs)
    return out


def _covers(granted: dict[tuple[str, str], set[str]], required: dict[tuple[str, str], set[str]]) -> list[str]:
    return [
        f"{group or 'core'}/{resource}: missing {sorted(verbs - granted.get((group, resource), set()))}"
        for (group, resource), verbs in required.items()
        if not verbs <= granted.get((group, resource), set())
    ]


def _beyond(granted: dict[tuple[str, str], set[str]], required: dict[tuple[str, str], set[str]]) -> list[str]:
    """Verbs granted on a required resource that nothing needs (least privilege, verb by verb)."""
    return [
        f"{group or 'core'}/{resource}: unneeded {sorted(verbs - required[(group, resource)])}"
        for (group, resource), verbs in granted.items()
        if (group, resource) in required and not verbs <= required[(group, resource)]
    ]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_helm_lint_strict(helm: Path, values: Path) -> None:
    proc = run_helm(helm, ["lint", "--strict", str(CHART), "--values", str(values)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_rendered_manifests_are_valid_kubernetes(render: Render, values: Path) -> None:
    docs = render(values)
    assert docs, "nothing rendered"
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(doc, "1.33.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{values.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_operator_deployment_is_one_hardened_replica(render: Render, values: Path) -> None:
    docs = render(values)
    deployment = _one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    # One replica with Recreate: Kopf peering would only add a warning and an API object.
    assert container["command"] + container["args"] == ["kubetune", "operator", "--standalone"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.keys() >= OPERATOR_ENV
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(env["KUBETUNE_METRICS_PORT"])
    assert ports["health"] == int(env["KUBETUNE_HEALTH_PORT"])
    for probe in (container["livenessProbe"], container["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def test_defaults_image_tags_follow_app_version_and_all_namespaces(render: Render) -> None:
    docs = render()
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert container["image"] == f"ghcr.io/kubetune/operator:{APP_VERSION}"
    assert env["KUBETUNE_TRAINER_IMAGE"] == f"ghcr.io/kubetune/trainer:{APP_VERSION}"
    assert env["KUBETUNE_NAMESPACES"] == ""
    assert env["KUBETUNE_LOG_FORMAT"] == "json"
    assert env["KUBETUNE_TRAINER_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert _by_kind(docs, "ServiceMonitor") == []


def test_digest_wins_over_tag_and_trainer_settings_reach_the_operator(render: Render) -> None:
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    deployment = _one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "ft-operator"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert container["image"] == (
        "registry.example/ml/kubetune-operator@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
    )
    assert env["KUBETUNE_TRAINER_IMAGE"] == "registry.example/ml/kubetune-trainer:0.1.0-cu128"
    assert env["KUBETUNE_TRAINER_IMAGE_PULL_POLICY"] == "Always"
    assert env["KUBETUNE_METRICS_PORT"] == "9090"


def test_long_names_stay_within_kubernetes_limits(helm: Path) -> None:
    release = "a-release-name-as-long-as-helm-allows-it-to-be-fifty3"  # Helm's maximum: 53 characters
    proc = run_helm(
        helm,
        ["template", release, str(CHART), "--set", "nameOverride=finetuning-operator", "--set", "rbac.create=true"],
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for doc in docs:
        name = doc["metadata"]["name"]
        limit = 63 if doc["kind"] in {"Deployment", "Service", "ServiceAccount"} else 253
        assert len(name) <= limit and not name.endswith("-"), f"{doc['kind']} {name}"
        assert all(len(v) <= 63 for v in doc["metadata"]["labels"].values()), doc["kind"]
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_cluster_wide_rbac_is_sufficient_and_least_privilege(render: Render) -> None:
    docs = render()
    sa = _one(docs, "ServiceAccount")["metadata"]["name"]
    grants = _operator_grants(docs, sa)
    assert set(grants) == {None}, "cluster-wide mode binds only ClusterRoles"
    cluster = grants[None]
    required = {**REQUIRED_NAMESPACED, ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    assert _covers(cluster, required) == []
    assert _beyond(cluster, required) == []
    assert _covers(cluster, trainer_role_grants()) == [], "the operator could not create the trainer's Role"
    extra = set(cluster) - set(required) - {("kubetune.io", "finetunejobs/finalizers")}
    assert extra == set(), f"rights nobody asked for: {sorted(extra)}"
    for (_, resource), verbs in cluster.items():
        assert resource not in FORBIDDEN_RESOURCES and not verbs & FORBIDDEN_VERBS


def test_namespaced_rbac_grants_nothing_namespaced_cluster_wide(render: Render) -> None:
    docs = render(CHART / "ci" / "namespaced-values.yaml")
    sa = _one(docs, "ServiceAccount")["metadata"]["name"]
    grants = _operator_grants(docs, sa)
    assert set(grants) == {None, "ml-team-a", "ml-team-b"}
    # Only the cluster-scoped CRD read remains cluster-wide: no namespaces, no finetunejobs.
    assert grants[None] == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    for namespace in ("ml-team-a", "ml-team-b"):
        assert _covers(grants[namespace], REQUIRED_NAMESPACED) == [], namespace
        assert _beyond(grants[namespace], REQUIRED_NAMESPACED) == [], namespace
        assert _covers(grants[namespace], trainer_role_grants()) == [], namespace
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["KUBETUNE_NAMESPACES"] == "ml-team-a,ml-team-b"
    assert env["KUBETUNE_DEFAULT_BACKEND"] == "pytorchjob"
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"


def test_existing_service_account_is_bound_and_not_created(render: Render) -> None:
    docs = render(CHART / "ci" / "no-crds-values.yaml")
    assert _by_kind(docs, "ServiceAccount") == []
    assert _by_kind(docs, "CustomResourceDefinition") == []
    assert _by_kind(docs, "Service") == []
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-kubetune"
    assert _covers(_operator_grants(docs, "platform-kubetune")[None], REQUIRED_NAMESPACED) == []
    assert {d["metadata"]["name"] for d in _by_kind(docs, "ClusterRole")} == {"kt-kubetune-cluster", "kt-kubetune"}


def test_chart_crd_is_the_generated_crd(render: Render) -> None:
    crd = _one(render(), "CustomResourceDefinition")
    expected = build_crd()
    assert crd["metadata"]["name"] == expected["metadata"]["name"]
    assert crd["spec"] == expected["spec"], "run python scripts/sync-chart-crd.py"


@pytest.mark.parametrize(("keep", "annotated"), [("true", True), ("false", False)])
def test_crd_keep_policy_switch(render: Render, keep: str, annotated: bool) -> None:
    crd = _one(render(set_values=[f"crds.keep={keep}"]), "CustomResourceDefinition")
    policy = crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy")
    assert (policy == "keep") is annotated


def test_service_monitor_scrapes_the_metrics_service(render: Render) -> None:
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    monitor = _one(docs, "ServiceMonitor")
    service = _one(docs, "Service")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("image.tagg=1", "tagg"),
        ("logLevel=verbose", "logLevel"),
        ("watchNamespaces={Bad_NS}", "watchNamespaces"),
        ("extraEnv[0].name=KUBETUNE_NAMESPACES", "extraEnv"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, setting: str, complaint: str) -> None:
    proc = run_helm(helm, ["template", "kt", str(CHART), "--set", setting])
    assert proc.returncode != 0
    assert complaint in proc.stderr


def test_service_monitor_without_service_fails_clearly(helm: Path) -> None:
    proc = run_helm(
        helm,
        [
            "template",
            "kt",
            str(CHART),
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.service.enabled=false",
        ],
    )
    assert proc.returncode != 0
    assert "metrics.service.enabled" in proc.stderr


def test_notes_give_next_steps(helm: Path) -> None:
    proc = run_helm(
        helm,
        [
            "install", "kt", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
            "--set", "crds.enabled=false", "--set", "watchNamespaces={ml-a}",
        ],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl get ftj -w" in notes
    assert "pytorchjobs.kubeflow.org" in notes
    assert "crds.enabled is false" in notes
    assert "the namespaces: ml-a" in notes


def test_two_replicas_peer_and_one_stays_standalone(render: Render) -> None:
    single = _one(render(), "Deployment")["spec"]
    assert single["replicas"] == 1 and single["strategy"]["type"] == "Recreate"
    assert single["template"]["spec"]["containers"][0]["args"] == ["operator", "--standalone"]
    assert not [d for d in render() if d["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"]

    docs = render(set_values=["replicaCount=2"])
    spec = _one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"][:2] == ["operator", "--peering"]
    (pod_id,) = [e for e in container["env"] if e["name"] == "POD_ID"]
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "Kopf's identity: the pod"
    assert [d for d in docs if d["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"]
    with pytest.raises(AssertionError, match="needs cluster-wide mode"):
        render(set_values=["replicaCount=2", "watchNamespaces={ml-team-a}"])
