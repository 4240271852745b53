"""Find the base model (hub id, s3:// prefix or a path), then load tokenizer and model for the method.

Every source resolves to a local directory first: the streaming merge reads the base safetensors
shard by shard, and every rank then loads from the same node-local files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.locations import local_path, location_kind
from kubetune.trainer.failures import ExitCode, TrainerError

if TYPE_CHECKING:
    from kubetune.trainer.config import RunConfig

log = logging.getLogger("kubetune.trainer")

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_DONE_MARKER = ".kubetune-complete"


def fetch_model(cfg: RunConfig) -> Path:
    """A local directory holding the base model. Call on one process per node first (it downloads)."""
    source = cfg.spec.model.source
    kind = location_kind(source)
    if kind == "s3":
        return _fetch_s3(source, cfg)
    if kind == "path":
        path = local_path(source)
        if not (path / "config.json").is_file():
            raise TrainerError(
                ExitCode.MODEL,
                f"no model at {source} (config.json not found)",
                "check spec.model.source and that the volume holding it is mounted",
            )
        return path
    return _fetch_hub(source, cfg.spec.model.revision)


def _fetch_s3(uri: str, cfg: RunConfig) -> Path:
    """Download once per node into the cache; a marker file makes a half-finished download invisible."""
    from kubetune.storage import download_dir, list_files

    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    dest = cfg.cache_dir / "models" / key
    if (dest / _DONE_MARKER).exists():
        log.info("base model %s already in the node cache %s", uri, dest)
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # a copy without the marker is an interrupted one
    if not list_files(uri, cfg.storage):
        raise TrainerError(ExitCode.MODEL, f"no model files under {uri}", "check spec.model.source")
    # Per process: two "nodes" of a local run share one cache, and must not write into each other's copy.
    partial = dest.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    download_dir(uri, str(partial), cfg.storage)
    if not (partial / "config.json").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise TrainerError(
            ExitCode.MODEL, f"{uri} holds no config.json", "point spec.model.source at a save_pretrained directory"
        )
    (partial / _DONE_MARKER).write_text(uri + "\n")
    try:
        partial.rename(dest)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def _fetch_hub(repo_id: str, revision: str | None) -> Path:
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
            "check spec.model.source, or set HF_TOKEN for a gated/private model",
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
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    # training.seed promises the initialisation too: the LoRA weights (and any newly initialised
    # head) are drawn here, before the Trainer seeds for shuffling and dropout.
    set_seed(cfg.spec.training.seed)
    method = cfg.method
    dtype = torch_dtype(cfg.precision)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.spec.model.trust_remote_code}
    if method == "full":
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
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise TrainerError(
            ExitCode.MODEL,
            f"cannot load the model from {cfg.spec.model.source} ({exc})",
            "check that it is a causal LM saved with save_pretrained (safetensors), and "
            "spec.model.trustRemoteCode for custom architectures",
        ) from None
    if method == "full":
        return model
    return _wrap_lora(model, cfg)


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
