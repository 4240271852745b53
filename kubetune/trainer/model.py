"""Find the base model (hub id, s3:// prefix or a path), then load tokenizer and model for the method.

Every source resolves to a local directory first: the streaming merge reads the base safetensors
shard by shard, and every rank then loads from the same node-local files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.locations import local_path, location_kind
from kubetune.trainer.failures import ExitCode, TrainerError

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import KernelsSpec
    from kubetune.trainer.config import RunConfig

log = logging.getLogger("kubetune.trainer")

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_DONE_MARKER = ".kubetune-complete"


def fetch_model(cfg: RunConfig) -> Path:
    """A local directory holding the base model. Call on one process per node first (it downloads)."""
    return _fetch(cfg.spec.model.source, cfg.spec.model.revision, "spec.model.source", cfg)


def fetch_reference(cfg: RunConfig) -> Path | None:
    """A local directory holding spec.model.reference (None when the base is its own reference)."""
    source = cfg.spec.model.reference
    return None if source is None else _fetch(source, None, "spec.model.reference", cfg)


def _fetch(source: str, revision: str | None, field: str, cfg: RunConfig) -> Path:
    kind = location_kind(source)
    if kind == "s3":
        return _fetch_s3(source, cfg, field)
    if kind == "path":
        path = local_path(source)
        if not (path / "config.json").is_file():
            raise TrainerError(
                ExitCode.MODEL,
                f"no model at {source} (config.json not found)",
                f"check {field} and that the volume holding it is mounted",
            )
        return path
    return _fetch_hub(source, revision, field)


def _fetch_s3(uri: str, cfg: RunConfig, field: str) -> Path:
    """Download once per node into the cache; a marker file makes a half-finished download invisible."""
    from kubetune.storage import download_dir, list_files

    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    dest = cfg.cache_dir / "models" / key
    if (dest / _DONE_MARKER).exists():
        log.info("model %s already in the node cache %s", uri, dest)
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # a copy without the marker is an interrupted one
    if not list_files(uri, cfg.storage):
        raise TrainerError(ExitCode.MODEL, f"no model files under {uri}", f"check {field}")
    # Per process: two "nodes" of a local run share one cache, and must not write into each other's copy.
    partial = dest.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    download_dir(uri, str(partial), cfg.storage)
    if not (partial / "config.json").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise TrainerError(
            ExitCode.MODEL, f"{uri} holds no config.json", f"point {field} at a save_pretrained directory"
        )
    (partial / _DONE_MARKER).write_text(uri + "\n")
    try:
        partial.rename(dest)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def _fetch_hub(repo_id: str, revision: str | None, field: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    try:
        # HF_HOME decides the cache (the renderer points it at the node-local cache volume).
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=offline,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja", "*.tiktoken"],
            )
        )
    except RepositoryNotFoundError:
        raise TrainerError(
            ExitCode.MODEL,
            f"model {repo_id} not found on the hub",
            f"check {field}, or set HF_TOKEN for a gated/private model",
        ) from None
    except LocalEntryNotFoundError:
        raise TrainerError(
            ExitCode.MODEL,
            f"model {repo_id} is not in the local cache and the hub is unreachable or offline",
            "pre-fill the cache, use an s3:// or path source, or allow hub access",
        ) from None
    except HfHubHTTPError as exc:
        raise TrainerError(ExitCode.MODEL, f"hub download of {repo_id} failed ({exc})", "retry later") from None


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, _DTYPES[precision])


def load_tokenizer(model_dir: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding is masked everywhere, so reusing eos as pad does not teach the model anything.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: Path, cfg: RunConfig) -> Any:
    """The trainable model: full weights, or the base wrapped in a (Q)LoRA adapter."""
    from transformers import set_seed

    # training.seed promises the initialisation too: the LoRA weights (and any newly initialised
    # head) are drawn here, before the Trainer seeds for shuffling and dropout.
    set_seed(cfg.spec.training.seed)
    model = _from_pretrained(model_dir, cfg, cfg.spec.model.source, trains=True)
    if cfg.method == "full":
        return model
    return _wrap_lora(model, cfg)


def load_reference(model_dir: Path, cfg: RunConfig, policy: Any) -> Any:
    """spec.model.reference, frozen: loaded as the base is (quantized for qlora), in the compute dtype."""
    reference = _from_pretrained(model_dir, cfg, str(cfg.spec.model.reference), trains=False)
    ours, theirs = policy.get_input_embeddings().num_embeddings, reference.get_input_embeddings().num_embeddings
    if ours != theirs:
        raise TrainerError(
            ExitCode.CONFIG,
            f"spec.model.reference has {theirs} token embeddings, the base {ours}: the reference must score the "
            "same token ids",
            "use a reference of the same model family and tokenizer (for example the SFT job's model/)",
        )
    reference.requires_grad_(False)
    return reference.eval()


def _from_pretrained(model_dir: Path, cfg: RunConfig, source: str, *, trains: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    method = cfg.method
    dtype = torch_dtype(cfg.precision)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.spec.model.trust_remote_code}
    if method == "full" and trains:
        # Full training keeps fp32 master weights; mixed precision runs through autocast.
        kwargs["dtype"] = torch.float32
    else:
        kwargs["dtype"] = dtype
    if method == "qlora":
        q = cfg.spec.method.quantization_or_default()
        if q.bits == 4:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q.quant_type,
                bnb_4bit_use_double_quant=q.double_quant,
                bnb_4bit_compute_dtype=dtype,
            )
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        # Quantized weights cannot move after loading: put each rank's copy on its own device now.
        kwargs["device_map"] = {"": cfg.dist.local_rank} if cfg.device == "cuda" else {"": "cpu"}
    kernels = resolve_kernels(cfg.spec.training.kernels, cfg.device, model_type(model_dir))
    kwargs["attn_implementation"] = kernels.attention
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainerError(
            ExitCode.MODEL,
            f"cannot load the model from {source} ({exc})",
            "check that it is a causal LM saved with save_pretrained (safetensors), and "
            "spec.model.trustRemoteCode for custom architectures",
        ) from None
    if kernels.liger:
        apply_liger(model)
    log.info("kernels: attention %s, liger %s", kernels.attention, "on" if kernels.liger else "off")
    return model


@dataclass(frozen=True)
class Kernels:
    attention: str  # transformers' attn_implementation
    liger: bool


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def liger_families() -> frozenset[str]:
    """The model types liger-kernel patches; empty when it is not installed."""
    if not _installed("liger_kernel"):
        return frozenset()
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def model_type(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    return str(config.get("model_type", ""))


def resolve_kernels(spec: KernelsSpec, device: str, family: str) -> Kernels:
    """What spec.training.kernels means on this machine for this model family.

    `auto` picks the fastest kernel that can run here; a kernel asked for by name that cannot run
    fails with the field named, never falling back silently."""
    from kubetune.api.v1alpha1 import Attention, Liger

    gpu = device == "cuda"
    attention = Attention(spec.attention).value
    if attention == "auto":
        attention = "flash_attention_2" if gpu and _installed("flash_attn") else "sdpa"
    elif attention == "flash_attention_2":
        missing = "flash-attn is not installed" if not _installed("flash_attn") else None if gpu else "there is no GPU"
        if missing:
            raise TrainerError(
                ExitCode.CONFIG,
                f"spec.training.kernels.attention: flash_attention_2 cannot run here ({missing})",
                "use attention: auto or sdpa, or a GPU image with flash-attn installed",
            )
    liger = Liger(spec.liger).value
    families = liger_families()
    if liger == "on":
        missing = (
            "liger-kernel is not installed"
            if not families
            else "there is no GPU"
            if not gpu
            else f"liger-kernel does not support the model family {family!r}"
            if family not in families
            else None
        )
        if missing:
            raise TrainerError(
                ExitCode.CONFIG,
                f"spec.training.kernels.liger: on cannot run here ({missing})",
                "use liger: auto or off",
            )
    return Kernels(attention=attention, liger=liger == "on" or (liger == "auto" and gpu and family in families))


def apply_liger(model: Any) -> None:
    """Swap in Liger's fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) in place,
    as the HF Trainer's use_liger_kernel does."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)


def lora_config(cfg: RunConfig) -> Any:
    from peft import LoraConfig

    spec = cfg.spec.method.lora_or_default()
    targets: str | list[str] = "all-linear" if spec.target_modules == ["all"] else list(spec.target_modules)
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,  # peft's all-linear leaves the output head out
        use_dora=spec.use_dora,
        use_rslora=spec.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _wrap_lora(model: Any, cfg: RunConfig) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc = cfg.spec.training.gradient_checkpointing
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif gc:
        # Checkpointed activations of a frozen embedding carry no grad; LoRA needs them to.
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(cfg))
