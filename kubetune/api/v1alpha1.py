"""The FineTuneJob schema, `kubetune.io/v1alpha1`.

This module is the single source of truth for the contract: the CRD in `crds/` is generated from
these models (`kubetune crd > crds/finetunejob.yaml`), `kubetune validate` checks files against
them, the renderer reads them, and the trainer reads the same resolved object from its ConfigMap.

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
Every field carries a description so that `kubectl explain finetunejob.spec...` is useful.

Longer than our ~600-line guide on purpose: the whole wire schema in one file, read top to bottom
like Kubeflow's `trainjob_types.go`; the rules it shares with other code live beside it
(`envvars.py`, `validation.py`).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetune.api.envvars import (
    ENV_NAME_MAX,
    ENV_NAME_PATTERN,
    credential_cel,
    env_name_cel,
    env_name_problem,
    looks_like_credential,
)
from kubetune.api.locations import OUTPUT_PATTERN, SOURCE_PATTERN, location_kind

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

# Marks a field whose content is a free-form Kubernetes object (affinity, tolerations) in the CRD.
PRESERVE_UNKNOWN: dict[str, JsonValue] = {"x-kubernetes-preserve-unknown-fields": True}

# Each string rule once: pydantic checks it (Field(pattern=...)), the CRD carries it as `pattern`,
# and PATTERN_MEANINGS gives `kubetune validate` the words for a mismatch.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENDPOINT_PATTERN = r"^https?://[^/\s]+"
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"
PATTERN_MEANINGS = {
    QUANTITY_PATTERN: "is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)",
    DNS_LABEL_PATTERN: "is not a valid name: lowercase letters, digits and '-', starting and ending with a "
    "letter or digit",
    DNS_SUBDOMAIN_PATTERN: "is not a valid Secret name (lowercase letters, digits, '-' and '.')",
    LABEL_VALUE_PATTERN: "is not a valid label value (letters, digits, '-', '_', '.', at most 63)",
    ENDPOINT_PATTERN: "is not an http(s):// endpoint URL",
    SIZE_PATTERN: "is not a size such as 5GB or 500MB",
    ENV_NAME_PATTERN: "is not a valid environment variable name (letters, digits, '_', '-', '.'; no '=')",
}
# Upper bounds the API server would enforce on its int64 fields, tighter where the trainer needs it:
# step counts are int32 in transformers/torch, a seed must fit numpy's 32 bits.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1
MAX_EPOCHS = 10_000
# The API server's limit on metadata.annotations, keys and values together (TotalAnnotationSizeLimitB).
ANNOTATIONS_MAX_BYTES = 256 * 1024


def _pattern(regex: str) -> dict[str, Any]:
    return {"pattern": regex}


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL validation rules (rule, message) for fields that span several properties."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
        allow_inf_nan=False,  # JSON has no Infinity or NaN: the API server could not store them
    )


# --------------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------------


class DataFormat(str, Enum):
    auto = "auto"
    alpaca = "alpaca"
    sharegpt = "sharegpt"
    openai = "openai"


class DatasetSplit(str, Enum):
    train = "train"
    validation = "validation"


# Template names follow LLaMA-Factory's. `auto` means the tokenizer's own chat template.
# auto, then LLaMA-Factory 0.9.5's template names (kubetune.trainer.template_layouts renders them).
TemplateName = Literal[
    "auto",
    "default",
    "empty",
    "alpaca",
    "vicuna",
    "chatml",
    "qwen",
    "qwen2_vl",
    "qwen3",
    "qwen3_nothink",
    "qwen3_vl",
    "qwen3_vl_nothink",
    "qwen3_5",
    "qwen3_5_nothink",
    "yi",
    "llama2",
    "llama3",
    "llama4",
    "mistral",
    "mistral_small",
    "gemma",
    "gemma2",
    "gemma3",
    "glm4",
    "deepseek",
    "deepseek3",
    "deepseekr1",
    "phi",
    "phi4",
    "phi4_mini",
]
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)


class MethodType(str, Enum):
    lora = "lora"
    qlora = "qlora"
    full = "full"


class Precision(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Scheduler(str, Enum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"


class DeepSpeedStage(str, Enum):
    none = "none"
    zero2 = "zero2"
    zero3 = "zero3"


class Offload(str, Enum):
    none = "none"
    cpu = "cpu"


class ReportTo(str, Enum):
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"


class MixStrategy(str, Enum):
    concat = "concat"
    interleave = "interleave"


class InvalidRowPolicy(str, Enum):
    fail = "fail"
    skip = "skip"


class TrainOn(str, Enum):
    assistant = "assistant"
    all = "all"
    last_turn = "lastTurn"


class Stage(str, Enum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"
    pt = "pt"


class PreferenceLoss(str, Enum):
    """TRL 1.16 DPOConfig.loss_type names (LLaMA-Factory's pref_loss shares sigmoid, hinge and ipo), plus
    LLaMA-Factory 0.9.5's two reference-free losses, orpo and simpo, computed as LLaMA-Factory computes them
    (kubetune.trainer.stages.reference_free)."""

    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    robust = "robust"
    bco_pair = "bco_pair"
    sppo_hard = "sppo_hard"
    nca_pair = "nca_pair"
    apo_zero = "apo_zero"
    apo_down = "apo_down"
    orpo = "orpo"
    simpo = "simpo"


REFERENCE_FREE_LOSSES = (PreferenceLoss.orpo.value, PreferenceLoss.simpo.value)


class NcclDebug(str, Enum):
    off = "OFF"
    version = "VERSION"
    warn = "WARN"
    info = "INFO"
    trace = "TRACE"


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------


def check_storage_uri(value: str, *, what: str, allow_hub: bool) -> str:
    """Accept s3://bucket/key, file:///path, /abs/path, ./rel/path and (if allowed) hub ids."""
    location_kind(value, allow_hub=allow_hub, what=what)
    return value.strip()


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


class ModelSpec(_Model):
    """The base model to fine-tune."""

    source: str = Field(
        description="Where the base model comes from: a Hugging Face hub id (Qwen/Qwen2.5-7B-Instruct), "
        "an s3://bucket/prefix/ holding a saved model, or a local/PVC path (/models/x or file:///models/x).",
        min_length=1,
        json_schema_extra=_pattern(SOURCE_PATTERN),
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit). Only for hub ids.")
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run. Off unless you trust the source.",
    )
    reference: str | None = Field(
        default=None,
        description="stages dpo and kto: the reference model, a source like `source` (hub id at its default "
        "revision, s3:// prefix or path) with the same vocabulary. Default: the base itself (with LoRA/QLoRA "
        "the adapter-disabled base, no second copy; with full training a frozen copy of the starting weights).",
        min_length=1,
        json_schema_extra=_pattern(SOURCE_PATTERN),
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return check_storage_uri(v, what="model source", allow_hub=True)

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        return None if v is None else check_storage_uri(v, what="reference model", allow_hub=True)


class ColumnMapping(_Model):
    """LLaMA-Factory `dataset_info.json` `columns`: which keys of a row hold what."""

    prompt: str | None = Field(default=None, description="alpaca: the instruction column (default instruction).")
    query: str | None = Field(default=None, description="alpaca: the input column (default input).")
    response: str | None = Field(default=None, description="alpaca: the output column (default output).")
    history: str | None = Field(
        default=None, description="alpaca: a list of [prompt, response] pairs before this turn (default history)."
    )
    messages: str | None = Field(
        default=None,
        description="sharegpt/openai: the list of turns (default conversations for sharegpt, messages for openai).",
    )
    system: str | None = Field(default=None, description="The system prompt column (default system).")
    tools: str | None = Field(default=None, description="The tool descriptions column (default tools).")
    chosen: str | None = Field(
        default=None, description="stage dpo: the preferred answer (default chosen; LLaMA-Factory ranking: true)."
    )
    rejected: str | None = Field(default=None, description="stage dpo: the dispreferred answer (default rejected).")
    kto_tag: str | None = Field(
        default=None,
        description="stage kto: the true/false column marking each answer desirable or not (default kto_tag, "
        "else a boolean label column; LLaMA-Factory columns.kto_tag).",
    )


class TagMapping(_Model):
    """LLaMA-Factory `dataset_info.json` `tags` for sharegpt-style turns."""

    role_tag: str | None = Field(default=None, description="Key of a turn's role (default from).")
    content_tag: str | None = Field(default=None, description="Key of a turn's text (default value).")
    user_tag: str | None = Field(default=None, description="Role value of a user turn (default human).")
    assistant_tag: str | None = Field(default=None, description="Role value of an assistant turn (default gpt).")
    observation_tag: str | None = Field(
        default=None, description="Role value of a tool result turn (default observation)."
    )
    function_tag: str | None = Field(
        default=None, description="Role value of a tool call turn (default function_call)."
    )
    system_tag: str | None = Field(default=None, description="Role value of a system turn (default system).")


class DatasetSpec(_Model):
    """One dataset of the mix."""

    source: str = Field(
        description="A file or prefix: s3://bucket/data.jsonl, s3://bucket/prefix/ (every data file under it, "
        "in name order), a local path or file:// URI, or a hub dataset id where a hub is reachable. "
        "Files may be .json (array), .jsonl, .parquet, .csv, or .txt (one document per line, for stage pt).",
        min_length=1,
        json_schema_extra=_pattern(SOURCE_PATTERN),
    )
    format: DataFormat = Field(
        default=DataFormat.auto,
        description="Row layout: alpaca, sharegpt, openai (messages with role/content), or auto to detect it.",
    )
    columns: ColumnMapping | None = Field(
        default=None, description="LLaMA-Factory column mapping; unset keys take the format's defaults."
    )
    tags: TagMapping | None = Field(
        default=None, description="LLaMA-Factory sharegpt tag mapping; unset keys take the defaults."
    )
    only_mapped_columns: bool = Field(
        default=False,
        description="Read the optional columns (query, history, system, tools) only when `columns` names them, "
        "as LLaMA-Factory does: an unmapped system or tools column is ignored (`kubetune import llamafactory` "
        "sets this). Default: they are read under their default names.",
    )
    split: DatasetSplit = Field(
        default=DatasetSplit.train,
        description="train, or validation to use this dataset only for evaluation.",
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Use at most this many rows of this dataset (the first ones)."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return check_storage_uri(v, what="dataset source", allow_hub=True)


class DataOptions(_Model):
    """How datasets are mixed, checked and masked."""

    mix: MixStrategy = Field(
        default=MixStrategy.concat, description="concat the datasets in order, or interleave them row by row."
    )
    validation_split: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Fraction of training rows held out for evaluation (0 = none, unless a dataset has "
        "split: validation).",
    )
    invalid_rows: InvalidRowPolicy = Field(
        default=InvalidRowPolicy.fail,
        description="fail: stop before training if any row is invalid, naming file, row and reason. "
        "skip: leave invalid rows out and list them in the data report.",
    )
    train_on: TrainOn = Field(
        default=TrainOn.assistant,
        description="Which tokens carry loss: every assistant turn (assistant), every token (all), "
        "or only the last assistant turn (lastTurn).",
    )
    preprocessing_workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Processes that tokenize the data (in the job and in `kubetune data check`). Default: one "
        "per 4000 conversations, at most 8 and the CPU count.",
    )
    max_row_characters: int | None = Field(
        default=None,
        ge=1,
        description="A row whose turns and tools hold more characters is an invalid row, refused before "
        "tokenizing (which takes memory in proportion to the row). Default: 64 per token of training.cutoffLen, "
        "at least 262144.",
    )


class LoraSpec(_Model):
    """LoRA adapter settings (also used by qlora)."""

    rank: int = Field(default=16, gt=0, le=1024, description="LoRA rank r.")
    alpha: int = Field(
        default=32, gt=0, le=INT32_MAX, description="LoRA alpha (scaling = alpha / rank, or alpha / sqrt(rank))."
    )
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all"],
        min_length=1,
        description="Module names to adapt; [all] means every linear layer except the output head.",
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised LoRA: scale by alpha / sqrt(rank).")


class QuantizationSpec(_Model):
    """bitsandbytes quantization of the frozen base model (qlora only)."""

    bits: Literal[4, 8] = Field(default=4, description="4 (nf4/fp4) or 8 (LLM.int8) bit base weights.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants too.")


class MethodSpec(_Model):
    """Which weights train."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.quantization) || (has(self.type) && self.type == 'qlora')",
                "quantization applies only to type: qlora",
            ),
            (
                "!has(self.lora) || !has(self.type) || self.type != 'full'",
                "lora settings do not apply to type: full",
            ),
        )
    )

    type: MethodType = Field(
        default=MethodType.lora,
        description="lora (adapter on a frozen base), qlora (adapter on a 4/8-bit base), or full (all weights).",
    )
    lora: LoraSpec | None = Field(default=None, description="Adapter settings for lora and qlora.")
    quantization: QuantizationSpec | None = Field(
        default=None, description="Base-model quantization for qlora (defaults to 4-bit nf4)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> MethodSpec:
        if self.type != MethodType.qlora.value and self.quantization is not None:
            raise ValueError(
                f"quantization applies only to type: qlora (type is {self.type}); "
                "set type: qlora or remove quantization"
            )
        if self.type == MethodType.full.value and self.lora is not None:
            raise ValueError("lora settings do not apply to type: full; remove lora or use type: lora")
        return self

    def lora_or_default(self) -> LoraSpec:
        return self.lora or LoraSpec()

    def quantization_or_default(self) -> QuantizationSpec:
        return self.quantization or QuantizationSpec()


class Attention(str, Enum):
    auto = "auto"
    sdpa = "sdpa"
    flash_attention_2 = "flash_attention_2"
    eager = "eager"


class Liger(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class KernelsSpec(_Model):
    """Attention and fused kernels. They change speed and memory, not what is learned (not part of the
    run identity: a run may resume with other kernels)."""

    attention: Attention = Field(
        default=Attention.auto,
        description="Attention implementation: auto (flash_attention_2 on a GPU where flash-attn is installed, "
        "else sdpa), sdpa, flash_attention_2 (fails when flash-attn is not installed or there is no GPU) or eager.",
    )
    liger: Liger = Field(
        default=Liger.auto,
        description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy): auto (on "
        "a GPU where liger-kernel is installed and supports the model family), on (fails otherwise) or off.",
    )


class DeepSpeedSpec(_Model):
    """DeepSpeed ZeRO, generated from stage and offload, or your own DeepSpeed JSON as `config`."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.config) || ((!has(self.stage) || self.stage == 'none')"
                " && (!has(self.offload) || self.offload == 'none'))",
                "set deepspeed.config or deepspeed.stage/offload, not both",
            )
        )
    )

    stage: DeepSpeedStage = Field(default=DeepSpeedStage.none, description="none, zero2 or zero3.")
    offload: Offload = Field(
        default=Offload.none, description="Offload optimizer state (zero2) and parameters (zero3) to cpu."
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="A DeepSpeed JSON config of your own, used as is instead of the generated one (an escape "
        'hatch: e.g. LLaMA-Factory\'s ds_z3_config.json). Values of "auto" are filled from this spec by '
        "the Hugging Face Trainer.",
        json_schema_extra=PRESERVE_UNKNOWN,
    )

    @model_validator(mode="after")
    def _one_source(self) -> DeepSpeedSpec:
        if self.config is not None and (self.stage != DeepSpeedStage.none.value or self.offload != Offload.none.value):
            raise ValueError("set deepspeed.config or deepspeed.stage/offload, not both")
        return self

    @property
    def zero_stage(self) -> int | None:
        """The ZeRO stage that runs (from the config when one is given), None without DeepSpeed."""
        if self.config is not None:
            zero = self.config.get("zero_optimization")
            stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
            return stage if isinstance(stage, int) else 0
        return {"zero2": 2, "zero3": 3}.get(str(self.stage))


