"""Export on rank 0: merge the adapter into the base weights, finish the model directory, check it.

The merge streams: the output shards are planned from the base's safetensors headers (a merge
changes no shape or dtype) with huggingface_hub's planner, then each tensor is read from the base
(its file mapped only while it is read), gets its LoRA delta (B @ A * scaling, in fp32, cast back to
the base dtype) and is written straight to its place in the output file. Peak memory is about one
tensor plus the adapter, not the model or a shard (bench/bench_merge.py measures it). Adapters
that need the module itself to merge (DoRA, embedding LoRA, modules_to_save, per-module rank
patterns) go through peft's merge_and_unload on an unquantized reload instead.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.trainer.failures import ExitCode, TrainerError

if TYPE_CHECKING:
    from huggingface_hub import StateDictSplit

log = logging.getLogger("kubetune.trainer")

_LORA_KEY_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
_ADAPTER_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Probe:
    """One training conversation and the token ids training used for it."""

    messages: list[dict[str, Any]]
    input_ids: list[int]


# --------------------------------------------------------------------------------------------
# Reading safetensors
# --------------------------------------------------------------------------------------------

# safetensors dtype name -> (torch dtype name, bytes per element)
_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_BY_TORCH = {torch_name: st for st, (torch_name, _) in _DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's place in a safetensors file, known from the header alone."""

    name: str
    dtype: str  # safetensors name (F32, BF16, ...)
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype][1]


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a save_pretrained directory, in index order."""
    from huggingface_hub import constants

    index = model_dir / constants.SAFETENSORS_INDEX_FILE
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / constants.SAFETENSORS_SINGLE_FILE
    if single.exists():
        return [single]
    raise TrainerError(
        ExitCode.EXPORT,
        f"no safetensors weights in {model_dir}",
        "the base model must be saved as safetensors (save_pretrained(..., safe_serialization=True))",
    )


def tensor_infos(model_dir: Path) -> list[TensorInfo]:
    """Every tensor of a model directory, from the headers (no weight is read)."""
    from safetensors import safe_open

    infos = []
    for path in weight_files(model_dir):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
                piece = fh.get_slice(name)
                infos.append(TensorInfo(name, piece.get_dtype(), tuple(piece.get_shape()), path))
    return infos


def read_tensor(info: TensorInfo) -> Any:
    """One tensor, without keeping its file mapped.

    safe_open maps the whole file and every page a read touches stays in the process's RSS until the
    map is closed, so a handle kept across a shard grows the process by the shard's size. Opened per
    tensor (one header parse), the map and its pages go with the tensor."""
    from safetensors import safe_open

    with safe_open(str(info.file), framework="pt") as fh:
        return fh.get_tensor(info.name)


def iter_tensors(model_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) pairs, one tensor in memory at a time."""
    for info in tensor_infos(model_dir):
        yield info.name, read_tensor(info)


def model_size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in weight_files(model_dir))


# --------------------------------------------------------------------------------------------
# LoRA deltas
# --------------------------------------------------------------------------------------------


def streamable(adapter_dir: Path) -> bool:
    """Whether every adapter weight is a plain linear LoRA pair we can merge without the module."""
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora") or config.get("modules_to_save") or config.get("fan_in_fan_out"):
        return False
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        return False
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as fh:
        return all(k.endswith(_LORA_KEY_SUFFIXES) for k in fh.keys())  # noqa: SIM118


def lora_pairs(adapter_dir: Path) -> tuple[dict[str, tuple[Any, Any]], float]:
    """{base weight name: (A, B)} and the scaling alpha/r (alpha/sqrt(r) for rsLoRA)."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, tuple[Any, Any]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(_ADAPTER_PREFIX)
        pairs[module + ".weight"] = (a, tensors[key.replace(".lora_A.", ".lora_B.")])
    return pairs, scaling


# --------------------------------------------------------------------------------------------
# Streaming sharded writing
# --------------------------------------------------------------------------------------------


def plan_shards(infos: list[TensorInfo], shard_bytes: int) -> StateDictSplit:
    """save_pretrained's shard names, grouping and index metadata, planned from the headers alone."""
    from huggingface_hub import constants, split_state_dict_into_shards_factory

    return split_state_dict_into_shards_factory(
        {info.name: info for info in infos},
        get_storage_size=lambda info: info.nbytes,
        filename_pattern=constants.SAFETENSORS_WEIGHTS_FILE_PATTERN,
        max_shard_size=shard_bytes,
    )


def write_safetensors(path: Path, infos: list[TensorInfo], produce: Callable[[TensorInfo], Any]) -> None:
    """Write a safetensors file whose header is known up front, producing one tensor at a time.

    Merging changes no shape or dtype, so the header comes from the plan and each tensor is written
    (and freed) as soon as it is produced; save_file would need the whole shard in memory first."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for info in infos:
        header[info.name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for info in infos:
            tensor = produce(info)
            dtype = _BY_TORCH.get(str(tensor.dtype).removeprefix("torch."))
            if tuple(tensor.shape) != info.shape or dtype != info.dtype:
                raise TrainerError(
                    ExitCode.EXPORT,
                    f"tensor {info.name} changed shape or dtype while exporting",
                    "report a bug: the export plan and the weights disagree",
                )
            fh.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
            del tensor  # freed (and its file unmapped) before the next one is produced, not after


def write_sharded(
    out_dir: Path, infos: list[TensorInfo], shard_bytes: int, produce: Callable[[TensorInfo], Any]
) -> list[str]:
    """save_pretrained's layout (model.safetensors, or model-0000i-of-0000n + index), streamed."""
    from huggingface_hub import constants

    out_dir.mkdir(parents=True, exist_ok=True)
    split = plan_shards(infos, shard_bytes)
    by_name = {info.name: info for info in infos}
    for filename, names in split.filename_to_tensors.items():
        write_safetensors(out_dir / filename, [by_name[n] for n in names], produce)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out_dir / constants.SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return list(split.filename_to_tensors)


