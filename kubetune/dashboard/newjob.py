"""The new-job form: common fields in, FineTuneJob YAML and `kubetune validate`'s problems out.

The form never talks to the cluster: it produces YAML for GitOps or `kubectl apply`. Each field is
named by its path in the FineTuneJob, the path problems carry, so an error lands beside its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from kubetune.api import v1alpha1 as api
from kubetune.api.validation import SpecError, parse_job


@dataclass(frozen=True)
class Field:
    path: str  # where the value goes, e.g. spec.datasets[0].format
    label: str
    default: str = ""
    kind: str = "text"  # text, int, float, or choice (options from the schema's enum at `enum`)
    enum: str = ""
    hint: str = ""


FIELDS = (
    Field("metadata.name", "Name", "my-finetune", hint="a DNS label"),
    Field("metadata.namespace", "Namespace", "default"),
    Field("spec.model.source", "Model", "Qwen/Qwen2.5-0.5B-Instruct", hint="hub id, s3:// URI or path"),
    Field("spec.datasets[0].source", "Dataset", "s3://my-data/train.jsonl", hint="s3:// file or prefix"),
    Field("spec.datasets[0].format", "Format", "auto", kind="choice", enum="DataFormat"),
    Field("spec.template", "Template", "auto", kind="choice", enum="template"),
    Field("spec.method.type", "Method", "lora", kind="choice", enum="MethodType"),
    Field("spec.method.lora.rank", "LoRA rank", "16", kind="int", hint="lora and qlora"),
    Field("spec.training.epochs", "Epochs", "3", kind="float"),
    Field("spec.training.learningRate", "Learning rate", "0.0001", kind="float"),
    Field("spec.training.cutoffLen", "Cutoff length", "2048", kind="int", hint="tokens per example"),
    Field("spec.resources.nodes", "Nodes", "1", kind="int"),
    Field("spec.resources.gpusPerNode", "GPUs per node", "1", kind="int"),
    Field("spec.output.uri", "Output URI", "s3://my-models/my-finetune/"),
    Field("spec.storage.credentialsSecret.name", "Storage secret", hint="Secret with AWS_* keys; empty: ambient"),
)
_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


@cache
def options(field: Field) -> list[str]:
    schema = api.FineTuneJobSpec.model_json_schema(by_alias=True)
    source = schema["properties"][field.enum] if field.enum == "template" else schema["$defs"][field.enum]
    return [str(v) for v in source["enum"]]


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    node: Any = doc
    parts = path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if m := _INDEX.match(part):
            items = node.setdefault(m.group(1), [])
            while len(items) <= int(m.group(2)):
                items.append({})
            if last:
                items[int(m.group(2))] = value
            node = items[int(m.group(2))]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _typed(field: Field, text: str) -> Any:
    """The number the field holds; text that is no number is kept for validation to name."""
    try:
        return int(text) if field.kind == "int" else float(text) if field.kind == "float" else text
    except ValueError:
        return text


def manifest(form: Mapping[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": api.API_VERSION, "kind": api.KIND}
    method = form.get("spec.method.type", "")
    for field in FIELDS:
        text = form.get(field.path, "").strip()
        if not text or (field.path.startswith("spec.method.lora.") and method == "full"):
            continue
        _put(doc, field.path, _typed(field, text))
    return doc


def check(form: Mapping[str, str]) -> tuple[str, list[dict[str, str]]]:
    """(YAML, problems): the problems `kubetune validate` would print for that YAML, by field path."""
    doc = manifest(form)
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        parse_job(doc)
    except SpecError as exc:
        return text, [{"path": p.path, "message": p.message} for p in exc.problems]
    return text, []


def field_of(path: str) -> str:
    """The form field a problem belongs to: its own path, or the closest field above it."""
    paths = [f.path for f in FIELDS]
    while path and path not in paths:
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return path
