"""stage kto: single answers tagged desirable or not, with TRL's KTOTrainer.

The reference model is the one DPO uses (see dpo.py). The data comes tokenized by our pipeline
(prompt_ids / completion_ids / label); of TRL's own dataset preparation only the KL completions are
built here: KTO estimates its KL term from each prompt paired with the previous answer of its batch.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import PreferenceSpec
from kubetune.trainer.stages import drop_reference_adapter, non_empty, shared_arguments


def kto_arguments(args: Any, preference: PreferenceSpec) -> Any:
    """KTOConfig with every TrainingArguments value of the job's SFT arguments, plus the KTO settings."""
    from trl import KTOConfig

    # KTOConfig's sequential sampling keeps each batch's KL pairing as built (TRL refuses any other).
    shared = shared_arguments(args, skip=("train_sampling_strategy",))
    return KTOConfig(
        **shared,
        beta=preference.beta,
        desirable_weight=preference.desirable_weight,
        undesirable_weight=preference.undesirable_weight,
        max_length=args.max_length,
    )


def with_kl_completions(dataset: Any, batch_size: int) -> Any:
    """TRL's KL rotation: within each batch, prompt i is paired with the answer of prompt i-1."""

    def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        answers = batch["completion_ids"]
        return {"KL_completion_ids": answers[-1:] + answers[:-1]}

    return dataset.map(rotate, batched=True, batch_size=batch_size)


def make_trainer(
    cfg: Any, model: Any, args: Any, tokenizer: Any, prepared: Any, callbacks: list[Any], ref_model: Any = None
) -> Any:
    from trl import KTOTrainer

    class PreTokenized(KTOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, config: Any, name: str) -> Any:
            # tokenized, checked and cut by kubetune.trainer.data (TRL has not set self.args yet)
            return with_kl_completions(dataset, config.per_device_train_batch_size) if self.calculate_KL else dataset

    return drop_reference_adapter(
        PreTokenized(
            model=model,
            ref_model=ref_model,
            args=kto_arguments(args, cfg.spec.preference or PreferenceSpec()),
            train_dataset=prepared.train,
            eval_dataset=non_empty(prepared.eval),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    )
