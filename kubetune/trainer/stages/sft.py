"""stage sft: answers to prompts, loss on the masked labels the pipeline built (packed or not)."""

from __future__ import annotations

from typing import Any

from kubetune.trainer.stages import non_empty


def make_trainer(cfg: Any, model: Any, args: Any, tokenizer: Any, prepared: Any, callbacks: list[Any]) -> Any:
    from trl import SFTTrainer

    from kubetune.trainer.data import DataCollator

    return SFTTrainer(
        model=model,
        args=args,
        data_collator=DataCollator(tokenizer.pad_token_id),
        train_dataset=prepared.train,
        eval_dataset=non_empty(prepared.eval),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
