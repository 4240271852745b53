"""Packing without cross-attention: bins, position ids, the collator, and the model's logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kubetune.trainer.data import DataCollator
from kubetune.trainer.data.packing import best_fit_decreasing, pack, padding_fraction
from kubetune.trainer.data.tokenize import IGNORE


def test_best_fit_decreasing_respects_capacity_and_places_every_example() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=500)
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(lengths[b].sum() <= 128 for b in bins)
    lower_bound = int(np.ceil(lengths.sum() / 128))
    assert len(bins) <= lower_bound * 1.05 + 1


def test_pack_concatenates_examples_with_restarting_positions() -> None:
    table = pa.table(
        {"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "labels": [[-100, 2, 3], [-100, 5], [-100, 7, 8, 9]]}
    )
    packed = pack(table, capacity=6).to_pydict()
    assert packed["input_ids"] == [[6, 7, 8, 9, 4, 5], [1, 2, 3]]
    assert packed["labels"] == [[-100, 7, 8, 9, -100, 5], [-100, 2, 3]]
    assert packed["position_ids"] == [[0, 1, 2, 3, 0, 1], [0, 1, 2]]


def test_padding_fraction() -> None:
    assert padding_fraction(np.array([4, 4]), 2, seed=0) == 0.0
    assert padding_fraction(np.array([2, 4]), 2, seed=0) == pytest.approx(0.25)
    assert padding_fraction(np.array([2, 4]), 1, seed=0, pad_to=8) == pytest.approx(10 / 16)


def test_collator_pads_into_a_segment_of_its_own() -> None:
    batch = DataCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "position_ids": [0, 1, 0]},
            {"input_ids": [8], "labels": [IGNORE], "position_ids": [0]},
        ]
    )
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert batch["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_example_b_has_the_same_logits_as_alone(attn: str, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    a, b, c = list(range(10, 30)), list(range(40, 52)), list(range(60, 65))
    collate = DataCollator(pad_token_id=0)
    alone = collate([{"input_ids": b, "labels": b}])
    # batch of 2 rows: A then B packed in row 0, C plus padding in row 1
    packed = collate(
        [
            {"input_ids": a + b, "labels": a + b, "position_ids": list(range(len(a))) + list(range(len(b)))},
            {"input_ids": c, "labels": c},
        ]
    )

    def logits(batch: dict[str, Any]) -> Any:
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits

    b_alone, both = logits(alone)[0], logits(packed)
    assert torch.allclose(both[0, len(a) :], b_alone, atol=1e-5), "B attended to A"
    with torch.no_grad():
        c_alone = model(input_ids=torch.tensor([c]), use_cache=False).logits[0]
        b_after_a_unpacked = model(input_ids=torch.tensor([a + b]), use_cache=False).logits[0, len(a) :]
    assert torch.allclose(both[1, : len(c)], c_alone, atol=1e-5), "C attended to padding"
    # the check can fail: without restarting positions B's logits do change
    assert not torch.allclose(b_after_a_unpacked, b_alone, atol=1e-3)
