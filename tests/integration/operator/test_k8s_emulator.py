"""The test API server behaves like a real one where the operator tests rely on it.

If one of these fails, the operator tests above it prove less than they claim.
"""

from __future__ import annotations

import pytest
import requests
from kubernetes.client.exceptions import ApiException

from tests.integration.operator.harness import MERGE, Cluster, job_manifest
from tests.integration.operator.k8s_emulator import ApiServer

pytestmark = pytest.mark.integration
FTJ = ("kubetune.io", "v1alpha1", "default", "finetunejobs")


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    cluster.install_crds()
    return cluster


def test_metadata_stamping_and_generation(crds: Cluster) -> None:
    made = crds.create_job(job_manifest("stamp"))
    meta = made["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"].isdigit()
    status_only = crds.custom.patch_namespaced_custom_object_status(
        *FTJ, "stamp", {"status": {"phase": "X"}, "spec": {"suspend": True}}, _content_type=MERGE
    )
    assert status_only["metadata"]["generation"] == 1, "status writes never bump generation"
    assert "suspend" not in status_only["spec"], "the status subresource ignores spec"
    assert int(status_only["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    spec_edit = crds.patch_job("stamp", {"spec": {"suspend": True}, "status": {"phase": "Y"}})
    assert spec_edit["metadata"]["generation"] == 2
    assert spec_edit["status"] == {"phase": "X"}, "the main resource ignores status"


def test_conflicts_and_json_patch_tests(crds: Cluster) -> None:
    made = crds.create_job(job_manifest("conflict"))
    with pytest.raises(ApiException) as exists:
        crds.create_job(job_manifest("conflict"))
    assert exists.value.status == 409
    with pytest.raises(ApiException) as stale:
        crds.patch_job("conflict", {"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}})
    assert stale.value.status == 409
    url = f"{crds.server.url}/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs/conflict"
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": made["metadata"]["resourceVersion"] + "0"},
        {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}},
    ]
    rsp = requests.patch(url, json=ops, headers={"Content-Type": "application/json-patch+json"}, timeout=5)
    assert rsp.status_code == 422
    ops[0]["value"] = made["metadata"]["resourceVersion"]
    rsp = requests.patch(url, json=ops, headers={"Content-Type": "application/json-patch+json"}, timeout=5)
    assert rsp.status_code == 200 and rsp.json()["metadata"]["labels"] == {"x": "y"}


def test_generate_name_selectors_and_garbage_collection(crds: Cluster) -> None:
    owner = crds.create_job(job_manifest("owner"))
    ref = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for _ in range(2):
        crds.core.create_namespaced_config_map(
            "default", {"metadata": {"generateName": "child-", "labels": {"app": "t"}, "ownerReferences": [ref]}}
        )
    crds.core.create_namespaced_config_map("default", {"metadata": {"name": "unrelated", "labels": {"app": "u"}}})
    children = crds.core.list_namespaced_config_map("default", label_selector="app=t").items
    assert len(children) == 2 and all(c.metadata.name.startswith("child-") for c in children)
    crds.delete_job("owner")
    assert crds.core.list_namespaced_config_map("default", label_selector="app=t").items == []
    assert [c.metadata.name for c in crds.core.list_namespaced_config_map("default").items] == ["unrelated"]


def test_generated_names_stay_unique_over_thousands_of_events() -> None:
    """Kopf posts every Event with generateName and does not retry a 409: a bench of a few thousand
    jobs must not lose Events to suffix collisions (five hex characters collided within ~1000)."""
    server = ApiServer()
    for _ in range(5000):
        server.seed("v1/events", {"metadata": {"generateName": "job.", "namespace": "default"}, "reason": "Created"})
    names = {key[2] for key in server._objects}
    assert sum(name.startswith("job.") for name in names) == 5000


def test_finalizers_hold_deletion(crds: Cluster) -> None:
    crds.create_job({**job_manifest("held"), "metadata": {"name": "held", "finalizers": ["x/y"]}})
    crds.delete_job("held")
    assert crds.job("held")["metadata"]["deletionTimestamp"]
    crds.patch_job("held", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        crds.job("held")
    assert gone.value.status == 404


def test_unknown_resources_are_404_until_their_crd_exists(cluster: Cluster) -> None:
    with pytest.raises(ApiException) as missing:
        cluster.custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    assert missing.value.status == 404
    cluster.ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {"type": "object"}}}
                ],
            },
        }
    )
    assert cluster.custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")["items"] == []


def test_watch_honours_resource_version_and_timeout(crds: Cluster) -> None:
    listed = crds.custom.list_namespaced_custom_object(*FTJ)
    crds.create_job(job_manifest("watched"))
    url = f"{crds.server.url}/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs"
    params = {"watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"], "timeoutSeconds": "1"}
    with requests.get(url, params=params, stream=True, timeout=10) as rsp:
        lines = [line for line in rsp.iter_lines() if line]
    assert listed["kind"] == "FineTuneJobList"
    assert len(lines) == 1 and b'"watched"' in lines[0], "only what changed since the listed version"
