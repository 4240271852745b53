"""Batching for packed and unpacked rows without a 2-D attention mask.

No attention_mask is returned on purpose: transformers 5 then derives sequence boundaries from
`position_ids` (a new sequence wherever they do not increase by one). Packed examples become
blocks of a block-diagonal causal mask (sdpa and eager, on CPU too) or varlen segments
(flash-attention). Padding is given positions restarting at 0, so it is a segment of its own that
no real token attends to, and labels -100, so it carries no loss.

The model must run without a KV cache for this (`use_cache=False`; TRL's SFTTrainer passes it):
with a cache, transformers skips the detection and packed examples would attend to each other.

`flatten=True` puts the whole batch into one row and adds `cu_seq_lens_*`/`max_length_*`, the
padding-free layout flash-attention's varlen kernels take (as TRL's padding-free collator does).
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.tokenize import IGNORE


class DataCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, flatten: bool = False) -> None:
        if pad_token_id is None:
            raise ValueError("DataCollator needs a pad token id (the tokenizer has no pad token; set one)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.flatten = flatten

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if self.flatten:
            features = [_concatenated(features)]
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
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
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.flatten:
            starts = (position_ids[0] == 0).nonzero().flatten()
            cu = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
            batch["max_length_q"] = batch["max_length_k"] = int(cu.diff().max())
        return batch


def _concatenated(features: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for f in features:
        out["input_ids"] += list(f["input_ids"])
        out["labels"] += list(f["labels"])
        positions = f.get("position_ids")
        out["position_ids"] += list(positions) if positions is not None else list(range(len(f["input_ids"])))
    return out
