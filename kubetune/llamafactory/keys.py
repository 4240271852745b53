"""Every LLaMA-Factory 0.9.5 training key kubetune knows, and what it becomes in a FineTuneJob.

`KEYS` is the one table: `kubetune import llamafactory` applies it, and the key table of
docs/llamafactory.md is generated from it (`markdown_table`), so the two cannot drift.

A key's `default` is LLaMA-Factory's effective value (its own argument defaults, or Hugging Face
`TrainingArguments`' for the trainer keys) where ours differs: the importer writes it when the config
leaves the key out, so the job trains what LLaMA-Factory would have. A key's `differs` is written as a
YAML comment next to the field when kubetune gives the value a different meaning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import TEMPLATE_NAMES, Scheduler
from kubetune.trainer.template_layouts import LAYOUTS


class Refused(ValueError):
    """A key asks for something kubetune cannot train; str() names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class Draft:
    """The FineTuneJob being written: the spec, comments per field path, and what has no equivalent."""

    config: dict[str, Any]
    # Where the config file is: files it names (a DeepSpeed JSON) are found relative to it.
    config_dir: str = "."
    spec: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)

    def set(self, path: str, value: Any, comment: str = "") -> None:
        """Set spec.<path> (dotted camelCase), creating the mappings on the way."""
        *parents, last = path.split(".")
        node = self.spec
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        if comment:
            self.comments[f"spec.{path}"] = comment

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


Apply = Callable[[Any, Draft], None]


@dataclass(frozen=True)
class Key:
    name: str
    # The FineTuneJob field(s) it becomes, as the docs show them; "" when it has no equivalent.
    target: str
    apply: Apply | None = None
    note: str = ""
    differs: str = ""
    # LLaMA-Factory's effective value when the config leaves the key out, where ours differs.
    default: Any = None
    # Applied (with None) even when the config leaves the key out: its rule reads other keys.
    always: bool = False


def _to(path: str) -> Apply:
    def apply(value: Any, draft: Draft) -> None:
        draft.set(path, value)

    return apply


def _lora(path: str) -> Apply:
    def apply(value: Any, draft: Draft) -> None:
        if draft.get("finetuning_type", "lora") == "lora":
            draft.set(f"method.lora.{path}", value)

    return apply


def _nothing(value: Any, draft: Draft) -> None:
    """Read by another key's rule (e.g. dataset reads dataset_dir and max_samples)."""


def _refuse_if(bad: Callable[[Any], bool], message: str, name: str) -> Apply:
    def apply(value: Any, draft: Draft) -> None:
        if bad(value):
            raise Refused(name, message)

    return apply


STAGES = ("sft", "dpo", "kto", "pt")
# LLaMA-Factory pref_loss -> spec.preference.loss (TRL loss_type, or LF's own reference-free orpo/simpo).
PREF_LOSSES = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo", "orpo": "orpo", "simpo": "simpo"}


def _stage(value: Any, draft: Draft) -> None:
    if value not in STAGES:
        raise Refused("stage", f"'{value}' is not supported: kubetune trains {', '.join(STAGES)}")
    if value != "sft":
        draft.set("stage", value)


def _preference(path: str, stages: tuple[str, ...], name: str) -> Apply:
    """A pref_*/kto_* key: LLaMA-Factory reads it only in some stages, and so does the job."""

    def apply(value: Any, draft: Draft) -> None:
        stage = draft.get("stage", "sft")
        if stage not in stages:
            return
        if name == "pref_loss":
            if value not in PREF_LOSSES:
                raise Refused(name, f"'{value}' is not supported: stage dpo trains {', '.join(PREF_LOSSES)}")
            value = PREF_LOSSES[value]
        if name == "pref_ftx" and not value:
            return
        draft.set(f"preference.{path}", value)

    return apply


def _simpo_gamma(value: Any, draft: Draft) -> None:
    if draft.get("stage") == "dpo" and draft.get("pref_loss") == "simpo":  # LF reads it for simpo only
        draft.set("preference.simpoGamma", value)


