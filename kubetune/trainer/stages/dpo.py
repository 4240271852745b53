"""stage dpo: preferring the chosen answer over the rejected one, with TRL's DPOTrainer.

The reference model is spec.model.reference when set (loaded by kubetune.trainer.model), else the
base: with LoRA/QLoRA the adapter-disabled model (no second copy of the weights); with full training
TRL keeps a frozen copy of the starting weights. The data comes
tokenized by our pipeline (prompt_ids / chosen_ids / rejected_ids, rendered with the job's
template and cut to cutoffLen), so TRL's own dataset preparation is skipped.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import PreferenceSpec
from kubetune.trainer.stages import drop_reference_adapter, non_empty, shared_arguments


def dpo_arguments(args: Any, preference: PreferenceSpec) -> Any:
    """DPOConfig with every TrainingArguments value of the job's SFT arguments, plus the preference loss."""
    from trl import DPOConfig

    shared = shared_arguments(args)
    losses, weights = [str(preference.loss)], [1.0]
    if preference.sft_weight:  # LLaMA-Factory's pref_ftx: an SFT loss on the chosen answers beside it
        losses.append("sft")
        weights.append(preference.sft_weight)
    return DPOConfig(
        **shared,
        beta=preference.beta,
        loss_type=losses,
        loss_weights=weights,
        label_smoothing=preference.label_smoothing,
        max_length=args.max_length,
    )


def make_trainer(
    cfg: Any, model: Any, args: Any, tokenizer: Any, prepared: Any, callbacks: list[Any], ref_model: Any = None
) -> Any:
    from trl import DPOTrainer

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # tokenized, checked and cut by kubetune.trainer.data

    return drop_reference_adapter(
        PreTokenized(
            model=model,
            ref_model=ref_model,
            args=dpo_arguments(args, cfg.spec.preference or PreferenceSpec()),
            train_dataset=prepared.train,
            eval_dataset=non_empty(prepared.eval),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    )
