"""Pod template controls (spec.resources: podAnnotations, podLabels, imagePullSecrets, schedulerName,
cacheSize) on both backends, and the schemas that must still accept the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune import render
from kubetune.api.validation import SpecError, parse_job

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
SETTINGS = render.RenderSettings(trainer_image="registry.example/kubetune/trainer:1.2.3")
CRDS = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
}


def _job(**resources: Any) -> Any:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["resources"] = {**doc["spec"].get("resources", {}), **resources}
    return parse_job(doc)


def _pod(job: Any, backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod template, the training container's resources) as the controller will run them."""
    children = render.build_children(job, SETTINGS, backend)
    if backend == render.TRAINJOB:
        runtime, trainjob = children[-2:]
        template = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
        return template, trainjob["spec"]["trainer"].get("resourcesPerNode", {})
    template = children[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return template, template["spec"]["containers"][0].get("resources", {})


@pytest.mark.parametrize("backend", render.BACKENDS)
def test_istio_sidecar_is_off_by_default_and_can_be_turned_on(backend: str) -> None:
    template, _ = _pod(_job(), backend)
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    template, _ = _pod(_job(podAnnotations={"sidecar.istio.io/inject": "true", "team": "nlp"}), backend)
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "true", "team": "nlp"}


@pytest.mark.parametrize("backend", render.BACKENDS)
def test_pod_labels_join_kubetunes_own_which_keep_their_values(backend: str) -> None:
    job = _job(podLabels={"cost-center": "ml", render.LABEL_JOB: "someone-else"})
    template, _ = _pod(job, backend)
    assert template["metadata"]["labels"]["cost-center"] == "ml"
    assert template["metadata"]["labels"][render.LABEL_JOB] == render.labels(job)[render.LABEL_JOB]


@pytest.mark.parametrize("backend", render.BACKENDS)
def test_pull_secrets_scheduler_and_cache_size(backend: str) -> None:
    job = _job(imagePullSecrets=["regcred"], schedulerName="volcano", cacheSize="200Gi", memory="64Gi")
    template, resources = _pod(job, backend)
    pod = template["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["schedulerName"] == "volcano"
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"] == {"sizeLimit": "200Gi"}
    assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"] == "200Gi"
    assert resources["requests"]["memory"] == "64Gi"


def test_unset_controls_leave_the_pod_as_it_was() -> None:
    template, resources = _pod(_job(), render.PYTORCHJOB)
    pod = template["spec"]
    assert "imagePullSecrets" not in pod and "schedulerName" not in pod
    assert next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"] == {}
    assert "ephemeral-storage" not in resources.get("requests", {})


@pytest.mark.parametrize("backend", render.BACKENDS)
def test_every_control_set_still_validates(backend: str) -> None:
    job = _job(
        podAnnotations={"prometheus.io/scrape": "true"},
        podLabels={"team": "a"},
        imagePullSecrets=["regcred"],
        schedulerName="volcano",
        cacheSize="100Gi",
    )
    for obj in render.build_children(job, SETTINGS, backend):
        if obj["kind"] in CRDS:
            crd = yaml.safe_load((FIXTURES / CRDS[obj["kind"]]).read_text())
            validator = jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            assert [e.message for e in validator.iter_errors(obj)] == [], obj["kind"]
    template, _ = _pod(job, backend)
    podtemplate = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    kubernetes_validate.validate(podtemplate, "1.33.0", strict=True)


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ({"podLabels": {"team": "not ok"}}, "is not a label value"),
        ({"podAnnotations": {"bad key!": "x"}}, "is not a label or annotation key"),
        ({"cacheSize": "lots"}, "is not a Kubernetes quantity"),
        ({"schedulerName": "Volcano"}, "schedulerName"),
    ],
)
def test_bad_controls_are_refused(resources: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        _job(**resources)
    assert fragment in str(err.value)
