"""stage kto data: LLaMA-Factory's KTO rows (an SFT layout plus a boolean kto_tag), checked and tokenized."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.v1alpha1 import ColumnMapping, TagMapping
from kubetune.trainer.data import DataValidationError, check_file, prepare_data
from kubetune.trainer.data.kinds import KTO
from kubetune.trainer.templates import render
from tests.unit.data.helpers import make_spec

LLAMAFACTORY = Path(__file__).parent / "llamafactory"

SHAREGPT = {
    "conversations": [{"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}],
    "kto_tag": True,
}
ALPACA = {"instruction": "Add", "input": "2 and 2", "output": "5", "kto_tag": False}
OPENAI_LABEL = {
    "messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
    "label": True,
}


def _kto(datasets: list[dict[str, Any]], **sections: Any) -> Any:
    return make_spec(datasets, stage="kto", training={"perDeviceBatchSize": 2}, **sections)


@pytest.mark.parametrize(
    ("row", "detected", "prompt", "answer"),
    [
        (
            SHAREGPT,
            "KTO answers tagged by 'kto_tag', sharegpt",
            [{"role": "user", "content": "Capital of France?"}],
            "Paris.",
        ),
        (ALPACA, "KTO answers tagged by 'kto_tag', alpaca", [{"role": "user", "content": "Add\n2 and 2"}], "5"),
        (OPENAI_LABEL, "KTO answers tagged by 'label', openai", [{"role": "user", "content": "Say hi"}], "Hi!"),
    ],
    ids=["sharegpt", "alpaca", "openai-label"],
)
def test_each_kto_layout_is_detected_and_tokenized_as_sft_renders_the_prompt(
    tokenizer: Any,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    row: dict[str, Any],
    detected: str,
    prompt: list[dict[str, str]],
    answer: str,
) -> None:
    path = write_jsonl("kto.jsonl", [row, row])
    prepared = prepare_data(_kto([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "cache")
    assert detected in prepared.report.datasets[0].detected
    assert set(prepared.train.column_names) == {"prompt_ids", "completion_ids", "label"}
    example = prepared.train[0]
    template = prepared.template
    head = render(template, prompt, special_tokens=dict(tokenizer.special_tokens_map), add_generation_prompt=True)
    assert tokenizer.decode(example["prompt_ids"]) == head
    completion = tokenizer.decode(example["completion_ids"])
    assert completion.startswith(answer) and any(completion.rstrip().endswith(s) for s in template.stop_tokens)
    # TRL's KTOTrainer reads a boolean label.
    assert example["label"] is row.get("kto_tag", row.get("label"))
    assert prepared.report.trainable_tokens == 2 * len(example["completion_ids"])


BAD_ROWS = [
    ({**SHAREGPT, "kto_tag": "true"}, "field 'kto_tag' must be true or false (is the answer desirable?), got str"),
    ({**SHAREGPT, "kto_tag": 1}, "field 'kto_tag' must be true or false (is the answer desirable?), got a number"),
    ({k: v for k, v in SHAREGPT.items() if k != "kto_tag"}, "missing field 'kto_tag': spec.stage kto needs"),
    (
        {**SHAREGPT, "conversations": [{"from": "human", "value": "Hi"}]},
        "conversation has no assistant turn (nothing to learn)",
    ),
    (
        {**SHAREGPT, "conversations": [*SHAREGPT["conversations"], {"from": "human", "value": "And Spain?"}]},
        "conversation ends with a user turn; the last turn must be the assistant's",
    ),
]


def test_bad_kto_rows_are_named_by_file_and_row_honouring_invalid_rows(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("kto.jsonl", [SHAREGPT, *(row for row, _ in BAD_ROWS)])
    dataset = {"source": str(path), "format": "sharegpt"}
    with pytest.raises(DataValidationError) as err:
        prepare_data(_kto([dataset]), tokenizer, cache_dir=tmp_path / "cache")
    for row, (_, reason) in enumerate(BAD_ROWS, start=2):
        assert f"{path} row {row}: " in str(err.value) and reason in str(err.value), (row, reason, str(err.value))
    prepared = prepare_data(_kto([dataset], data={"invalidRows": "skip"}), tokenizer, cache_dir=tmp_path / "c2")
    assert len(prepared.train) == 1 and prepared.report.invalid == len(BAD_ROWS)


def test_stage_and_kto_data_must_match_naming_the_field(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    sft_rows = write_jsonl("sft.jsonl", [{"instruction": "a", "output": "b"}] * 3)
    with pytest.raises(DataValidationError, match=r"spec.stage is kto, .* no row has a 'kto_tag' column"):
        prepare_data(_kto([{"source": str(sft_rows)}]), tokenizer, cache_dir=tmp_path / "cache")
    kto_rows = write_jsonl("kto.jsonl", [SHAREGPT] * 3)
    with pytest.raises(DataValidationError, match=r"this looks like KTO data .*set spec.stage: kto"):
        prepare_data(make_spec([{"source": str(kto_rows)}]), tokenizer, cache_dir=tmp_path / "c2")
    pairs = write_jsonl("pairs.jsonl", [{"instruction": "a", "chosen": "b", "rejected": "c"}] * 3)
    with pytest.raises(DataValidationError, match=r"this looks like preference data .*set spec.stage: dpo"):
        prepare_data(_kto([{"source": str(pairs)}]), tokenizer, cache_dir=tmp_path / "c3")


def test_llamafactory_kto_demo_checks_clean_with_its_dataset_info_mapping(tokenizer: Any) -> None:
    # dataset_info.json: kto_en_demo, sharegpt, columns {messages: messages, kto_tag: label}, role/content tags.
    from kubetune.trainer.templates import resolve_template

    report, preview = check_file(
        str(LLAMAFACTORY / "kto_en_demo.json"),
        tokenizer,
        resolve_template("auto", tokenizer),
        format="sharegpt",
        columns=ColumnMapping(messages="messages", kto_tag="label"),
        tags=TagMapping(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant"),
        kind=KTO,
        only_mapped_columns=True,
    )
    rows = json.loads((LLAMAFACTORY / "kto_en_demo.json").read_text())
    assert report.invalid == 0 and report.train_examples == len(rows), report.to_dict()
    assert "KTO answer tagged" in preview and "[[" in preview
    # format auto finds the same layout and the boolean label column on its own.
    auto, _ = check_file(
        str(LLAMAFACTORY / "kto_en_demo.json"), tokenizer, resolve_template("auto", tokenizer), kind=KTO
    )
    assert auto.invalid == 0 and "KTO answers tagged by 'label', openai" in auto.datasets[0].detected