def _do_train(value: Any, draft: Draft) -> None:
    if value is False:
        raise Refused(
            "do_train", "false asks for no training; kubetune jobs train (evaluation-only runs are not supported)"
        )


def _finetuning_type(value: Any, draft: Draft) -> None:
    if value not in ("lora", "full"):
        raise Refused(
            "finetuning_type", f"'{value}' is not supported: use lora (or qlora via quantization_bit) or full"
        )
    draft.set("method.type", value)


def _quantization_bit(value: Any, draft: Draft) -> None:
    if value is None:
        return
    if draft.get("finetuning_type", "lora") != "lora":
        raise Refused("quantization_bit", "a quantized base trains only with finetuning_type: lora (qlora)")
    if value not in (4, 8):
        raise Refused("quantization_bit", f"{value} is not supported: bitsandbytes 4 or 8 bits")
    draft.set("method.type", "qlora")
    draft.set("method.quantization.bits", value)


def _quantized(path: str) -> Apply:
    def apply(value: Any, draft: Draft) -> None:
        if draft.get("quantization_bit") is not None:
            draft.set(f"method.quantization.{path}", value)

    return apply


def _lora_alpha(value: Any, draft: Draft) -> None:
    if draft.get("finetuning_type", "lora") == "lora":
        rank = draft.get("lora_rank", 8)
        comment = "" if value is not None else "LLaMA-Factory's default: 2 x rank"
        draft.set("method.lora.alpha", value if value is not None else 2 * rank, comment)


def _lora_target(value: Any, draft: Draft) -> None:
    items = value if isinstance(value, list) else [t.strip() for t in str(value).split(",") if t.strip()]
    _lora("targetModules")(items, draft)


def _template(value: Any, draft: Draft) -> None:
    if value not in TEMPLATE_NAMES:
        raise Refused("template", f"'{value}' is not a template kubetune has; pick one of {', '.join(TEMPLATE_NAMES)}")
    draft.set("template", value)


def _enable_thinking(value: Any, draft: Draft) -> None:
    template = draft.get("template")
    if value is False and template in LAYOUTS and LAYOUTS[template].empty_thought:
        raise Refused(
            "enable_thinking",
            f"false with the reasoning template {template} is not supported: use {template}_nothink "
            "or a template without thinking",
        )


def _precision(value: Any, draft: Draft) -> None:
    if draft.get("bf16") or draft.get("pure_bf16"):
        draft.set("training.precision", "bf16")
    elif draft.get("fp16"):
        draft.set("training.precision", "fp16")
    else:
        draft.set("training.precision", "fp32", "LLaMA-Factory trains in fp32 unless bf16 or fp16 is set")


def _scheduler(value: Any, draft: Draft) -> None:
    choices = [s.value for s in Scheduler]
    if value not in choices:
        raise Refused("lr_scheduler_type", f"'{value}' is not supported: one of {', '.join(choices)}")
    draft.set("training.lrScheduler", value)


def _max_steps(value: Any, draft: Draft) -> None:
    if value is not None and value > 0:  # -1 (the default) means: by epochs
        draft.set("training.maxSteps", value)


def _epochs(value: Any, draft: Draft) -> None:
    if not (draft.get("max_steps") or 0) > 0:
        draft.set("training.epochs", value)


def _warmup_steps(value: Any, draft: Draft) -> None:
    if value or draft.get("warmup_ratio") is None:
        draft.set("training.warmupSteps", int(value or 0), "" if value else "LLaMA-Factory's default: no warm-up")


def _warmup_ratio(value: Any, draft: Draft) -> None:
    if value is not None and not draft.get("warmup_steps"):
        draft.set("training.warmupRatio", value)


# LLaMA-Factory's examples/deepspeed configs and the ZeRO settings kubetune generates for them.
DEEPSPEED_CONFIGS = {
    "ds_z0_config.json": ("none", "none"),
    "ds_z2_config.json": ("zero2", "none"),
    "ds_z2_offload_config.json": ("zero2", "cpu"),
    "ds_z3_config.json": ("zero3", "none"),
    "ds_z3_offload_config.json": ("zero3", "cpu"),
}


