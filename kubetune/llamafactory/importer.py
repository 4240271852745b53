"""A LLaMA-Factory training YAML (and its dataset_info.json) as a FineTuneJob.

The keys go through the one table in `kubetune.llamafactory.keys`; the datasets through their
`dataset_info.json` entries, with LLaMA-Factory's defaults for what an entry leaves out (alpaca
formatting, `conversations` as the turns column). The result is checked with `parse_job`, the same
check as `kubetune validate`, before it is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api.validation import load_documents, parse_job, read_job_text
from kubetune.llamafactory.keys import KEYS, KEYS_BY_NAME, Draft, Refused

__all__ = ["Options", "Refused", "import_config"]

# dataset_info.json columns and tags that are FineTuneJob columns and tags (same words, camelCase).
COLUMNS = ("prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected", "kto_tag")
TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
# What a dataset_info.json entry can ask for that kubetune does not train, and why.
REFUSED_COLUMNS = {
    "images": "multimodal data is not supported",
    "videos": "multimodal data is not supported",
    "audios": "multimodal data is not supported",
}
# Dataset kinds a stage trains on: LLaMA-Factory's `ranking: true` pairs and `kto_tag` answers.
STAGE_OF_DATA = {"ranking": "dpo", "kto_tag": "kto"}


@dataclass(frozen=True)
class Options:
    dataset_info: str | None = None
    dataset_dir: str | None = None
    data_uri: str | None = None
    output_uri: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None


def import_config(path: str, options: Options) -> str:
    """The FineTuneJob YAML for the LLaMA-Factory config at `path`. Raises Refused or SpecError."""
    config = _read_config(path)
    draft = Draft(config, config_dir=os.path.dirname(os.path.abspath(path)))
    draft.spec = {k: {} for k in ("model", "datasets", "data", "template", "method", "training", "resources", "output")}
    for key in KEYS:
        if key.name in config:
            if key.apply is None:
                draft.unmapped[key.name] = _shown(config[key.name]) + (f"  ({key.note})" if key.note else "")
                continue
            key.apply(config[key.name], draft)
            if key.differs and _has(draft.spec, _field(key.target)):
                draft.comments.setdefault(_field(key.target), key.differs)
        elif key.default is not None and key.apply is not None:
            key.apply(key.default, draft)
            if _has(draft.spec, _field(key.target)):
                draft.comments.setdefault(_field(key.target), "LLaMA-Factory's default")
        elif key.always and key.apply is not None:
            key.apply(None, draft)
    for name, value in config.items():
        if name not in KEYS_BY_NAME:
            draft.unmapped[name] = f"{_shown(value)}  (not known to this importer)"
    draft.spec["datasets"] = _datasets(config, options, draft)
    draft.spec["output"] = {"uri": _output_uri(config, options)}
    if draft.get("stage") == "kto":
        _kto_batch(draft)
    if options.nodes is not None:
        draft.spec["resources"]["nodes"] = options.nodes
    if options.gpus_per_node is not None:
        draft.spec["resources"]["gpusPerNode"] = options.gpus_per_node
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": _job_name(config, path)},
        "spec": {k: v for k, v in draft.spec.items() if v not in ({}, [], None)},
    }
    parse_job(doc, path)  # what `kubetune validate` checks: values out of our ranges fail here, by field
    return _header(path, draft) + _emit(doc, draft.comments)


def _kto_batch(draft: Draft) -> None:
    """TRL's KTO pairs each prompt with another answer of its batch: a batch of 1 becomes 2, with half the
    accumulation where it divides, so the effective batch stays LLaMA-Factory's."""
    training = draft.spec["training"]
    if training.get("perDeviceBatchSize", 1) >= 2:
        return
    steps = training.get("gradientAccumulationSteps", 1)
    training["perDeviceBatchSize"] = 2
    note = "TRL's KTO needs at least 2 (LLaMA-Factory: 1)"
    if steps % 2 == 0:
        training["gradientAccumulationSteps"] = steps // 2
        draft.comments["spec.training.gradientAccumulationSteps"] = "halved: the batch per device is doubled"
    draft.comments["spec.training.perDeviceBatchSize"] = note


def _read_config(path: str) -> dict[str, Any]:
    docs = load_documents(read_job_text(path), path)
    if len(docs) != 1 or not isinstance(docs[0][1], dict):
        raise Refused("(file)", "expected one YAML mapping of LLaMA-Factory keys")
    config: dict[str, Any] = docs[0][1]
    return config


def _field(target: str) -> str:
    """The first field a table row names ("spec.training.deepspeed.stage, .offload" -> its stage)."""
    return target.split(",")[0].split(":")[0]


