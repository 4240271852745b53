"""The CRD is generated from the schema, structural, in sync, and agrees with the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api.crd import build_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_committed_crd_matches_a_fresh_generation() -> None:
    committed = (ROOT / "crds" / "finetunejob.yaml").read_text()
    assert committed == render_crd_yaml(), "crds/finetunejob.yaml is stale: run `make crd`"


def test_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(build_crd(), "1.33.0", strict=True)


def _walk(node: Any, path: str = "") -> list[str]:
    """Violations of the structural-schema rules Kubernetes enforces."""
    bad: list[str] = []
    if isinstance(node, dict):
        for key in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "const", "title"):
            if key in node and not path.endswith(".properties"):
                bad.append(f"{path}: {key}")
        if node.get("additionalProperties") is False:
            bad.append(f"{path}: additionalProperties false")
        is_schema = not path.endswith(".properties")
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        if is_schema and "type" not in node and not untyped_ok:
            bad.append(f"{path}: no type")
        # metadata is the API server's own; CRDs declare it as a bare object.
        if (
            path != ".properties.metadata"
            and node.get("type") == "object"
            and not (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            )
        ):
            bad.append(f"{path}: object without properties")
        for key, value in node.items():
            if key in ("properties",):
                for name, sub in value.items():
                    bad += _walk(sub, f"{path}.properties.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                bad += _walk(value, f"{path}.{key}")
    return bad


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def test_every_spec_field_has_a_description() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        if "description" not in node:
            missing.append(path)
        for name, sub in node.get("properties", {}).items():
            visit(sub, f"{path}.{name}")
        items = node.get("items")
        if isinstance(items, dict) and items.get("type") == "object":
            visit(items, f"{path}[]")

    visit(schema, "spec")
    assert missing == []


def test_crd_has_status_subresource_printer_columns_and_short_name() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Progress", "Loss", "Age"} <= columns
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]


def test_cel_rules_are_attached_where_fields_interact() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    method_rules = [r["rule"] for r in spec["properties"]["method"]["x-kubernetes-validations"]]
    training_rules = [r["rule"] for r in spec["properties"]["training"]["x-kubernetes-validations"]]
    assert any("quantization" in r for r in method_rules)
    assert any("maxSteps" in r for r in training_rules)


def _crd_validator() -> jsonschema.Draft4Validator:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    errors = [e.message for e in _crd_validator().iter_errors(doc)]
    assert errors == []


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"method": {"type": "lora", "lora": {"rank": 0}}}, "minimum"),
        ({"method": {"type": "dora"}}, "is not one of"),
        ({"resources": {"nodes": 0}}, "minimum"),
        ({"template": "vicuna"}, "is not one of"),
        ({"datasets": []}, "non-empty"),
    ],
)
def test_crd_schema_rejects_nonsense_at_admission(patch: dict[str, Any], fragment: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"].update(patch)
    messages = " | ".join(e.message for e in _crd_validator().iter_errors(doc))
    assert fragment in messages


def _rules(path: list[str]) -> list[dict[str, str]]:
    node = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    rules: list[dict[str, str]] = node["x-kubernetes-validations"]
    return rules


def _cel_ok(rules: list[dict[str, str]], value: dict[str, Any]) -> list[str]:
    """The messages of the CEL rules that reject `value` (evaluated with cel-python)."""
    import celpy

    env = celpy.Environment()
    failed = []
    for rule in rules:
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            failed.append(rule["message"])
    return failed


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ([], {"datasets": [{"source": "x", "split": "validation"}]}, "at least one dataset with split: train"),
        (
            [],
            {"datasets": [{"source": "x"}], "method": {"type": "qlora"}, "training": {"deepspeed": {"stage": "zero3"}}},
            "cannot shard a quantized base",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "training": {"precision": "fp16"}, "resources": {"gpusPerNode": 0}},
            "fp16 needs GPUs",
        ),
        (["method"], {"type": "lora", "quantization": {"bits": 4}}, "quantization applies only to type: qlora"),
        (["method"], {"type": "full", "lora": {"rank": 8}}, "lora settings do not apply to type: full"),
        (["training"], {"epochs": 1, "maxSteps": 5}, "set epochs or maxSteps, not both"),
        (["env", "[]"], {"name": "HF_TOKEN"}, "set exactly one of value and secretKeyRef"),
    ],
)
def test_cel_rules_reject_what_the_python_schema_rejects(path: list[str], value: dict[str, Any], message: str) -> None:
    assert any(message in m for m in _cel_ok(_rules(path), value))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_cel_rules_accept_every_example(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())["spec"]
    assert _cel_ok(_rules([]), spec) == []
    assert _cel_ok(_rules(["method"]), spec.get("method", {})) == []
    assert _cel_ok(_rules(["training"]), spec.get("training", {})) == []


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"output": {"uri": "gs://bucket/x"}}, "does not match"),
        ({"resources": {"sharedMemory": "lots"}}, "does not match"),
        ({"queueName": "-team-a"}, "does not match"),
    ],
)
def test_crd_patterns_reject_bad_strings(patch: dict[str, Any], fragment: str) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"].update(patch)
    messages = " | ".join(e.message for e in _crd_validator().iter_errors(doc))
    assert fragment in messages
