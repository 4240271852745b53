"""The chart's dashboard (off by default): valid Kubernetes, its own ServiceAccount, read-only RBAC."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.integration.deploy.deploy_helm import NAMESPACE, Render

pytestmark = pytest.mark.integration

READ_ONLY = {("kubetune.io", "finetunejobs"): {"get", "list", "watch"}, ("", "events"): {"get", "list", "watch"}}


def _dashboard(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {
        d["kind"]: d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "dashboard"
    }
    assert len(found) == len([d for d in docs if d["metadata"]["name"].endswith("-dashboard")])  # one of each kind
    return found


def _grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    return {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}


def test_off_by_default(render: Render) -> None:
    assert _dashboard(render()) == {}


@pytest.mark.parametrize("namespace", ["", "ml"], ids=["cluster-wide", "one-namespace"])
def test_dashboard_deploys_read_only_with_its_own_service_account(render: Render, namespace: str) -> None:
    docs = render(set_values=["dashboard.enabled=true", f"dashboard.namespace={namespace}"])
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    parts = _dashboard(docs)
    role_kind = "Role" if namespace else "ClusterRole"
    assert set(parts) == {"ServiceAccount", role_kind, f"{role_kind}Binding", "Deployment", "Service"}
    account = parts["ServiceAccount"]["metadata"]["name"]
    assert _grants(parts[role_kind]["rules"]) == READ_ONLY
    binding = parts[f"{role_kind}Binding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": account}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    if namespace:
        assert parts[role_kind]["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    # Nothing else in the release is bound to the dashboard's account.
    bound = [d for d in docs if d["kind"].endswith("Binding") and any(s["name"] == account for s in d["subjects"])]
    assert bound == [binding]

    pod = parts["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    (container,) = pod["containers"]
    assert container["command"] == ["kubetune"]
    assert container["args"][:3] == ["dashboard", "--host=0.0.0.0", "--port=8080"]
    assert ("--namespace=ml" in container["args"]) == bool(namespace)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = parts["Service"]["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["targetPort"] == "http"
    assert service["selector"] == parts["Deployment"]["spec"]["selector"]["matchLabels"]
    # The operator's Service must not select the dashboard's pod, nor the dashboard's the operator's.
    operator = next(d for d in docs if d["kind"] == "Deployment" and d is not parts["Deployment"])
    assert operator["spec"]["selector"]["matchLabels"] != service["selector"]


def test_schema_rejects_unknown_dashboard_values(render: Render) -> None:
    with pytest.raises(AssertionError, match=r"additional properties|not allowed"):
        render(set_values=["dashboard.enabled=true", "dashboard.allowDelete=true"])


def test_allow_create_grants_create_and_passes_the_flag(render: Render) -> None:
    parts = _dashboard(render(set_values=["dashboard.enabled=true", "dashboard.allowCreate=true"]))
    grants = _grants(parts["ClusterRole"]["rules"])
    assert grants == {**READ_ONLY, ("kubetune.io", "finetunejobs"): {"get", "list", "watch", "create"}}
    (container,) = parts["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "--allow-create" in container["args"]
    (default,) = _dashboard(render(set_values=["dashboard.enabled=true"]))["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--allow-create" not in default["args"]