def _has(spec: dict[str, Any], field: str) -> bool:
    if not field.startswith("spec."):
        return False
    node: Any = spec
    for part in field.removeprefix("spec.").split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _datasets(config: dict[str, Any], options: Options, draft: Draft) -> list[dict[str, Any]]:
    names = _names(config.get("dataset"))
    if not names:
        raise Refused("dataset", "no dataset named; kubetune needs at least one training dataset")
    evals = _names(config.get("eval_dataset"))
    data_dir = options.dataset_dir or config.get("dataset_dir", "data")
    info_path = options.dataset_info or os.path.join(data_dir, "dataset_info.json")
    try:
        with open(info_path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        raise Refused("dataset", f"cannot read {info_path} (pass --dataset-info): {exc}") from None
    files_dir = options.dataset_dir or (os.path.dirname(info_path) if options.dataset_info else data_dir)
    out: list[dict[str, Any]] = []
    for name, split in [*((n, "train") for n in names), *((n, "validation") for n in evals)]:
        if name not in info:
            raise Refused("dataset", f"'{name}' is not in {info_path}")
        entry = _dataset(name, info[name], files_dir, options, config.get("max_samples"), draft, len(out))
        if split == "validation":
            entry["split"] = "validation"
        out.append(entry)
    return out


def _dataset(
    name: str, entry: dict[str, Any], files_dir: str, options: Options, max_samples: Any, draft: Draft, index: int
) -> dict[str, Any]:
    where = f"dataset '{name}'"
    columns = entry.get("columns") or {}
    stage = draft.get("stage", "sft")
    for marker, wanted in STAGE_OF_DATA.items():
        if (entry.get(marker) if marker == "ranking" else marker in columns) and stage != wanted:
            raise Refused("dataset", f"{where}: {marker} data trains with stage: {wanted} (the config has {stage})")
    for column, why in REFUSED_COLUMNS.items():
        if column in columns:
            raise Refused("dataset", f"{where}: {why}: column '{columns[column]}' ({column})")
    for attr in ("subset", "folder", "script_url", "cloud_file_name"):
        if attr in entry:
            raise Refused("dataset", f"{where}: dataset_info '{attr}' is not supported")
    if entry.get("split", "train") != "train":
        raise Refused("dataset", f"{where}: dataset_info split '{entry['split']}' is not supported (train only)")
    if "hf_hub_url" in entry:
        source = entry["hf_hub_url"]
    elif "file_name" in entry:
        if options.data_uri:
            source = options.data_uri.rstrip("/") + "/" + entry["file_name"]
        else:
            source = os.path.abspath(os.path.join(files_dir, entry["file_name"]))
    else:
        raise Refused(
            "dataset", f"{where}: needs file_name or hf_hub_url (ms_hub_url and om_hub_url are not supported)"
        )
    fmt = entry.get("formatting", "alpaca")
    out: dict[str, Any] = {"source": source, "format": fmt}
    # LLaMA-Factory reads the columns an entry maps, and its defaults only when it maps none (system,
    # tools and history never): the job gets that mapping written out and reads nothing else.
    mapped = {_camel(c): columns[c] for c in COLUMNS if c in columns}
    if not columns and fmt == "alpaca":
        mapped = {"prompt": "instruction", "query": "input", "response": "output"}
    if fmt != "alpaca" and "messages" not in mapped:
        mapped["messages"] = "conversations"  # LLaMA-Factory's default for every formatting
    out["columns"] = mapped
    tags = {_camel(t): entry["tags"][t] for t in TAGS if t in (entry.get("tags") or {})}
    if tags:
        out["tags"] = tags
    out["onlyMappedColumns"] = True
    limits = [n for n in (max_samples, entry.get("num_samples")) if n is not None]
    if limits:
        out["maxSamples"] = min(limits)
        if entry.get("num_samples") is not None:
            draft.comments[f"spec.datasets.{index}.maxSamples"] = (
                "num_samples: LLaMA-Factory draws that many rows at random (repeating rows when it is larger); "
                "kubetune takes the first ones"
            )
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _output_uri(config: dict[str, Any], options: Options) -> str:
    if options.output_uri:
        return options.output_uri
    output_dir = str(config.get("output_dir") or "")
    if output_dir.startswith("s3://") or os.path.isabs(output_dir):
        return output_dir
    raise Refused(
        "output_dir",
        f"'{output_dir}' is a path relative to where llamafactory-cli ran; pass --output-uri s3://bucket/prefix/ "
        "(or an absolute path on a mounted volume)",
    )


def _job_name(config: dict[str, Any], path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:63].strip("-")
    return name or "imported"


def _header(path: str, draft: Draft) -> str:
    lines = [f"# Imported from {os.path.basename(path)} by `kubetune import llamafactory`."]
    lines.append('# Fields marked "LLaMA-Factory\'s default" were not in the config: they keep its behaviour.')
    if draft.unmapped:
        lines.append("# No equivalent in kubetune, not carried over:")
        lines += [f"#   {name}: {why}" for name, why in draft.unmapped.items()]
    if "resources" not in draft.spec or not draft.spec["resources"]:
        lines.append("# spec.resources: one node with one GPU unless you pass --nodes and --gpus-per-node.")
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    text: str = yaml.safe_dump(value, width=1 << 20, allow_unicode=True, default_flow_style=True)
    return text.removesuffix("\n...\n").strip()


def _emit(node: Any, comments: dict[str, str], path: str = "", indent: int = 0) -> str:
    pad = "  " * indent
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        comment = f"  # {comments[here]}" if here in comments else ""
        lead = f"{pad}{key}:" if isinstance(node, dict) else f"{pad}-"
        if isinstance(value, dict) and value:
            if isinstance(node, dict):
                out.append(f"{lead}{comment}\n" + _emit(value, comments, here, indent + 1))
            else:  # a mapping in a list: its first key on the dash's line
                body = _emit(value, comments, here, indent + 1)
                out.append(f"{pad}- " + body[len(pad) + 2 :])
        elif isinstance(value, list) and value and not all(isinstance(v, (str, int, float, bool)) for v in value):
            out.append(f"{lead}{comment}\n" + _emit(value, comments, here, indent + 1))
        else:
            out.append(f"{lead} {_scalar(value)}{comment}\n")
    return "".join(out)