def stream_merge(base_dir: Path, adapter_dir: Path, out_dir: Path, shard_bytes: int) -> list[str]:
    """Base weights + LoRA deltas -> sharded safetensors in the base dtype. Returns shard names."""
    import torch

    pairs, scaling = lora_pairs(adapter_dir)
    infos = tensor_infos(base_dir)
    missing = sorted(set(pairs) - {i.name for i in infos})
    if missing:
        raise TrainerError(
            ExitCode.EXPORT,
            f"adapter weights for {missing[:3]} have no matching base weight",
            "the adapter was trained on a different base model",
        )

    def merged(info: TensorInfo) -> Any:
        tensor = read_tensor(info)
        pair = pairs.get(info.name)
        if pair is None:
            return tensor
        a, b = pair
        # In place on the one fp32 temporary: peak memory is that tensor and its cast back.
        result = b.to(torch.float32) @ a.to(torch.float32)
        return result.mul_(scaling).add_(tensor).to(tensor.dtype)

    return write_sharded(out_dir, infos, shard_bytes, merged)


def peft_merge(base_dir: Path, adapter_dir: Path, out_dir: Path, shard_bytes: int, trust: bool) -> None:
    """Merge through peft on an unquantized base in its own dtype (DoRA and other module-level cases)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto", trust_remote_code=trust)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    # Bytes, not the spec's text: transformers parses no binary units (GiB) and no "B".
    merged.save_pretrained(str(out_dir), max_shard_size=shard_bytes)


def resave_weights(src_dir: Path, out_dir: Path, shard_bytes: int, dtype: Any) -> list[str]:
    """Full fine-tuning: re-shard the trained weights, floating ones cast to the base model's dtype."""
    target = _BY_TORCH[str(dtype).removeprefix("torch.")]
    infos = [
        TensorInfo(i.name, target if _is_float(i.dtype) else i.dtype, i.shape, i.file) for i in tensor_infos(src_dir)
    ]

    def cast(info: TensorInfo) -> Any:
        tensor = read_tensor(info)
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return write_sharded(out_dir, infos, shard_bytes, cast)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))


def base_dtype(base_dir: Path) -> Any:
    import torch

    config = json.loads((base_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, str(name).removeprefix("torch."), torch.float32)


# --------------------------------------------------------------------------------------------
# The rest of a servable directory
# --------------------------------------------------------------------------------------------


def stabilize_adapter_config(adapter_dir: Path) -> None:
    """Sort list-valued `target_modules`: peft writes them from a set, in hash order, so an identical
    adapter would otherwise get a different adapter_config.json (and sha256) on every run."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_generation_config(base_dir: Path, out_dir: Path, tokenizer: Any, stop_ids: list[int]) -> list[int]:
    """generation_config.json whose eos covers the template's end-of-turn token (else vLLM never stops)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(base_dir))
    except OSError:
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(base_dir)))
    eos = gen.eos_token_id
    ids: list[int] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    for token_id in [*stop_ids, tokenizer.eos_token_id]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(str(out_dir))
    return ids


def finish_model_dir(base_dir: Path, out_dir: Path, tokenizer: Any, stop_ids: list[int], trust: bool) -> None:
    """config, tokenizer (with the training chat template), generation config, remote code files."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust)
    config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_generation_config(base_dir, out_dir, tokenizer, stop_ids)
    if trust:
        for code in base_dir.glob("*.py"):
            shutil.copy2(code, out_dir / code.name)


# --------------------------------------------------------------------------------------------
# Checking the export before anyone downloads it
# --------------------------------------------------------------------------------------------


def check_template(tokenizer: Any, probe: Probe) -> None:
    rendered = list(tokenizer.apply_chat_template(probe.messages, tokenize=True, return_dict=False))
    if rendered == probe.input_ids:
        return
    at = next(
        (i for i, (x, y) in enumerate(zip(rendered, probe.input_ids, strict=False)) if x != y),
        min(len(rendered), len(probe.input_ids)),
    )
    got = tokenizer.decode(rendered[at : at + 8])
    want = tokenizer.decode(probe.input_ids[at : at + 8])
    raise TrainerError(
        ExitCode.EXPORT,
        f"the exported tokenizer's chat template renders a training conversation differently from "
        f"training (first difference at token {at}: exported {got!r}, training {want!r})",
        "set spec.template to the template the data was trained with, or fix the model's chat_template",
    )


def load_exported(model_dir: Path, base_dir: Path | None, trust: bool) -> tuple[Any, Any]:
    """Reload the export the way a consumer would: a model directory, or base + adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust)
    if base_dir is None:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=trust), tokenizer
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), trust_remote_code=trust)
    return PeftModel.from_pretrained(base, str(model_dir)), tokenizer


def verify_export(model_dir: Path, probe: Probe, *, base_dir: Path | None = None, trust: bool = False) -> str:
    """Template check, then a few greedy tokens. Returns the generated text (for the log)."""
    import torch

    model, tokenizer = load_exported(model_dir, base_dir, trust)
    check_template(tokenizer, probe)
    prompt = [m for m in probe.messages if m.get("role") != "assistant"][:2] or probe.messages[:1]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        logits = model(input_ids=out).logits
    if not torch.isfinite(logits).all():
        raise TrainerError(
            ExitCode.EXPORT,
            f"the exported model in {model_dir} produces non-finite logits",
            "the merge or training diverged; lower the learning rate and retrain",
        )
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :]))