class TrainingSpec(_Model):
    """The training loop."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.epochs) || !has(self.maxSteps)", "set epochs or maxSteps, not both"),
            (
                "!has(self.warmupSteps) || !has(self.warmupRatio)",
                "set warmupRatio or warmupSteps, not both",
            ),
        )
    )

    epochs: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EPOCHS,
        description="Passes over the training data (default 3 when maxSteps is unset).",
    )
    max_steps: int | None = Field(default=None, gt=0, le=INT32_MAX, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Scheduler = Field(default=Scheduler.cosine, description="Learning-rate schedule.")
    warmup_ratio: float | None = Field(
        default=None, ge=0, lt=1, description="Fraction of steps spent warming up (default 0.03)."
    )
    warmup_steps: int | None = Field(
        default=None, ge=0, le=INT32_MAX, description="Warm-up steps (instead of warmupRatio)."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    per_device_batch_size: int = Field(default=1, ge=1, le=1024, description="Sequences per process per step.")
    gradient_accumulation_steps: int = Field(default=8, ge=1, le=4096, description="Micro-steps per optimizer step.")
    cutoff_len: int = Field(default=2048, ge=16, le=1048576, description="Maximum tokens per example.")
    packing: bool = Field(
        default=False,
        description="Pack several examples into one sequence without cross-attention (position ids restart).",
    )
    precision: Precision = Field(default=Precision.bf16, description="bf16, fp16 or fp32 (fp32 on CPU).")
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for activation memory.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
    seed: int = Field(default=42, ge=0, le=SEED_MAX, description="Seed for initialisation, shuffling and dropout.")
    checkpoint_every_steps: int = Field(
        default=200, ge=1, le=INT32_MAX, description="Save a resumable checkpoint to the output URI every N steps."
    )
    keep_checkpoints: int = Field(default=2, ge=1, le=100, description="Complete checkpoints to keep.")
    eval_every_steps: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Evaluate every N steps (default: at each checkpoint)."
    )
    logging_steps: int = Field(default=10, ge=1, le=INT32_MAX, description="Report progress every N steps.")
    report_to: list[ReportTo] = Field(
        default_factory=list,
        description="Experiment trackers besides status.progress: tensorboard (event files uploaded to "
        "<output.uri>/tensorboard/), wandb, mlflow (configured by their WANDB_*/MLFLOW_* variables in spec.env).",
    )
    ddp_timeout_seconds: int = Field(
        default=30 * 60,
        ge=1,
        le=INT32_MAX,
        description="How long a collective in training may wait for the other ranks before the run restarts "
        "from its last checkpoint (a hung rank). Waits around downloads, uploads and export allow at least 4 h.",
    )
    dataloader_workers: int = Field(
        default=0, ge=0, le=256, description="Data loader worker processes per training process (0: load in it)."
    )
    kernels: KernelsSpec = Field(default_factory=KernelsSpec, description="Attention and fused kernels.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set epochs or maxSteps, not both")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("set warmupRatio or warmupSteps, not both")
        return self

    @property
    def resolved_epochs(self) -> float:
        return self.epochs if self.epochs is not None else 3.0


class PreferenceSpec(_Model):
    """Preference optimisation settings (stage dpo: TRL's DPOTrainer; stage kto: TRL's KTOTrainer).

    beta applies to both; loss, labelSmoothing and sftWeight to dpo; desirableWeight and
    undesirableWeight to kto (FineTuneJobSpec refuses a setting of the other stage)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.labelSmoothing) || self.labelSmoothing == 0.0 || (has(self.loss) && self.loss == 'robust')",
                "labelSmoothing applies only to loss: robust",
            ),
            (
                "!has(self.simpoGamma) || (has(self.loss) && self.loss == 'simpo')",
                "simpoGamma applies only to loss: simpo",
            ),
        )
    )

    loss: PreferenceLoss = Field(
        default=PreferenceLoss.sigmoid,
        description="TRL loss_type: sigmoid (DPO), hinge (SLiC), ipo, robust (rDPO, with labelSmoothing), bco_pair, "
        "sppo_hard, nca_pair, apo_zero or apo_down; or LLaMA-Factory's reference-free losses: orpo (odds-ratio "
        "preference plus an SFT loss on the chosen answer, beta weighting the odds-ratio term) or simpo (a margin "
        "on length-averaged log-probabilities, with simpoGamma). orpo and simpo build and run no reference model "
        "(no model.reference); LLaMA-Factory's defaults for them are pref_beta 0.1 and simpo_gamma 0.5.",
    )
    beta: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="How far the policy may move from the reference (TRL beta, LLaMA-Factory pref_beta); "
        "higher stays closer. For ipo it is the regularisation tau; for orpo the weight of the odds-ratio term; "
        "for simpo the reward scale (LLaMA-Factory's default 0.1 for both; the SimPO paper uses 2 to 10).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="loss robust: the assumed probability that a pair's preference is flipped (typically 0.1).",
    )
    sft_weight: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Weight of an added SFT loss on the chosen answers (LLaMA-Factory pref_ftx; TRL's sft loss "
        "beside the preference loss). 0 = none.",
    )
    simpo_gamma: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="loss simpo: the target reward margin between chosen and rejected (LLaMA-Factory simpo_gamma, "
        "default 0.5; the loss is -logsigmoid(beta x (avg logp chosen - avg logp rejected) - simpoGamma)).",
    )
    desirable_weight: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="stage kto: weight of the loss on desirable answers (TRL desirable_weight, LLaMA-Factory "
        "kto_chosen_weight). With fewer desirable than undesirable rows, TRL advises desirable x n_desirable "
        "over undesirable x n_undesirable between 1 and 4/3.",
    )
    undesirable_weight: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="stage kto: weight of the loss on undesirable answers (TRL undesirable_weight, LLaMA-Factory "
        "kto_rejected_weight).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceSpec:
        if self.label_smoothing and self.loss != PreferenceLoss.robust.value:
            raise ValueError(f"labelSmoothing applies only to loss: robust (loss is {self.loss})")
        if "simpo_gamma" in self.model_fields_set and self.loss != PreferenceLoss.simpo.value:
            raise ValueError(f"simpoGamma applies only to loss: simpo (loss is {self.loss})")
        return self


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate (empty = all)."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=-INT64_MAX, le=INT64_MAX, description="For NoExecute: how long to stay bound."
    )


