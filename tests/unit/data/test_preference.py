"""stage dpo data: preference pairs in LLaMA-Factory's and TRL's layouts, checked, templated and tokenized."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer.data import DataValidationError, check_file, prepare_data
from kubetune.trainer.data.kinds import DPO
from kubetune.trainer.data.preference import render_pair
from kubetune.trainer.templates import render, resolve_template
from tests.unit.data.helpers import make_spec

LLAMAFACTORY = Path(__file__).parent / "llamafactory"

SHAREGPT = {
    "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of France?"}],
    "chosen": {"from": "gpt", "value": "Paris."},
    "rejected": {"from": "gpt", "value": "I do not know."},
}
ALPACA = {"instruction": "Add", "input": "2 and 2", "chosen": "4", "rejected": "5"}
TRL_STRINGS = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}
TRL_MESSAGES = {
    "prompt": [{"role": "user", "content": "Say hi"}],
    "chosen": [{"role": "assistant", "content": "Hi!"}],
    "rejected": [{"role": "assistant", "content": "No."}],
}


def _dpo(datasets: list[dict[str, Any]], **sections: Any) -> Any:
    return make_spec(datasets, stage="dpo", **sections)


@pytest.mark.parametrize(
    ("row", "detected", "prompt"),
    [
        (
            SHAREGPT,
            "preference pairs, sharegpt (prompt turns under 'conversations' with from/value",
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
        ),
        (ALPACA, "preference pairs, alpaca (prompt in 'instruction'", [{"role": "user", "content": "Add\n2 and 2"}]),
        (TRL_STRINGS, "preference pairs, alpaca (prompt in 'prompt'", [{"role": "user", "content": "Say hi"}]),
        (
            TRL_MESSAGES,
            "preference pairs, openai (prompt turns under 'prompt' with role/content",
            [{"role": "user", "content": "Say hi"}],
        ),
    ],
    ids=["sharegpt", "alpaca", "trl-strings", "trl-messages"],
)
def test_each_pair_layout_is_detected_and_tokenized_as_sft_renders_the_prompt(
    tokenizer: Any,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    row: dict[str, Any],
    detected: str,
    prompt: list[dict[str, str]],
) -> None:
    path = write_jsonl("pairs.jsonl", [row, row])
    prepared = prepare_data(_dpo([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "cache")
    assert detected in prepared.report.datasets[0].detected
    assert set(prepared.train.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    example = prepared.train[0]
    template = prepared.template
    special = dict(tokenizer.special_tokens_map)
    head = render(template, prompt, special_tokens=special, add_generation_prompt=True)
    # The prompt is exactly what SFT renders before an answer; each answer ends with the end-of-turn token.
    assert tokenizer.decode(example["prompt_ids"]) == head
    chosen = tokenizer.decode(example["chosen_ids"])
    assert chosen.startswith(row["chosen"] if isinstance(row["chosen"], str) else str(_content(row["chosen"]))) and any(
        chosen.rstrip().endswith(stop) for stop in template.stop_tokens
    )
    full = render_pair(template, prompt, "a", "b", None, special)[1]
    assert tokenizer.decode(example["prompt_ids"]) + "a" == full[: len(head) + 1]
    assert prepared.report.trainable_tokens == 2 * (len(example["chosen_ids"]) + len(example["rejected_ids"]))


def _content(answer: Any) -> Any:
    answer = answer[0] if isinstance(answer, list) else answer
    return answer.get("value", answer.get("content"))


BAD_PAIRS = [
    ({**SHAREGPT, "rejected": {"from": "gpt", "value": "  "}}, "field 'rejected' is empty"),
    ({**SHAREGPT, "rejected": {"from": "gpt", "value": "Paris."}}, "'chosen' and 'rejected' are the same answer"),
    (
        {**SHAREGPT, "conversations": [*SHAREGPT["conversations"], {"from": "gpt", "value": "Hmm."}]},
        "the prompt ends with an assistant turn (turn 2)",
    ),
    ({k: v for k, v in SHAREGPT.items() if k != "rejected"}, "missing field 'rejected': spec.stage dpo needs"),
    ({**SHAREGPT, "chosen": {"from": "human", "value": "x"}}, "field 'chosen' is a 'human' turn"),
]


def test_bad_pairs_are_named_by_file_and_row_honouring_invalid_rows(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("pairs.jsonl", [SHAREGPT, *(row for row, _ in BAD_PAIRS)])
    dataset = {"source": str(path), "format": "sharegpt"}
    with pytest.raises(DataValidationError) as err:
        prepare_data(_dpo([dataset]), tokenizer, cache_dir=tmp_path / "cache")
    for row, (_, reason) in enumerate(BAD_PAIRS, start=2):
        assert f"{path} row {row}: {reason}" in str(err.value)
    prepared = prepare_data(_dpo([dataset], data={"invalidRows": "skip"}), tokenizer, cache_dir=tmp_path / "c2")
    assert len(prepared.train) == 1 and prepared.report.invalid == len(BAD_PAIRS)


def test_stage_and_data_must_match_naming_the_field(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    sft_rows = write_jsonl("sft.jsonl", [{"instruction": "a", "output": "b"}] * 3)
    with pytest.raises(DataValidationError, match=r"spec.stage is dpo, which trains on preference pairs, but no row"):
        prepare_data(_dpo([{"source": str(sft_rows)}]), tokenizer, cache_dir=tmp_path / "cache")
    pairs = write_jsonl("pairs.jsonl", [ALPACA] * 3)
    with pytest.raises(DataValidationError, match=r"this looks like preference data .*set spec.stage: dpo"):
        prepare_data(make_spec([{"source": str(pairs)}]), tokenizer, cache_dir=tmp_path / "cache")


def test_llamafactory_dpo_demo_checks_clean_with_its_dataset_info_mapping(tokenizer: Any, tmp_path: Path) -> None:
    # dataset_info.json: "dpo_en_demo": {"file_name": "dpo_en_demo.json", "formatting": "sharegpt", "ranking": true,
    # "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    path = LLAMAFACTORY / "dpo_en_demo.json"
    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    for dataset in ({"source": str(path), "format": "sharegpt", "columns": columns}, {"source": str(path)}):
        prepared = prepare_data(_dpo([dataset]), tokenizer, cache_dir=tmp_path / "cache")
        assert prepared.report.invalid == 0 and len(prepared.train) == prepared.report.rows_read > 0
    template = resolve_template("auto", tokenizer)
    report, preview = check_file(str(path), tokenizer, template, kind=DPO)
    assert report.invalid == 0 and "preference pair" in preview and "chosen:" in preview and "[[" in preview


def test_data_check_stage_dpo_previews_a_pair_with_what_trains(
    tiny_model_dir: Path, write_jsonl: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.cli import main

    path = write_jsonl("pairs.jsonl", [SHAREGPT, {**SHAREGPT, "rejected": SHAREGPT["chosen"]}])
    assert main(["data", "check", str(path), "--model", str(tiny_model_dir), "--stage", "dpo"]) == 1
    out = capsys.readouterr().out
    assert "row 2: 'chosen' and 'rejected' are the same answer" in out
    assert "chosen:\n" in out and "[[Paris." in out and "[[I do not know." in out
    # The same file checked as SFT data is refused as what it is.
    assert main(["data", "check", str(path), "--model", str(tiny_model_dir)]) == 2
    assert "set spec.stage: dpo" in capsys.readouterr().err
