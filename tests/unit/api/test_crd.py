"""The CRD is generated from the schema, structural, in sync, and agrees with the schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api.crd import build_crd, render_crd_yaml
from tests.unit.api.test_validate_cli import BAD, BASE

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


def test_wide_printer_columns_show_the_stage_and_reward_margin_from_fields_the_schema_has() -> None:
    version = build_crd()["spec"]["versions"][0]
    wide = {c["name"]: c for c in version["additionalPrinterColumns"] if c.get("priority") == 1}
    assert wide["Margin"]["jsonPath"] == ".status.progress.rewardMargin" and wide["Margin"]["type"] == "number"
    assert wide["Stage"]["jsonPath"] == ".spec.stage"
    for column in version["additionalPrinterColumns"]:
        node = version["schema"]["openAPIV3Schema"]
        if column["jsonPath"].startswith(".metadata"):
            continue
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]  # a KeyError names a column whose field does not exist


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
        ({"template": "vicuna_v2"}, "is not one of"),
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
            {
                "datasets": [{"source": "x"}],
                "method": {"type": "qlora"},
                "training": {"deepspeed": {"config": {"zero_optimization": {"stage": 3}}}},
            },
            "cannot shard a quantized base",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "training": {"precision": "fp16"}, "resources": {"gpusPerNode": 0}},
            "fp16 needs GPUs",
        ),
        (["training", "deepspeed"], {"stage": "zero2", "config": {}}, "set deepspeed.config or deepspeed.stage"),
        (["method"], {"type": "lora", "quantization": {"bits": 4}}, "quantization applies only to type: qlora"),
        (["method"], {"type": "full", "lora": {"rank": 8}}, "lora settings do not apply to type: full"),
        (["training"], {"epochs": 1, "maxSteps": 5}, "set epochs or maxSteps, not both"),
        ([], {"datasets": [{"source": "x"}], "preference": {"beta": 0.2}}, "preference applies only to stage: dpo"),
        (
            [],
            {"datasets": [{"source": "x"}], "stage": "dpo", "training": {"packing": True}},
            "stage dpo trains on whole pairs and cannot pack them",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "stage": "pt", "training": {"packing": False}},
            "stage pt always joins documents into cutoffLen blocks",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "stage": "kto", "training": {"perDeviceBatchSize": 2, "packing": True}},
            "stage kto trains on whole examples and cannot pack them",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "stage": "kto"},
            "stage kto needs training.perDeviceBatchSize of at least 2",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "stage": "dpo", "preference": {"desirableWeight": 2.0}},
            "preference.desirableWeight and undesirableWeight apply only to stage: kto",
        ),
        (
            [],
            {
                "datasets": [{"source": "x"}],
                "stage": "kto",
                "training": {"perDeviceBatchSize": 2},
                "preference": {"loss": "ipo"},
            },
            "preference.loss, labelSmoothing and sftWeight apply only to stage: dpo",
        ),
        (
            [],
            {"datasets": [{"source": "x"}], "model": {"source": "x", "reference": "Qwen/Qwen2.5-0.5B"}},
            "model.reference applies only to stage: dpo or kto",
        ),
        (["preference"], {"labelSmoothing": 0.1}, "labelSmoothing applies only to loss: robust"),
        (["preference"], {"loss": "orpo", "simpoGamma": 1.0}, "simpoGamma applies only to loss: simpo"),
        *(
            (
                [],
                {
                    "datasets": [{"source": "x"}],
                    "stage": "dpo",
                    "model": {"source": "x", "reference": "y"},
                    "preference": {"loss": loss},
                },
                "model.reference does not apply to preference.loss orpo or simpo",
            )
            for loss in ("orpo", "simpo")
        ),
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


# --------------------------------------------------------------------------------------------
# What the API server does with a FineTuneJob, step by step, so that a test can ask "is every
# spec `kubetune validate` refuses also refused at admission?":
# 1. decode and prune: fields the structural schema does not declare are dropped, and reported as
#    errors when the client asks for strict field validation (kubectl >= 1.27 does by default:
#    `--validate=strict` sends fieldValidation=Strict); `null` in a non-nullable field is dropped
#    silently (PruneNonNullableNullsWithoutDefaults), so CEL and the schema never see it;
# 2. the OpenAPI schema (types, enums, patterns, bounds);
# 3. the CEL rules, on what is left after pruning.
# --------------------------------------------------------------------------------------------


def _prune(schema: dict[str, Any], value: Any, path: str, unknown: list[str]) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return {k: _prune(extra, v, f"{path}.{k}", unknown) for k, v in value.items() if v is not None}
            return value  # free-form (x-kubernetes-preserve-unknown-fields)
        kept = {}
        for key, sub in value.items():
            if key not in props:
                if not schema.get("x-kubernetes-preserve-unknown-fields"):
                    unknown.append(f"{path}.{key}" if path else key)
                continue
            if sub is None and not props[key].get("nullable"):
                continue
            kept[key] = _prune(props[key], sub, f"{path}.{key}" if path else key, unknown)
        return kept
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(schema["items"], v, f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    return value


def _cel_failures(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    failed = [f"{path}: {m}" for m in _cel_ok(schema.get("x-kubernetes-validations", []), value)]
    if isinstance(value, dict):
        for key, sub in value.items():
            child = (schema.get("properties") or {}).get(key) or (
                schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
            )
            if child is not None:
                failed += _cel_failures(child, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            failed += _cel_failures(schema["items"], sub, f"{path}[{i}]")
    return failed


def admission_errors(doc: dict[str, Any]) -> list[str]:
    """Why the API server (with strict field validation) would refuse `doc`; [] if it would admit it."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unknown: list[str] = []
    pruned = _prune(schema, doc, "", unknown)
    errors = [f"{u}: unknown field" for u in unknown]
    errors += [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(pruned)]
    if not errors:  # the API server runs CEL only on values that passed the schema
        errors += _cel_failures(schema, pruned, "")
    return errors