def _check_quantity(v: str | None) -> str | None:
    if v is not None and not re.match(QUANTITY_PATTERN, v):
        raise ValueError(f"'{v}' {PATTERN_MEANINGS[QUANTITY_PATTERN]}")
    return v


class ResourcesSpec(_Model):
    """Where and on how much hardware the job runs."""

    nodes: int = Field(default=1, ge=1, le=1024, description="Pods (one per node): 1 Master + nodes-1 Workers.")
    gpus_per_node: int = Field(
        default=1, ge=0, le=64, description="GPUs per pod = training processes per pod (0 = CPU only, 1 process)."
    )
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPU.")
    cpu: str | int | None = Field(
        default=None,
        description="CPU request and limit per pod (e.g. 32 or 500m).",
        json_schema_extra=_pattern(QUANTITY_PATTERN),
    )
    memory: str | int | None = Field(
        default=None,
        description="Memory request and limit per pod (e.g. 256Gi).",
        json_schema_extra=_pattern(QUANTITY_PATTERN),
    )
    shared_memory: str | int = Field(
        default="16Gi",
        description="Size of the memory-backed /dev/shm (NCCL and data loaders need it).",
        json_schema_extra=_pattern(QUANTITY_PATTERN),
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Pod nodeSelector.")
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Pod tolerations. Unset: tolerate the GPU taint (<gpuResource> Exists NoSchedule) on GPU jobs.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod affinity (core/v1 Affinity), passed through as is.",
        json_schema_extra=PRESERVE_UNKNOWN,
    )
    priority_class_name: str | None = Field(default=None, description="Pod priorityClassName.")
    service_account_name: str | None = Field(
        default=None,
        description="Run the pods as this ServiceAccount (e.g. for IRSA). Unset: a per-job account that may "
        "only report this job's progress.",
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description="Annotations on the training pods, over the default sidecar.istio.io/inject: 'false' (an "
        "Istio sidecar breaks torchrun's rendezvous; set it to 'true' to have one).",
    )
    pod_labels: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description="Labels on the training pods (kubetune's own labels keep their values).",
    )
    image_pull_secrets: list[str] | None = Field(
        default=None, max_length=16, description="Secrets to pull the trainer image with (pod imagePullSecrets)."
    )
    scheduler_name: str | None = Field(
        default=None,
        description="Pod schedulerName, e.g. volcano for gang scheduling. Unset: the default scheduler.",
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    cache_size: str | int | None = Field(
        default=None,
        description="Size limit of the node-local cache (/var/cache/kubetune: downloaded model, tokenized data), "
        "also requested as ephemeral-storage so the pod lands on a node with that much disk. Unset: no limit.",
        json_schema_extra=_pattern(QUANTITY_PATTERN),
    )

    @field_validator("pod_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if not re.match(LABEL_VALUE_PATTERN, value) or len(value) > 63:
                raise ValueError(
                    f"podLabels: '{value}' (of {key}) is not a label value (63 characters: A-Z a-z 0-9 -_.)"
                )
        return labels

    @field_validator("pod_labels", "pod_annotations")
    @classmethod
    def _keys(cls, entries: dict[str, str] | None) -> dict[str, str] | None:
        for key in entries or {}:
            prefix, _, name = key.rpartition("/")
            if (
                not name
                or len(name) > 63
                or not re.match(LABEL_VALUE_PATTERN, name)
                or (prefix and (len(prefix) > 253 or not re.match(DNS_SUBDOMAIN_PATTERN, prefix)))
            ):
                raise ValueError(f"'{key}' is not a label or annotation key ([prefix/]name)")
        return entries

    @field_validator("cpu", "memory", "shared_memory", "cache_size")
    @classmethod
    def _quantity(cls, v: str | int | None) -> str | None:
        # Kubernetes quantities are int-or-string, and pydantic puts no pattern on a union: check here,
        # and keep one type (str) from here on.
        return _check_quantity(None if v is None else str(v))

    @property
    def procs_per_node(self) -> int:
        return max(self.gpus_per_node, 1)


class NcclSpec(_Model):
    """NCCL settings for multi-GPU/multi-node communication."""

    socket_ifname: str | None = Field(
        default=None, description="NCCL_SOCKET_IFNAME: interface(s) for NCCL's socket traffic (e.g. eth0, ^lo)."
    )
    ib_disable: bool = Field(default=False, description="NCCL_IB_DISABLE: turn InfiniBand/RoCE off.")
    debug: NcclDebug = Field(default=NcclDebug.warn, description="NCCL_DEBUG level.")
    env: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description="Extra NCCL_* (or other) environment variables for every training container. Plain values: "
        "no credentials, and no names kubetune, torchrun or the Kubeflow controller set.",
    )
    # No CEL twin for these key rules: a structural schema cannot bound the length of map keys, so
    # the API server would estimate any rule over them as too costly and refuse the whole CRD.

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for key in env or {}:
            problem = env_name_problem(key)
            if problem is None and looks_like_credential(key):
                problem = f"{key} looks like a credential: use spec.env with secretKeyRef instead"
            if problem is not None:
                raise ValueError(problem)
        return env


class NetworkSpec(_Model):
    """Networking of the training pods."""

    nccl: NcclSpec = Field(default_factory=NcclSpec, description="NCCL environment.")
    host_network: bool = Field(
        default=False, description="Run pods in the host network namespace (some RDMA setups need it)."
    )


class OutputSpec(_Model):
    """Where the result goes."""

    uri: str = Field(
        description="Output location: s3://bucket/prefix/ or a path (PVC mount). Holds checkpoints/, "
        "model/ (merged), adapter/, data_report.json, progress and manifest.json (written last). "
        "On a cluster a path must lie under one of spec.volumes.",
        min_length=1,
        json_schema_extra=_pattern(OUTPUT_PATTERN),
    )
    merge: bool = Field(
        default=True,
        description="For lora/qlora, also upload a merged model (base + adapter) that vLLM can serve; "
        "the adapter is uploaded either way.",
    )
    shard_size: str = Field(
        default="5GB",
        description="Maximum safetensors shard size of the saved model.",
        pattern=SIZE_PATTERN,
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return check_storage_uri(v, what="output uri", allow_hub=False)


class SecretKeyRefs(_Model):
    """A Secret holding object-storage credentials."""

    name: str = Field(
        description="Secret name in the FineTuneJob's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    access_key_id_key: str = Field(default="AWS_ACCESS_KEY_ID", description="Key of the access key id.")
    secret_access_key_key: str = Field(default="AWS_SECRET_ACCESS_KEY", description="Key of the secret access key.")
    session_token_key: str | None = Field(default=None, description="Key of a session token, if the Secret has one.")


class StorageSpec(_Model):
    """How the pods reach object storage. Unset credentials: the pod's ambient identity (IRSA etc.)."""

    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL for MinIO/Ceph/SeaweedFS (https://minio.example:9000). Unset: AWS.",
        pattern=ENDPOINT_PATTERN,
    )
    region: str | None = Field(default=None, description="S3 region (e.g. us-east-1).")
    credentials_secret: SecretKeyRefs | None = Field(
        default=None,
        description="Secret with the access keys; referenced through secretKeyRef, never copied.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="S3 addressing style (path for most MinIO/Ceph setups)."
    )


class RunPolicySpec(_Model):
    """Kubeflow run policy."""

    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Pod restarts before the job fails (each resumes from a checkpoint)."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=INT64_MAX, description="Fail the job after it has run this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=INT32_MAX, description="Delete the PyTorchJob's pods this long after it finishes."
    )


# The renderer's own volumes and mount paths; a user volume may not take them.
RENDERER_VOLUMES = ("dshm", "config", "cache")
RENDERER_MOUNT_PATHS = ("/dev/shm", "/etc/kubetune", "/var/cache/kubetune")


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


class VolumeSpec(_Model):
    """A PersistentVolumeClaim mounted into every training pod (models, data or output on a PVC)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (f"!(self.name in {_cel_list(RENDERER_VOLUMES)})", f"name must not be {', '.join(RENDERER_VOLUMES)}"),
            (
                f"self.mountPath.matches('[^/]') && !{_cel_list(RENDERER_MOUNT_PATHS)}"
                ".exists(t, self.mountPath == t || self.mountPath.startsWith(t + '/'))",
                f"mountPath must be an absolute path other than /, {', '.join(RENDERER_MOUNT_PATHS)}",
            ),
        )
    )

    name: str = Field(
        description="Volume name (a DNS label, unique in the job).", max_length=63, pattern=DNS_LABEL_PATTERN
    )
    claim_name: str = Field(description="PersistentVolumeClaim name in the job's namespace.", min_length=1)
    # maxLength bounds the CEL cost estimate of the rules that compare paths (PATH_MAX).
    mount_path: str = Field(description="Absolute mount path, e.g. /models.", max_length=4096, pattern="^/")
    read_only: bool = Field(default=False, description="Mount read-only (fine for models and data).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v in RENDERER_VOLUMES:
            raise ValueError(f"'{v}' is taken by kubetune's own volumes ({', '.join(RENDERER_VOLUMES)})")
        return v

    @field_validator("mount_path")
    @classmethod
    def _mount(cls, v: str) -> str:
        path = v.rstrip("/")
        if path == "" or any(path == t or path.startswith(t + "/") for t in RENDERER_MOUNT_PATHS):
            raise ValueError(f"'{v}' must be an absolute path other than /, {', '.join(RENDERER_MOUNT_PATHS)}")
        return v


class SecretKeySelector(_Model):
    """One key of a Secret in the job's namespace."""

    name: str = Field(description="Secret name.", min_length=1)
    key: str = Field(description="Key in the Secret.", min_length=1)


class EnvVarSpec(_Model):
    """An environment variable for the training containers; secrets only through secretKeyRef."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.value) != has(self.secretKeyRef)", "set exactly one of value and secretKeyRef"),
            *((rule, f"name: {message}") for rule, message in env_name_cel("self.name")),
            (
                f"!has(self.value) || !{credential_cel('self.name')}",
                "the name looks like a credential: use secretKeyRef so it is not stored in plain text",
            ),
        )
    )

    name: str = Field(
        description="Variable name (e.g. HF_TOKEN). Names that kubetune, torchrun or the Kubeflow controller set "
        "(KUBETUNE_*, PET_*, MASTER_ADDR, RANK, HF_HOME, AWS_* credentials and endpoint, ...) are reserved.",
        min_length=1,
        max_length=ENV_NAME_MAX,
        pattern=ENV_NAME_PATTERN,
    )
    value: str | None = Field(default=None, description="A plain value (never a credential: it is stored as is).")
    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="Take the value from a Secret key (HF_TOKEN, WANDB_API_KEY...)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = env_name_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSpec:
        if (self.value is None) == (self.secret_key_ref is None):
            raise ValueError("set exactly one of value and secretKeyRef")
        if self.value is not None and looks_like_credential(self.name):
            raise ValueError(f"{self.name} looks like a credential: use secretKeyRef so it is not stored in plain text")
        return self


# The only spec fields that may change once the training job exists (the operator propagates them;
# the CRD's transition rule and the operator's SpecApplied=False refuse any other edit).
MUTABLE_SPEC_FIELDS = ("suspend",)


class FineTuneJobSpec(_Model):
    """What to fine-tune, on what data, how, where, and where the result goes."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.datasets.exists(d, !has(d.split) || d.split == 'train')",
                "datasets needs at least one dataset with split: train",
            ),
            (
                "!(has(self.method) && has(self.method.type) && self.method.type == 'qlora' && has(self.training)"
                " && has(self.training.deepspeed) && ((has(self.training.deepspeed.stage)"
                " && self.training.deepspeed.stage == 'zero3') || (has(self.training.deepspeed.config)"
                " && has(self.training.deepspeed.config.zero_optimization)"
                " && has(self.training.deepspeed.config.zero_optimization.stage)"
                " && self.training.deepspeed.config.zero_optimization.stage == 3)))",
                "method.type qlora cannot shard a quantized base with deepspeed zero3; use zero2 or none",
            ),
            (
                "!(has(self.training) && has(self.training.precision) && self.training.precision == 'fp16'"
                " && has(self.resources) && has(self.resources.gpusPerNode) && self.resources.gpusPerNode == 0)",
                "training.precision fp16 needs GPUs; use fp32 or bf16 with gpusPerNode: 0",
            ),
            (
                "!has(self.preference) || (has(self.stage) && (self.stage == 'dpo' || self.stage == 'kto'))",
                "preference applies only to stage: dpo or kto",
            ),
            (
                "!has(self.model.reference) || (has(self.stage) && (self.stage == 'dpo' || self.stage == 'kto'))",
                "model.reference applies only to stage: dpo or kto",
            ),
            (
                "!(has(self.preference) && (has(self.preference.desirableWeight)"
                " || has(self.preference.undesirableWeight)) && !(has(self.stage) && self.stage == 'kto'))",
                "preference.desirableWeight and undesirableWeight apply only to stage: kto",
            ),
            (
                "!(has(self.stage) && self.stage == 'kto' && has(self.preference) && (has(self.preference.loss)"
                " || has(self.preference.labelSmoothing) || has(self.preference.sftWeight)))",
                "preference.loss, labelSmoothing and sftWeight apply only to stage: dpo",
            ),
            (
                "!(has(self.model.reference) && has(self.preference) && has(self.preference.loss)"
                " && (self.preference.loss == 'orpo' || self.preference.loss == 'simpo'))",
                "model.reference does not apply to preference.loss orpo or simpo: they are reference-free",
            ),
            (
                "!(has(self.stage) && self.stage == 'dpo' && has(self.training) && has(self.training.packing)"
                " && self.training.packing)",
                "stage dpo trains on whole pairs and cannot pack them; remove training.packing",
            ),
            (
                "!(has(self.stage) && self.stage == 'kto' && has(self.training) && has(self.training.packing)"
                " && self.training.packing)",
                "stage kto trains on whole examples and cannot pack them; remove training.packing",
            ),
            (
                "!(has(self.stage) && self.stage == 'kto' && (!has(self.training)"
                " || !has(self.training.perDeviceBatchSize) || self.training.perDeviceBatchSize < 2))",
                "stage kto needs training.perDeviceBatchSize of at least 2 (TRL estimates KTO's KL term by pairing "
                "each prompt with another answer of its batch)",
            ),
            (
                "!(has(self.stage) && self.stage == 'pt' && has(self.training) && has(self.training.packing))",
                "stage pt always joins documents into cutoffLen blocks; remove training.packing",
            ),
            (
                "!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
                "volumes: names must be unique",
            ),
            (
                "!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.mountPath == v.mountPath"
                " || w.mountPath == v.mountPath + '/' || w.mountPath + '/' == v.mountPath))",
                "volumes: mountPath must be unique (the API server refuses such pods)",
            ),
        )
    )

    model: ModelSpec = Field(description="The base model.")
    stage: Stage = Field(
        default=Stage.sft,
        description="What is learnt: sft (answers to prompts), dpo (preferring chosen over rejected answers, "
        "with the frozen base as reference, or none for preference.loss orpo and simpo), kto (single answers "
        "tagged desirable or not, against the same reference as dpo) or pt (continued pre-training on plain text).",
    )
    preference: PreferenceSpec | None = Field(
        default=None,
        description="stages dpo and kto: the preference loss and its settings (defaults: sigmoid, beta 0.1, "
        "simpoGamma 0.5, KTO weights 1).",
    )
    datasets: list[DatasetSpec] = Field(min_length=1, max_length=64, description="One or more datasets, mixed.")
    data: DataOptions = Field(default_factory=DataOptions, description="Mixing, validation and masking.")
    template: TemplateName = Field(
        default="auto",
        description="Chat template: auto (the tokenizer's own) or a LLaMA-Factory 0.9.5 template name (qwen, "
        "qwen3_nothink, llama3, mistral, gemma3, ...). The exported tokenizer carries the same template.",
    )
    method: MethodSpec = Field(default_factory=MethodSpec, description="lora, qlora or full.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="The training loop.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Nodes, GPUs and scheduling.")
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="NCCL and host networking.")
    output: OutputSpec = Field(description="Where the model, adapter, checkpoints and manifest go.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object-storage endpoint and credentials.")
    volumes: list[VolumeSpec] | None = Field(
        default=None,
        max_length=32,
        description="PersistentVolumeClaims mounted into every training pod, for model, data or output paths.",
    )
    env: list[EnvVarSpec] | None = Field(
        default=None,
        max_length=128,
        description="Extra environment for the training containers (HF_TOKEN from a Secret, WANDB_*...).",
    )
    image: str | None = Field(
        default=None, description="Trainer image override (default: the one the operator is configured with)."
    )
    suspend: bool = Field(
        default=False, description="Suspend the job (pods are deleted; resuming continues from a checkpoint)."
    )
    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue name (sets the kueue.x-k8s.io/queue-name label).",
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
    )
    priority: str | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass name (sets the kueue.x-k8s.io/priority-class label).",
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
    )
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec, description="Restarts and deadlines.")
    backend: Literal["auto", "trainjob", "pytorchjob"] = Field(
        default="auto",
        description="What runs the training pods: trainjob (Kubeflow Trainer v2 TrainJob), pytorchjob (Kubeflow "
        "Training Operator v1 PyTorchJob), or auto: the operator's default (Helm value operator.defaultBackend), "
        "which when itself auto is TrainJob where the trainjobs.trainer.kubeflow.org API is served, else "
        "PyTorchJob. The choice is recorded in status.backend when the job is created.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        ds = self.training.deepspeed
        if self.method.type == MethodType.qlora.value and ds.zero_stage == 3:
            raise ValueError("method.type qlora cannot shard a quantized base with deepspeed zero3; use zero2 or none")
        if self.resources.gpus_per_node == 0 and self.training.precision == Precision.fp16.value:
            raise ValueError("training.precision fp16 needs GPUs; use fp32 or bf16 with gpusPerNode: 0")
        self._check_preference()
        if self.stage == Stage.pt.value and "packing" in self.training.model_fields_set:
            raise ValueError("stage pt always joins documents into cutoffLen blocks; remove training.packing")
        if not any(d.split == DatasetSplit.train.value for d in self.datasets):
            raise ValueError("datasets needs at least one dataset with split: train")
        names = [v.name for v in self.volumes or []]
        if len(set(names)) != len(names):
            raise ValueError("volumes: names must be unique")
        paths = [v.mount_path.rstrip("/") for v in self.volumes or []]
        if len(set(paths)) != len(paths):
            raise ValueError("volumes: mountPath must be unique (the API server refuses such pods)")
        return self

    def _check_preference(self) -> None:
        """The CEL rules on preference and the preference stages, for `kubetune validate` and the operator."""
        pref, stage = self.preference, self.stage
        if self.model.reference is not None and stage not in (Stage.dpo.value, Stage.kto.value):
            raise ValueError(f"model.reference applies only to stage: dpo or kto (stage is {stage})")
        if pref is not None and stage not in (Stage.dpo.value, Stage.kto.value):
            raise ValueError(f"preference applies only to stage: dpo or kto (stage is {stage})")
        if (
            pref is not None
            and stage != Stage.kto.value
            and {"desirable_weight", "undesirable_weight"} & pref.model_fields_set
        ):
            raise ValueError("preference.desirableWeight and undesirableWeight apply only to stage: kto")
        if (
            pref is not None
            and stage == Stage.kto.value
            and {"loss", "label_smoothing", "sft_weight"} & pref.model_fields_set
        ):
            raise ValueError("preference.loss, labelSmoothing and sftWeight apply only to stage: dpo")
        if self.model.reference is not None and pref is not None and pref.loss in REFERENCE_FREE_LOSSES:
            raise ValueError(
                f"model.reference does not apply to preference.loss {pref.loss}: it is reference-free "
                "(no reference model is built or run)"
            )
        if stage in (Stage.dpo.value, Stage.kto.value) and self.training.packing:
            what = "pairs" if stage == Stage.dpo.value else "examples"
            raise ValueError(f"stage {stage} trains on whole {what} and cannot pack them; remove training.packing")
        if stage == Stage.kto.value and self.training.per_device_batch_size < 2:
            raise ValueError(
                "stage kto needs training.perDeviceBatchSize of at least 2 (TRL estimates KTO's KL term by pairing "
                "each prompt with another answer of its batch)"
            )


# --------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------


class Condition(_Model):
    """A condition shaped like metav1.Condition."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="Condition type: Validated, PyTorchJobCreated, SpecApplied, Running, Suspended, Ready, Stalled, "
        "Succeeded or Failed."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The .metadata.generation it reflects.")


class Progress(_Model):
    """Training progress reported by the trainer's rank 0."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = Field(default=None, description="preparing, training, exporting, uploading, done or failed.")
    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    percent: float | None = Field(default=None, description="step / totalSteps, in percent.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Trained (non-pad) tokens per second.")
    reward_margin: float | None = Field(
        default=None, description="stage dpo: mean reward of chosen minus rejected answers (TRL rewards/margins)."
    )
    reward_accuracy: float | None = Field(
        default=None, description="stage dpo: fraction of pairs whose chosen answer wins (TRL rewards/accuracies)."
    )
    reward_chosen: float | None = Field(default=None, description="stage dpo: mean reward of chosen answers.")
    reward_rejected: float | None = Field(default=None, description="stage dpo: mean reward of rejected answers.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds to the end of training.")
    display: str | None = Field(default=None, description="Percent and steps for printer columns (42% 84/200).")
    eta: str | None = Field(default=None, description="etaSeconds for humans (1h02m).")
    message: str | None = Field(default=None, description="What the trainer is doing, or why it failed.")
    updated_at: str | None = Field(default=None, description="When the trainer last reported (RFC 3339).")


class DataReportSummary(_Model):
    """The pre-flight data report, summarised."""

    model_config = ConfigDict(extra="allow")

    rows_read: int | None = Field(default=None, description="Rows read from all datasets.")
    invalid: int | None = Field(default=None, description="Rows that failed validation.")
    truncated: int | None = Field(default=None, description="Examples cut to cutoffLen.")
    dropped: int | None = Field(default=None, description="Examples left out (invalid or no trainable token).")
    total_tokens: int | None = Field(default=None, description="Tokens after templating.")
    trainable_tokens: int | None = Field(default=None, description="Tokens that carry loss.")
    formats: list[str] | None = Field(default=None, description="Detected format of each dataset.")
    uri: str | None = Field(default=None, description="Where the full data report is.")


class Outputs(_Model):
    """Where the results are."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, description="Merged model (serve with vllm serve <uri>).")
    adapter: str | None = Field(default=None, description="The LoRA adapter alone.")
    manifest: str | None = Field(default=None, description="manifest.json, written last: the completion marker.")
    checkpoints: str | None = Field(default=None, description="Checkpoint prefix (auto-resume reads it).")
    loss_plot: str | None = Field(default=None, description="Loss curve PNG.")
    tensorboard: str | None = Field(default=None, description="TensorBoard event files (training.reportTo).")


class FineTuneJobStatus(_Model):
    """Observed state, written by the operator (and progress by the trainer)."""

    model_config = ConfigDict(extra="allow")

    phase: str | None = Field(
        default=None,
        description="Pending, Queued, Training, Exporting, Succeeded, Failed or Suspended.",
    )
    conditions: list[Condition] | None = Field(default=None, description="metav1.Condition-shaped conditions.")
    observed_generation: int | None = Field(default=None, description="The .metadata.generation last acted on.")
    backend: str | None = Field(
        default=None, description="What runs the pods, chosen when the job was created: trainjob or pytorchjob."
    )
    pytorch_job: str | None = Field(default=None, description="Name of the child Kubeflow PyTorchJob (pytorchjob).")
    train_job: str | None = Field(default=None, description="Name of the child Kubeflow TrainJob (trainjob).")
    start_time: str | None = Field(default=None, description="When training started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the job finished (RFC 3339).")
    progress: Progress | None = Field(default=None, description="Training progress.")
    data_report: DataReportSummary | None = Field(default=None, description="Data report summary.")
    outputs: Outputs | None = Field(default=None, description="Result URIs.")


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta the tools read; the rest is passed through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # A DNS label, stricter than the API server's subdomain: the name is part of pod and Service names.
    name: str = Field(min_length=1, max_length=253, pattern=DNS_LABEL_PATTERN)
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    generation: int | None = None

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        size = sum(len(k.encode()) + len(val.encode()) for k, val in (v or {}).items())
        if size > ANNOTATIONS_MAX_BYTES:
            raise ValueError(
                f"{size} bytes of annotations; the API server takes at most {ANNOTATIONS_MAX_BYTES} (256 KiB)"
            )
        return v


class FineTuneJob(BaseModel):
    """A fine-tuning job: one base model, some data, one method, one output."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    def to_manifest(self, *, with_status: bool = False) -> dict[str, Any]:
        """The object as Kubernetes YAML/JSON, defaults filled in."""
        out = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
        if with_status and self.status is not None:
            out["status"] = self.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        return out