def _deepspeed_file(value: str, config_dir: str) -> str | None:
    """The JSON file a config names: as given (from here), or from the config's folder or one above it
    (LLaMA-Factory's examples name theirs from its repository root)."""
    if os.path.isabs(value):
        return value if os.path.isfile(value) else None
    candidates = [value]
    folder = os.path.abspath(config_dir)
    while True:
        candidates.append(os.path.join(folder, value))
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return next((c for c in candidates if os.path.isfile(c)), None)


def _deepspeed(value: Any, draft: Draft) -> None:
    if value is None:
        return
    found = _deepspeed_file(str(value), draft.config_dir)
    if found is not None:
        try:
            config = json.loads(Path(found).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Refused("deepspeed", f"'{value}' ({found}) is not a readable JSON file: {exc}") from None
        if not isinstance(config, dict):
            raise Refused("deepspeed", f"'{value}' ({found}) is not a JSON object")
        draft.set("training.deepspeed.config", config, f"from {value}, used as is")
        return
    known = DEEPSPEED_CONFIGS.get(os.path.basename(str(value)))
    if known is None:
        raise Refused(
            "deepspeed",
            f"'{value}' not found (looked here and from {draft.config_dir} upwards); give the JSON's path, "
            f"or name one of LLaMA-Factory's examples/deepspeed configs ({', '.join(DEEPSPEED_CONFIGS)}) "
            "to use kubetune's generated equivalent",
        )
    stage, offload = known
    draft.set("training.deepspeed.stage", stage)
    if offload != "none":
        draft.set("training.deepspeed.offload", offload)


def _val_size(value: Any, draft: Draft) -> None:
    if value is None or value == 0:
        return
    if not 0 < value < 0.5:
        raise Refused("val_size", f"{value}: kubetune holds out a fraction below 0.5 (a row count is not supported)")
    draft.set("data.validationSplit", value)


def _mix(value: Any, draft: Draft) -> None:
    mixes = {"concat": "concat", "interleave_under": "interleave"}
    if value not in mixes:
        raise Refused("mix_strategy", f"'{value}' is not supported: concat or interleave_under")
    draft.set("data.mix", mixes[value])


def _train_on(value: Any, draft: Draft) -> None:
    if draft.get("train_on_prompt"):
        draft.set("data.trainOn", "all")
    elif draft.get("mask_history"):
        draft.set("data.trainOn", "lastTurn", "LLaMA-Factory also drops earlier turns' <think> blocks here")


def _packing(value: Any, draft: Draft) -> None:
    if value or draft.get("neat_packing"):
        draft.set("training.packing", True)


def _cutoff(value: Any, draft: Draft) -> None:
    draft.set("training.cutoffLen", value)


def _resume(value: Any, draft: Draft) -> None:
    if value not in (None, False):
        draft.unmapped["resume_from_checkpoint"] = (
            f"{value}  (a job resumes from the newest complete checkpoint under spec.output.uri by itself)"
        )


def _overwrite(value: Any, draft: Draft) -> None:
    if value:
        draft.comments["spec.output.uri"] = (
            "overwrite_output_dir: true is not carried over: a job resumes from checkpoints found here; "
            "use a fresh URI to start over"
        )


REPORT_TO = ("tensorboard", "wandb", "mlflow")


def _report_to(value: Any, draft: Draft) -> None:
    names = _listed(value)
    kept = [n for n in dict.fromkeys(names) if n in REPORT_TO]
    others = [n for n in names if n not in REPORT_TO and n != "none"]
    if kept:
        draft.set("training.reportTo", kept)
    if others:
        draft.unmapped["report_to"] = f"{', '.join(others)}  (kubetune reports to {', '.join(REPORT_TO)})"


def _listed(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _flag(name: str, message: str) -> Apply:
    return _refuse_if(bool, message, name)


_UNSUPPORTED_METHOD = "is not supported by kubetune (lora, qlora and full only)"

# Order matters only where one key's rule reads another's written value (max_steps after epochs).
KEYS: tuple[Key, ...] = (
    Key("model_name_or_path", "spec.model.source", _to("model.source"), "A hub id, `s3://bucket/prefix/` or a path."),
    Key("model_revision", "spec.model.revision", _to("model.revision")),
    Key("trust_remote_code", "spec.model.trustRemoteCode", _to("model.trustRemoteCode")),
    Key("stage", "spec.stage", _stage, "`sft`, `dpo`, `kto` or `pt`; `rm` and `ppo` are refused."),
    Key("pref_beta", "spec.preference.beta", _preference("beta", ("dpo", "kto"), "pref_beta"), "dpo and kto."),
    Key(
        "pref_loss",
        "spec.preference.loss",
        _preference("loss", ("dpo",), "pref_loss"),
        "dpo: `sigmoid`, `hinge`, `ipo`, and the reference-free `orpo`, `simpo`; `kto_pair` is refused.",
    ),
    Key("simpo_gamma", "spec.preference.simpoGamma", _simpo_gamma, "dpo with `pref_loss: simpo`."),
    Key("pref_ftx", "spec.preference.sftWeight", _preference("sftWeight", ("dpo",), "pref_ftx"), "dpo."),
    Key(
        "kto_chosen_weight",
        "spec.preference.desirableWeight",
        _preference("desirableWeight", ("kto",), "kto_chosen_weight"),
    ),
    Key(
        "kto_rejected_weight",
        "spec.preference.undesirableWeight",
        _preference("undesirableWeight", ("kto",), "kto_rejected_weight"),
    ),
    Key("do_train", "(implied)", _do_train),
    Key("finetuning_type", "spec.method.type", _finetuning_type, "`lora` or `full`; `freeze` and `oft` are refused."),
    Key(
        "quantization_bit",
        "spec.method.type: qlora, spec.method.quantization.bits",
        _quantization_bit,
        "4 or 8, with `finetuning_type: lora`.",
    ),
    Key(
        "quantization_method",
        "(bitsandbytes)",
        _refuse_if(
            lambda v: v not in (None, "bnb", "bitsandbytes"),
            "only bnb (bitsandbytes) is supported",
            "quantization_method",
        ),
        "`bnb` only.",
    ),
    Key("quantization_type", "spec.method.quantization.quantType", _quantized("quantType"), "`nf4` or `fp4`."),
    Key("double_quantization", "spec.method.quantization.doubleQuant", _quantized("doubleQuant")),
    Key("lora_rank", "spec.method.lora.rank", _lora("rank"), "Ours defaults to 16.", default=8),
    Key(
        "lora_alpha",
        "spec.method.lora.alpha",
        _lora_alpha,
        "Ours defaults to 32; written as 2 x rank (LLaMA-Factory's default) when the config leaves it out.",
        always=True,
    ),
    Key("lora_dropout", "spec.method.lora.dropout", _lora("dropout"), "Ours defaults to 0.05.", default=0.0),
    Key("lora_target", "spec.method.lora.targetModules", _lora_target, "A list instead of a comma-separated string."),
    Key("use_dora", "spec.method.lora.useDora", _lora("useDora")),
    Key("use_rslora", "spec.method.lora.useRslora", _lora("useRslora")),
    Key(
        "template",
        "spec.template",
        _template,
        "Same names (see docs/data.md); unset means `auto`, as in LLaMA-Factory.",
    ),
    Key("enable_thinking", "(template)", _enable_thinking, "`false` with a reasoning template is refused."),
    Key(
        "dataset",
        "spec.datasets",
        _nothing,
        "One entry per dataset, resolved through `dataset_info.json` (below).",
    ),
    Key("eval_dataset", "spec.datasets[].split: validation", _nothing),
    Key("dataset_dir", "spec.datasets[].source", _nothing, "Where `dataset_info.json` and the files are."),
    Key("max_samples", "spec.datasets[].maxSamples", _nothing, "Per dataset, the first rows, as in LLaMA-Factory."),
    Key("val_size", "spec.data.validationSplit", _val_size, "A fraction below 0.5."),
    Key("mix_strategy", "spec.data.mix", _mix, "`concat` or `interleave_under` (as `interleave`)."),
    Key("train_on_prompt", "spec.data.trainOn: all", _train_on, always=True),
    Key("mask_history", "spec.data.trainOn: lastTurn", _nothing),
    Key(
        "packing",
        "spec.training.packing",
        _packing,
        differs="packed examples never attend to each other (LLaMA-Factory's neat_packing)",
        always=True,
    ),
    Key("neat_packing", "spec.training.packing", _nothing),
    Key(
        "cutoff_len",
        "spec.training.cutoffLen",
        _cutoff,
        differs="truncation keeps or drops whole turns; LLaMA-Factory cuts each prompt and answer in proportion",
    ),
    Key(
        "per_device_train_batch_size", "spec.training.perDeviceBatchSize", _to("training.perDeviceBatchSize"), default=8
    ),
    Key(
        "gradient_accumulation_steps",
        "spec.training.gradientAccumulationSteps",
        _to("training.gradientAccumulationSteps"),
        default=1,
    ),
    Key("learning_rate", "spec.training.learningRate", _to("training.learningRate"), default=5e-5),
    Key("num_train_epochs", "spec.training.epochs", _epochs),
    Key("max_steps", "spec.training.maxSteps", _max_steps, "Replaces epochs when positive."),
    Key(
        "lr_scheduler_type",
        "spec.training.lrScheduler",
        _scheduler,
        "`linear`, `cosine`, `constant`, `constant_with_warmup`.",
        default="linear",
    ),
    Key("warmup_ratio", "spec.training.warmupRatio", _warmup_ratio),
    Key(
        "warmup_steps", "spec.training.warmupSteps", _warmup_steps, "Ours defaults to a 0.03 warm-up ratio.", default=0
    ),
    Key("weight_decay", "spec.training.weightDecay", _to("training.weightDecay")),
    Key("max_grad_norm", "spec.training.maxGradNorm", _to("training.maxGradNorm")),
    Key(
        "bf16",
        "spec.training.precision: bf16",
        _precision,
        "Neither bf16 nor fp16: fp32, as in LLaMA-Factory.",
        always=True,
    ),
    Key("pure_bf16", "spec.training.precision: bf16", _nothing),
    Key("fp16", "spec.training.precision: fp16", _nothing),
    Key(
        "disable_gradient_checkpointing",
        "spec.training.gradientCheckpointing: false",
        lambda v, d: d.set("training.gradientCheckpointing", not v) if v else None,
    ),
    Key(
        "deepspeed",
        "spec.training.deepspeed.stage, .offload, .config",
        _deepspeed,
        "A JSON file found from the config's folder (or one above it) is copied into `deepspeed.config` as is. "
        "When it is not found, LLaMA-Factory's `ds_z0/z2/z3[_offload]_config.json` names map to generated "
        "configs (same ZeRO stage and offload); other names are refused.",
        differs="the DeepSpeed config is generated (same ZeRO stage and offload): the JSON file was not found",
    ),
    Key("seed", "spec.training.seed", _to("training.seed")),
    Key("save_steps", "spec.training.checkpointEverySteps", _to("training.checkpointEverySteps"), default=500),
    Key(
        "save_total_limit",
        "spec.training.keepCheckpoints",
        _to("training.keepCheckpoints"),
        "Ours keeps 2 by default (LLaMA-Factory: all).",
    ),
    Key("eval_steps", "spec.training.evalEverySteps", _to("training.evalEverySteps")),
    Key("logging_steps", "spec.training.loggingSteps", _to("training.loggingSteps"), default=500),
    Key("output_dir", "spec.output.uri", _nothing, "`--output-uri`, or `output_dir` when it is `s3://` or absolute."),
    Key(
        "overwrite_output_dir",
        "(none)",
        _overwrite,
        "A job resumes from checkpoints under the output URI; use a fresh URI to start over.",
    ),
    Key("resume_from_checkpoint", "(automatic)", _resume, "The newest complete checkpoint under the output URI."),
    Key("plot_loss", "(always)", _nothing, "`loss.png` next to the model."),
    # Methods kubetune does not train: refused when switched on, not silently dropped.
    *(
        Key(name, "(none)", _flag(name, _UNSUPPORTED_METHOD), "Refused when set.")
        for name in (
            "use_galore",
            "use_apollo",
            "use_badam",
            "use_llama_pro",
            "use_adam_mini",
            "use_muon",
            "pissa_init",
            "loraplus_lr_ratio",
            "mixture_of_depths",
            "use_dft_loss",
            "use_eaft_loss",
            "use_asft_loss",
        )
    ),
    Key(
        "default_system",
        "(none)",
        _flag("default_system", "a template's default system prompt cannot be replaced; put a system turn in the data"),
        "Refused when set.",
    ),
    Key(
        "tool_format", "(none)", _flag("tool_format", "tool-calling formats are not supported yet"), "Refused when set."
    ),
    Key("tokenized_path", ""),
    Key("preprocessing_num_workers", "spec.data.preprocessingWorkers", _to("data.preprocessingWorkers")),
    Key("dataloader_num_workers", "spec.training.dataloaderWorkers", _to("training.dataloaderWorkers")),
    Key(
        "ddp_timeout",
        "spec.training.ddpTimeoutSeconds",
        _to("training.ddpTimeoutSeconds"),
        "The wait of a training collective; ours defaults to 30 minutes (as LLaMA-Factory's), and waits for "
        "downloads, uploads and export allow at least 4 hours.",
    ),
    Key(
        "report_to",
        "spec.training.reportTo",
        _report_to,
        "`tensorboard`, `wandb`, `mlflow`; `none` writes nothing, other trackers are listed as having no "
        "equivalent. Progress is always in `status.progress` and `progress.jsonl`.",
    ),
    Key("save_only_model", ""),
    Key("overwrite_cache", ""),
    Key("flash_attn", "", note="The trainer image built with `--build-arg FLASH_ATTN=1`."),
    Key("ray_num_workers", "", note="`--nodes` and `--gpus-per-node` (spec.resources)."),
    Key("per_device_eval_batch_size", ""),
    Key("eval_strategy", "", note="Evaluation runs every `evalEverySteps` when there is validation data."),
    Key("image_max_pixels", "", note="Multimodal data is refused."),
    Key("video_max_pixels", "", note="Multimodal data is refused."),
    Key("freeze_vision_tower", ""),
    Key("freeze_multi_modal_projector", ""),
    Key("freeze_language_model", ""),
)

KEYS_BY_NAME = {k.name: k for k in KEYS}


def markdown_table() -> str:
    """The key table of docs/llamafactory.md."""
    lines = ["| LLaMA-Factory key | FineTuneJob field | Notes |", "|---|---|---|"]
    for key in KEYS:
        target = f"`{key.target}`" if key.target.startswith("spec.") else key.target or "(no equivalent)"
        notes = [key.note] if key.note else []
        if key.default is not None:
            notes.append(f"Written as `{key.default}` when the config leaves it out (LLaMA-Factory's default).")
        if key.differs:
            notes.append(f"Differs: {key.differs}.")
        lines.append(f"| `{key.name}` | {target} | {' '.join(notes)} |")
    return "\n".join(lines) + "\n"


DOCS_BEGIN, DOCS_END = "<!-- llamafactory-keys:begin -->\n", "<!-- llamafactory-keys:end -->"


def docs_with_table(text: str) -> str:
    """docs/llamafactory.md's text with the generated key table between its markers."""
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    return head + DOCS_BEGIN + markdown_table() + DOCS_END + tail
