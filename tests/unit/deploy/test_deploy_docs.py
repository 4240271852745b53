"""docs/deploy.md and docs/llamafactory.md stay true to the code: the field paths they name exist in
the CRD, the chart values they name exist, and their YAML examples parse and validate."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api.crd import build_crd
from kubetune.api.validation import parse_job

REPO = Path(__file__).resolve().parents[3]
DOCS = {name: (REPO / "docs" / name).read_text() for name in ("deploy.md", "llamafactory.md")}
CHART_VALUES = yaml.safe_load((REPO / "charts" / "kubetune" / "values.yaml").read_text())
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def yaml_blocks(text: str) -> list[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


def resolve_field(path: str) -> bool:
    """Does `spec.a.b[].c` exist in the FineTuneJob schema?"""
    node = SCHEMA
    for part in path.split("."):
        is_list = part.endswith("[]")
        node = (node.get("properties") or {}).get(part.removesuffix("[]"))
        if node is None:
            return False
        if is_list:
            node = node.get("items") or {}
    return True


def field_paths(text: str) -> set[str]:
    paths = set()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # inline code only, not example blocks
    for code in re.findall(r"`([^`\n]+)`", prose):
        for match in re.finditer(r"(?<![\w.])((?:spec|status)\.[A-Za-z][\w.\[\]]*)", code):
            paths.add(match.group(1).rstrip("."))
    return paths


@pytest.mark.parametrize("name", sorted(DOCS))
def test_field_paths_exist_in_the_crd(name: str) -> None:
    paths = field_paths(DOCS[name])
    assert paths, "no field paths found; did the doc format change?"
    assert sorted(p for p in paths if not resolve_field(p)) == []


def test_llamafactory_table_covers_every_dataset_mapping_field() -> None:
    paths = field_paths(DOCS["llamafactory.md"])
    dataset = SCHEMA["properties"]["spec"]["properties"]["datasets"]["items"]["properties"]
    for group in ("columns", "tags"):
        for key in dataset[group]["properties"]:
            assert f"spec.datasets[].{group}.{key}" in paths, f"{group}.{key} is not mapped"


@pytest.mark.parametrize("name", sorted(DOCS))
def test_yaml_examples_parse_and_finetunejobs_validate(name: str) -> None:
    blocks = yaml_blocks(DOCS[name])
    assert blocks
    jobs = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "FineTuneJob"]
    assert jobs, "each guide shows at least one complete FineTuneJob"
    for job in jobs:
        parse_job(job)


def test_vllm_deployment_example_is_valid_kubernetes() -> None:
    (deployment,) = [b for b in yaml_blocks(DOCS["deploy.md"]) if isinstance(b, dict) and b.get("kind") == "Deployment"]
    kubernetes_validate.validate(deployment, "1.33.0", strict=True)
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert "manifest.json" in " ".join(init["args"]), "vLLM must wait for the completion marker"


def test_flux_snippet_matches_the_shipped_kustomization() -> None:
    (snippet,) = [b for b in yaml_blocks(DOCS["deploy.md"]) if isinstance(b, dict) and "healthCheckExprs" in b]
    docs = yaml.safe_load_all((REPO / "gitops" / "flux" / "kustomization.yaml").read_text())
    (shipped,) = [d for d in docs if d and "healthCheckExprs" in d["spec"]]
    assert snippet["healthCheckExprs"] == shipped["spec"]["healthCheckExprs"]


def test_chart_values_named_in_the_guide_exist() -> None:
    named = re.findall(
        r"`((?:crds|image|trainer|metrics|watchNamespaces|logFormat|logLevel)[\w.]*)`", DOCS["deploy.md"]
    )
    assert named
    for path in named:
        node: Any = CHART_VALUES
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} is not a chart value"
            node = node[part]


def test_which_backend_section_matches_the_operator() -> None:
    """The install commands are the ones the operator's waiting condition names, and the reasons
    and chart value the section promises are the real ones."""
    from kubetune.api import conditions
    from kubetune.operator import backends

    section = DOCS["deploy.md"].split("### Which backend do I have", 1)[1].split("\n## ", 1)[0]
    for job_api in backends.BY_NAME.values():
        command = re.search(r"\((kubectl apply [^)]*)\)", job_api.install)
        assert command and command.group(1) in section, job_api.name
        assert f"`{job_api.name}`" in section and f"`{job_api.plural}.{job_api.group}`" in section
    for reason in (conditions.REASON_CRD_MISSING, conditions.REASON_TRAINJOB_CRD_MISSING, conditions.CREATED):
        assert f"`{reason}" in section, reason
    assert backends.missing_reason("auto") == conditions.REASON_CRD_MISSING
    assert "trainer.kubeflow.org/trainjob" in section and "kubeflow.org/pytorchjob" in section
