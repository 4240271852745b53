"""Batching for packed and unpacked rows without a 2-D attention mask.

No attention_mask is returned on purpose: transformers 5 then derives sequence boundaries from
`position_ids` (a new sequence wherever they do not increase by one). Packed examples become
blocks of a block-diagonal causal mask (sdpa and eager, on CPU too) or varlen segments
(flash-attention). Padding is given positions restarting at 0, so it is a segment of its own that
no real token attends to, and labels -100, so it carries no loss.

The model must run without a KV cache for this (`use_cache=False`; TRL's SFTTrainer passes it):
with a cache, transformers skips the detection and packed examples would attend to each other.

Why not TRL's `DataCollatorForLanguageModeling` (it takes prebuilt labels), measured against the
cross-contamination test (tests/unit/data/test_packing.py) with TRL 1.16 / transformers 5.23:
- padded mode returns an all-ones attention_mask, and with it B attends to A packed before it
  (B's logits change, sdpa and eager);
- padding_free=True passes, but flattens the whole batch into one row: on sdpa/eager the mask is
  then (batch x cutoffLen)^2 instead of batch x cutoffLen^2, and it rebuilds positions from a
  `seq_lengths` column instead of the position_ids our cached data already holds.
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.tokenize import IGNORE


class DataCollator:
    def __init__(self, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("DataCollator needs a pad token id (the tokenizer has no pad token; set one)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for row, f in enumerate(features):
            length = len(f["input_ids"])
            input_ids[row, :length] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.as_tensor(f["labels"], dtype=torch.long)
            positions = f.get("position_ids")
            if positions is None:
                position_ids[row, :length] = torch.arange(length)
            else:
                position_ids[row, :length] = torch.as_tensor(positions, dtype=torch.long)
            position_ids[row, length:] = torch.arange(width - length)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