TYPOS = [
    ("spec", "trainng"),
    ("spec", "dataset"),
    ("spec.model", "revison"),
    ("spec.model", "trust_remote_code"),
    ("spec.datasets[0]", "formatt"),
    ("spec.data", "validation_split"),
    ("spec.method", "Type"),
    ("spec.method.lora", "rnak"),
    ("spec.training", "learning_rate"),
    ("spec.training", "epoch"),
    ("spec.training.deepspeed", "stag"),
    ("spec.resources", "gpus"),
    ("spec.network", "hostNetwrok"),
    ("spec.network.nccl", "socketIfName"),
    ("spec.output", "url"),
    ("spec.storage", "endpointUrl"),
    ("spec.runPolicy", "backoff"),
]


def _with_typo(where: str, key: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    node: Any = doc
    for part in where.replace("[0]", ".0").split("."):
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[key] = 1
    return doc


# Specs `kubetune validate` refuses that our CRD cannot refuse, and why that is acceptable.
NOT_REFUSED_BY_THE_CRD = {
    # Not a FineTuneJob at all: kubectl cannot decode the file, or the API server routes the object
    # by apiVersion/kind to another resource (or refuses an unknown kind) before our schema applies.
    "not-yaml": "no object",
    "scalar": "no object",
    "api-version": "routed by apiVersion",
    "kind": "routed by kind",
    # metadata is the API server's own: it refuses both itself (a name must be a DNS subdomain,
    # annotations at most 256 KiB); the CRD may not declare metadata beyond `type: object`.
    "bad-name": "metadata is validated by the API server",
    "annotations-huge": "metadata is validated by the API server",
    # A null in a non-nullable field is pruned before validation: stored as if the line were not
    # there, so the job gets the default. Neither schema nor CEL can see it (CEL treats null as
    # absent); marking fields nullable would only make null a legal value.
    "lr-null": "null is pruned before validation",
    # .inf has no JSON form: kubectl's YAML-to-JSON conversion fails before anything is sent.
    "inf": "refused by kubectl's JSON encoding",
    # network.nccl.env is a map: a structural schema cannot bound its keys' length, so a CEL rule
    # over the keys would be estimated too costly and the API server would refuse the CRD. The
    # operator refuses these jobs (InvalidSpec) before it creates anything.
    "nccl-secret": "no CEL over map keys",
    **{f"nccl-env-{key}": "no CEL over map keys" for key in ["KUBETUNE_CONFIG", "KUBETUNE_JOB_NAME", "MASTER_ADDR"]},
    **{f"nccl-env-{key}": "no CEL over map keys" for key in ["NCCL_DEBUG", "NCCL_X=1"]},
}


def _cli_refuses(doc: Any) -> bool:
    from kubetune.api.validation import SpecError, load_jobs

    try:
        load_jobs(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    except SpecError:
        return True
    return False


@pytest.mark.parametrize(("case", "doc"), [(b[0], b[1]) for b in BAD], ids=[b[0] for b in BAD])
def test_every_spec_the_cli_refuses_is_refused_at_admission(case: str, doc: Any) -> None:
    assert _cli_refuses(doc)
    if case not in NOT_REFUSED_BY_THE_CRD:
        assert admission_errors(doc) != []
    elif isinstance(doc, dict):
        assert admission_errors(doc) == [], "the CRD refuses this now: drop it from NOT_REFUSED_BY_THE_CRD"


@pytest.mark.parametrize(("where", "key"), TYPOS, ids=[f"{w}.{k}" for w, k in TYPOS])
def test_typos_at_every_level_are_unknown_fields_to_the_cli_and_the_crd(where: str, key: str) -> None:
    doc = _with_typo(where, key)
    assert _cli_refuses(doc)
    assert f"{where}.{key}: unknown field" in admission_errors(doc)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_admitted(path: Path) -> None:
    assert admission_errors(yaml.safe_load(path.read_text())) == []


def test_the_crd_refuses_a_plain_credential_in_env_with_the_python_rule() -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["env"] = [{"name": "HF_TOKEN", "value": "hf_x"}]
    assert any("looks like a credential" in e for e in admission_errors(doc))
    doc["spec"]["env"] = [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}]
    assert admission_errors(doc) == []


@pytest.mark.parametrize(
    "name",
    [
        "HF_TOKEN",
        "WANDB_API_KEY",
        "db_password_file",
        "MY_SECRET_X",
        "TOKENIZERS_PARALLELISM",
        "MAX_TOKENS",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "KEYBOARD",
        "SECRETARY",
        "NCCL_SOCKET_IFNAME",
    ],
)
def test_cel_and_python_agree_on_credential_names(name: str) -> None:
    import celpy

    from kubetune.api.envvars import credential_cel, looks_like_credential

    env = celpy.Environment()
    cel = bool(env.program(env.compile(credential_cel("name"))).evaluate({"name": celpy.json_to_cel(name)}))
    assert cel is looks_like_credential(name)


def test_condition_types_in_kubectl_explain_are_the_ones_the_operator_sets() -> None:
    import re

    from kubetune.api import conditions as st

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    description = schema["properties"]["conditions"]["items"]["properties"]["type"]["description"]
    listed = set(re.findall(r"[A-Z][A-Za-z]+", description.split(":", 1)[1]))
    assert listed == set(st.CONDITION_TYPES)


def test_cel_rules_accept_an_own_deepspeed_config() -> None:
    config = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
    assert _cel_ok(_rules(["training", "deepspeed"]), {"config": config}) == []
    spec = {"datasets": [{"source": "x"}], "method": {"type": "qlora"}, "training": {"deepspeed": {"config": config}}}
    assert _cel_ok(_rules([]), spec) == []
    assert _cel_ok(_rules([]), {**spec, "training": {"deepspeed": {"config": {}}}}) == []
