"""stage dpo: preferring the chosen answer over the rejected one, with TRL's DPOTrainer.

The reference model is spec.model.reference when set (loaded by kubetune.trainer.model), else the
base: with LoRA/QLoRA the adapter-disabled model (no second copy of the weights); with full training
TRL keeps a frozen copy of the starting weights. The data comes
tokenized by our pipeline (prompt_ids / chosen_ids / rejected_ids, rendered with the job's
template and cut to cutoffLen), so TRL's own dataset preparation is skipped.

preference.loss orpo and simpo are LLaMA-Factory's reference-free losses (reference_free.py): TRL's loss
step is replaced, and no reference is built — with full training TRL would load a copy of the model, so it
is told the reference log-probs are "precomputed", a pass this trainer makes a no-op. The one cost left is
TRL hashing the weights once at start-up (for its precompute cache).
"""

from __future__ import annotations

import logging
from typing import Any

from kubetune.api.v1alpha1 import REFERENCE_FREE_LOSSES, PreferenceSpec
from kubetune.trainer.stages import drop_reference_adapter, non_empty, reference_free, shared_arguments

log = logging.getLogger(__name__)


def dpo_arguments(args: Any, preference: PreferenceSpec, *, peft: bool = True) -> Any:
    """DPOConfig with every TrainingArguments value of the job's SFT arguments, plus the preference loss.

    For orpo/simpo TRL's loss_type stays sigmoid (unused: reference_free computes the loss, with
    pref_ftx LF's way), and without PEFT precompute_ref_log_probs keeps TRL from loading a reference."""
    from trl import DPOConfig

    shared = shared_arguments(args)
    if preference.loss in REFERENCE_FREE_LOSSES:
        return DPOConfig(**shared, beta=preference.beta, precompute_ref_log_probs=not peft, max_length=args.max_length)
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
    from peft import PeftModel
    from trl import DPOTrainer

    preference = cfg.spec.preference or PreferenceSpec()

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # tokenized, checked and cut by kubetune.trainer.data

    class ReferenceFree(PreTokenized):
        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            return dataset  # nothing to precompute: the loss reads no reference log-probs

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            loss = reference_free.compute_loss(
                self, model, inputs, str(preference.loss), preference.simpo_gamma, preference.sft_weight
            )
            if not return_outputs:
                return loss
            import torch

            with torch.no_grad():  # the fused LM head builds no logits; prediction_step wants them
                return loss, model(**{k: v for k, v in inputs.items() if k != "completion_mask"})

    trainer_class = PreTokenized
    if preference.loss in REFERENCE_FREE_LOSSES:
        if ref_model is not None:
            raise ValueError(f"preference.loss {preference.loss} is reference-free: remove spec.model.reference")
        trainer_class = ReferenceFree
    trainer = drop_reference_adapter(
        trainer_class(
            model=model,
            ref_model=ref_model,
            args=dpo_arguments(args, preference, peft=isinstance(model, PeftModel)),
            train_dataset=prepared.train,
            eval_dataset=non_empty(prepared.eval),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    )
    if trainer_class is ReferenceFree:
        if trainer.ref_model is not None:  # a TRL change would bring back the copy this stage promises to avoid
            raise RuntimeError(f"TRL built a reference model for reference-free preference.loss {preference.loss}")
        log.info(reference_free.REFERENCE_FREE_NOTE, preference.loss)
    return trainer
