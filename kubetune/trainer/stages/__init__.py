"""The training loop of each spec.stage: a module per stage, each with `make_trainer`.

Everything around the loop (model, data, checkpoints, progress, export, upload) is the same for
every stage (recipe.py); a stage only chooses its TRL trainer and how that trainer reads the data
the pipeline prepared for it (kubetune.trainer.data.kinds).
"""

from __future__ import annotations

import importlib
from typing import Any


def make_trainer(
    cfg: Any, model: Any, args: Any, tokenizer: Any, prepared: Any, callbacks: list[Any], ref_model: Any = None
) -> Any:
    """The TRL trainer for `cfg.spec.stage`, over the prepared (tokenized) data; `ref_model` is
    spec.model.reference loaded (stages dpo and kto only, None: the base is the reference)."""
    module = importlib.import_module(f"{__name__}.{cfg.spec.stage}")
    extra = {"ref_model": ref_model} if ref_model is not None else {}
    return module.make_trainer(cfg, model, args, tokenizer, prepared, callbacks, **extra)


def non_empty(dataset: Any) -> Any:
    return dataset if dataset is not None and len(dataset) > 0 else None


def shared_arguments(args: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every TrainingArguments value of the job's SFT arguments, for a preference trainer's own config."""
    import dataclasses

    from transformers import TrainingArguments

    return {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init and f.name not in skip
    }


def drop_reference_adapter(trainer: Any) -> Any:
    """TRL copies a PeftModel's fresh adapter as "ref"; a zero-initialised adapter is the base itself, so
    disabling the adapter gives the same reference without the copy, and the export holds one adapter."""
    policy: Any = trainer.model
    if "ref" in getattr(policy, "peft_config", {}):
        policy.delete_adapter("ref")
    return trainer
