"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

`kubetune crd` prints it; `crds/finetunejob.yaml` is its committed output and a test fails when the
two drift. The pydantic JSON schema is turned into a *structural* OpenAPI v3 schema: references
inlined, `Optional` unions flattened, draft-2020 keywords mapped to the OpenAPI 3.0 subset that
Kubernetes accepts, and free-form objects marked `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune.api import v1alpha1 as api

_DROP = {"title", "default", "discriminator", "examples"}


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _convert(target, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            # Kubernetes quantities: 32 or "500m". `pattern` applies to the string form only.
            merged = {"x-kubernetes-int-or-string": True, **rest}
            return _convert(merged, defs)
        if len(options) == 1:
            merged = dict(options[0])
            merged.update(rest)
            return _convert(merged, defs)
        raise ValueError(f"cannot express a union of {len(options)} types in a structural schema: {node}")
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = dict(node["allOf"][0])
        merged.update({k: v for k, v in node.items() if k != "allOf"})
        return _convert(merged, defs)

    out: dict[str, Any] = {}
    default = node.get("default")
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {k: _convert(v, defs) for k, v in value.items()}
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is False:
                continue  # structural schemas prune unknown fields; strict field validation rejects them
            else:
                out["additionalProperties"] = _convert(value, defs)
        elif key == "items":
            out["items"] = _convert(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        sample = out["enum"][0]
        out["type"] = "integer" if isinstance(sample, int) else "string"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if default not in (None, [], {}) and "description" in out and not isinstance(default, dict):
        shown = default if not isinstance(default, bool) else str(default).lower()
        if isinstance(default, list):
            shown = "[" + ", ".join(str(d) for d in default) + "]"
        out["description"] = f"{out['description'].rstrip()} Default: {shown}."
    return out


def _schema_of(model: type[api.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    result: dict[str, Any] = _convert(raw, defs)
    return result


def immutable_spec_rule(spec_fields: list[str]) -> dict[str, str]:
    """A transition rule refusing a spec edit (but spec.suspend) at admission once the operator has
    recorded the training job in status (status.pytorchJob or status.trainJob). On the root: a rule
    on spec cannot see status. Before that is recorded, the operator refuses the edit itself
    (SpecApplied=False) and, before it has made anything, simply renders the edited spec."""
    same = [
        f"(has(self.spec.{f}) ? has(oldSelf.spec.{f}) && self.spec.{f} == oldSelf.spec.{f} : !has(oldSelf.spec.{f}))"
        for f in spec_fields
        if f not in api.MUTABLE_SPEC_FIELDS
    ]
    started = "has(oldSelf.status) && (has(oldSelf.status.pytorchJob) || has(oldSelf.status.trainJob))"
    return {
        "rule": f"!({started}) || ({' && '.join(same)})",
        "message": (
            "the training job exists: only spec.suspend may change. Delete and re-create the FineTuneJob "
            "to change anything else"
        ),
    }


def openapi_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of FineTuneJob."""
    spec = _schema_of(api.FineTuneJobSpec)
    status = _schema_of(api.FineTuneJobStatus)
    status["x-kubernetes-preserve-unknown-fields"] = True
    return {
        "type": "object",
        "description": (api.FineTuneJob.__doc__ or "").strip(),
        "required": ["spec"],
        "x-kubernetes-validations": [immutable_spec_rule(list(spec["properties"]))],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetune.io/v1alpha1"},
            "kind": {"type": "string", "description": "FineTuneJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase"},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.display",
        "description": "Training progress (percent of steps)",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "description": "Latest training loss"},
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.progress.eta",
        "description": "Estimated time left",
        "priority": 1,
    },
    {
        "name": "Margin",
        "type": "number",
        "jsonPath": ".status.progress.rewardMargin",
        "description": "stages dpo/kto: latest reward margin (chosen or desirable minus rejected or undesirable)",
        "priority": 1,
    },
    {"name": "Stage", "type": "string", "jsonPath": ".spec.stage", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source", "priority": 1},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1},
    {"name": "Backend", "type": "string", "jsonPath": ".status.backend", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["kubetune", "ml"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `kubetune crd` from kubetune/api/v1alpha1.py. Do not edit by hand: run `make crd`.\n"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
