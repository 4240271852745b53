"""prepare_data / check_file end to end on local files: file types, planted bad rows, mixing, report, cache."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.v1alpha1 import DataReportSummary
from kubetune.trainer.data import DataValidationError, check_file, prepare_data
from kubetune.trainer.data.tokenize import IGNORE
from kubetune.trainer.templates import resolve_template
from tests.unit.data.helpers import make_spec

ALPACA = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Add", "input": "2 + 3", "output": "5"},
    {"instruction": "Who are you?", "output": "I am Kubi."},
]


def decoded(tokenizer: Any, ds: Any) -> list[str]:
    return [tokenizer.decode(row) for row in ds["input_ids"]]


def planted(write_jsonl: Callable[..., Path]) -> Path:
    """10 lines; lines 3, 5, 7 and 9 are bad, each in a different way."""
    path = write_jsonl("bad.jsonl", [ALPACA[i % 3] for i in range(10)])
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"instruction": "broken",'
    lines[4] = b'{"instruction": "caf\xe9", "output": "latin-1, not UTF-8"}'
    lines[6] = b'{"instruction": "no answer"}'
    lines[8] = b'{"instruction": "number", "output": 42}'
    path.write_bytes(b"\n".join(lines))
    return path


def test_invalid_rows_fail_the_job_naming_file_row_and_reason(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = planted(write_jsonl)
    spec = make_spec([{"source": str(path)}])
    with pytest.raises(DataValidationError) as err:
        prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert message.startswith("4 invalid rows in the training data:")
    for row, reason in [
        (3, "not valid JSON"),
        (5, "not valid UTF-8"),
        (7, "missing field 'output'"),
        (9, "field 'output' must be a string, got a number"),
    ]:
        assert f"{path} row {row}: {reason}" in message
    assert "invalidRows: skip" in message


def test_skip_policy_trains_without_them_and_reports_exact_rows(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = planted(write_jsonl)
    spec = make_spec([{"source": str(path)}], data={"invalidRows": "skip"})
    prepared = prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    report = prepared.report.to_dict()
    assert [(r["row"], r["file"]) for r in report["invalid"]["rows"]] == [(n, str(path)) for n in (3, 5, 7, 9)]
    assert report["summary"]["rowsRead"] == 10 and report["summary"]["invalid"] == 4
    assert report["summary"]["dropped"] == 4 and len(prepared.train) == 6
    assert report["datasets"][0]["detectedFormat"].startswith("alpaca")
    assert set(report["summary"]) <= {f.alias for f in DataReportSummary.model_fields.values()}
    DataReportSummary.model_validate(report["summary"])
    assert report["summary"]["trainableTokens"] == sum(
        sum(1 for lab in row if lab != IGNORE) for row in prepared.train["labels"]
    )


def test_more_invalid_rows_than_shown_are_counted(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("many.jsonl", [{"instruction": "q"}] * 25 + ALPACA)
    with pytest.raises(DataValidationError, match=r"25 invalid rows(.|\n)*and 15 more"):
        prepare_data(make_spec([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "cache")


def test_json_jsonl_parquet_and_csv_give_the_same_examples(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_jsonl("d.jsonl", ALPACA)
    (tmp_path / "d.json").write_text(json.dumps(ALPACA))
    pq.write_table(pa.Table.from_pylist([{**r, "input": r.get("input", "")} for r in ALPACA]), tmp_path / "d.parquet")
    csv_lines = ["instruction,input,output"] + [
        f'"{r["instruction"]}","{r.get("input", "")}","{r["output"]}"' for r in ALPACA
    ]
    (tmp_path / "d.csv").write_text("\n".join(csv_lines) + "\n")
    results = []
    for path in (jsonl, tmp_path / "d.json", tmp_path / "d.parquet", tmp_path / "d.csv"):
        spec = make_spec([{"source": str(path)}])
        results.append(prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache").train["input_ids"])
    assert results[0] == results[1] == results[2] == results[3] and len(results[0]) == 3


def test_prefix_reads_every_data_file_in_name_order(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    write_jsonl("data/b.jsonl", [ALPACA[1]])
    write_jsonl("data/a.jsonl", [ALPACA[0]])
    (tmp_path / "data" / "dataset_info.json").write_text("{}")
    (tmp_path / "data" / "README.md").write_text("not data")
    prepared = prepare_data(make_spec([{"source": f"file://{tmp_path}/data/"}]), tokenizer, cache_dir=tmp_path / "c")
    files = [f["uri"] for f in prepared.report.to_dict()["datasets"][0]["files"]]
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.jsonl", "b.jsonl"]
    texts = decoded(tokenizer, prepared.train)
    assert "Paris" in texts[0] and "2 + 3" in texts[1]


def test_mixing_with_max_samples_concat_and_interleave(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    a = write_jsonl("a.jsonl", [{"instruction": f"A{i}", "output": f"a{i}"} for i in range(3)])
    b = write_jsonl(
        "b.jsonl",
        [{"conversations": [{"from": "human", "value": f"B{i}"}, {"from": "gpt", "value": "b"}]} for i in range(2)],
    )
    datasets = [{"source": str(a), "maxSamples": 2}, {"source": str(b)}]
    order = {}
    for mix in ("concat", "interleave"):
        spec = make_spec(datasets, data={"mix": mix})
        texts = decoded(tokenizer, prepare_data(spec, tokenizer, cache_dir=tmp_path / "c").train)
        order[mix] = [next(tag for tag in ("A0", "A1", "A2", "B0", "B1") if f"\n{tag}<" in t) for t in texts]
    assert order["concat"] == ["A0", "A1", "B0", "B1"]
    assert order["interleave"] == ["A0", "B0", "A1", "B1"]


def test_validation_split_and_validation_datasets(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    train = write_jsonl("t.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(10)])
    val = write_jsonl("v.jsonl", ALPACA[:1])
    spec = make_spec([{"source": str(train)}], data={"validationSplit": 0.2})
    prepared = prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")
    assert (len(prepared.train), len(prepared.eval)) == (8, 2)
    spec = make_spec([{"source": str(train)}, {"source": str(val), "split": "validation"}])
    prepared = prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")
    assert (len(prepared.train), len(prepared.eval)) == (10, 1)
    assert prepared.report.summary()["rowsRead"] == 11


def test_packing_restarts_positions_and_keeps_every_trainable_token(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [{"instruction": f"Question {i}" * (1 + i % 4), "output": "Answer"} for i in range(40)]
    path = write_jsonl("d.jsonl", rows)
    plain = prepare_data(
        make_spec([{"source": str(path)}], training={"cutoffLen": 128}), tokenizer, cache_dir=tmp_path / "c"
    )
    packed = prepare_data(
        make_spec([{"source": str(path)}], training={"cutoffLen": 128, "packing": True}),
        tokenizer,
        cache_dir=tmp_path / "c",
    )
    assert len(packed.train) < len(plain.train) == 40
    for row in packed.train:
        assert len(row["input_ids"]) <= 128
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0 and len(starts) >= 1
        assert all(row["labels"][s] == IGNORE for s in starts), "no loss across an example boundary"
    for row in plain.train:
        assert row["position_ids"] == list(range(len(row["input_ids"])))
    count = lambda ds: sum(sum(1 for lab in r if lab != IGNORE) for r in ds["labels"])  # noqa: E731
    assert count(packed.train) == count(plain.train)
    stats = packed.report.packing
    assert stats["packed"]["rows"] == len(packed.train)
    assert stats["packed"]["padToCutoff"] < stats["unpacked"]["padToCutoff"]


def test_the_cache_is_reused_and_keyed_by_the_options(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl("d.jsonl", ALPACA)
    spec = make_spec([{"source": str(path)}])
    first = prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")
    entry = tmp_path / "c" / f"data-{first.report.cache_key}"
    assert (entry / "_COMPLETE").is_file() and (entry / "report.json").is_file()
    with caplog.at_level(logging.INFO, logger="kubetune.data"):
        again = prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")
    assert "reusing tokenized data" in caplog.text
    assert again.train["input_ids"] == first.train["input_ids"]
    assert again.report.to_dict() == first.report.to_dict()
    other = prepare_data(
        make_spec([{"source": str(path)}], training={"cutoffLen": 64}), tokenizer, cache_dir=tmp_path / "c"
    )
    assert other.report.cache_key != first.report.cache_key
    path.write_text(path.read_text() + json.dumps(ALPACA[0]) + "\n")
    changed = prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")
    assert changed.report.cache_key != first.report.cache_key and len(changed.train) == 4


def test_other_ranks_fail_fast_with_rank_0s_message_or_time_out_clearly(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = make_spec([{"source": str(write_jsonl("bad.jsonl", [{"instruction": "q"}]))}])
    with pytest.raises(DataValidationError) as rank0:
        prepare_data(bad, tokenizer, cache_dir=tmp_path / "c", rank=0, world_size=2)
    with pytest.raises(DataValidationError) as rank1:
        prepare_data(bad, tokenizer, cache_dir=tmp_path / "c", rank=1, world_size=2)
    assert str(rank1.value) == str(rank0.value)

    monkeypatch.setenv("KUBETUNE_DATA_WAIT_SECONDS", "0.3")
    good = make_spec([{"source": str(write_jsonl("good.jsonl", ALPACA))}])
    with pytest.raises(TimeoutError, match="rank 1 waited 0s for the tokenized data"):
        prepare_data(good, tokenizer, cache_dir=tmp_path / "c", rank=1, world_size=2)


def test_no_example_left_is_an_error(tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    path = write_jsonl("long.jsonl", [{"instruction": "Explain step by step. " * 50, "output": "ok"}])
    spec = make_spec([{"source": str(path)}], training={"cutoffLen": 16})
    with pytest.raises(DataValidationError, match="1 without a trainable token within cutoffLen 16"):
        prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")


def test_check_file_reports_and_previews_the_label_mask(tokenizer: Any, write_jsonl: Callable[..., Path]) -> None:
    path = write_jsonl("d.jsonl", [{"instruction": "q"}, *ALPACA])
    report, preview = check_file(str(path), tokenizer, resolve_template("auto", tokenizer), cutoff_len=64)
    assert report.invalid == 1 and report.invalid_rows[0].row == 1
    assert report.train_examples == 3
    assert f"Preview: {path} row 2" in preview
    assert "[[Paris.<|im_end|>\n]]" in preview


def test_data_check_command_exit_codes(
    tiny_model_dir: Path,
    tiny_base_model_dir: Path,
    write_jsonl: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kubetune.cli import main

    good = write_jsonl("good.jsonl", ALPACA)
    assert main(["data", "check", str(good), "--model", str(tiny_model_dir), "--no-preview"]) == 0
    assert "rows read 3, invalid 0" in capsys.readouterr().out
    with caplog.at_level(logging.INFO, logger="kubetune.data"):
        workers = ["--preprocessing-workers", "2", "--no-preview"]
        assert main(["data", "check", str(good), "--model", str(tiny_model_dir), *workers]) == 0
    assert "rows read 3, invalid 0" in capsys.readouterr().out
    assert "tokenizing 3 conversations (2 processes)" in caplog.text
    # a base model has no chat template: auto cannot work, and the message says what to pick
    assert main(["data", "check", str(good), "--model", str(tiny_base_model_dir)]) == 2
    assert "default or alpaca" in capsys.readouterr().err
    renamed = write_jsonl("renamed.jsonl", [{"question": "Q?", "answer": "A."}])
    args = [
        "data",
        "check",
        str(renamed),
        "--model",
        str(tiny_base_model_dir),
        "--template",
        "default",
        "--column",
        "prompt=question",
        "--column",
        "response=answer",
    ]
    assert main(args) == 0
    # LLaMA-Factory's `default` template: eos after each turn, the answer right after "Assistant:"
    assert "Human: Q?<|endoftext|>\nAssistant:[[A.<|endoftext|>\n]]" in capsys.readouterr().out


def test_first_conversation_is_the_first_valid_training_row(write_jsonl: Callable[..., Path]) -> None:
    from kubetune.trainer.data import first_conversation

    val = write_jsonl("v.jsonl", [{"instruction": "validation", "output": "v"}])
    train = write_jsonl("t.jsonl", [{"instruction": "broken"}, *ALPACA])
    spec = make_spec([{"source": str(val), "split": "validation"}, {"source": str(train)}])
    assert first_conversation(spec) == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]


def test_auto_detects_the_format_of_each_file_of_a_prefix(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alpaca = write_jsonl("mixed/a.jsonl", ALPACA)
    sharegpt = write_jsonl(
        "mixed/b.jsonl",
        [{"conversations": [{"from": "human", "value": f"B{i}"}, {"from": "gpt", "value": "b"}]} for i in range(2)],
    )
    source = str(tmp_path / "mixed") + "/"
    with caplog.at_level(logging.INFO, logger="kubetune.data"):
        prepared = prepare_data(make_spec([{"source": source}]), tokenizer, cache_dir=tmp_path / "c")
    report = prepared.report.to_dict()
    assert report["summary"]["invalid"] == 0 and len(prepared.train) == 5
    assert report["summary"]["formats"] == ["alpaca+sharegpt"]
    files = {f["uri"]: f["detectedFormat"] for f in report["datasets"][0]["files"]}
    assert files[str(alpaca)].startswith("alpaca") and files[str(sharegpt)].startswith("sharegpt")
    assert f"{alpaca}: detected format alpaca" in caplog.text
    assert f"{sharegpt}: detected format sharegpt" in caplog.text
    DataReportSummary.model_validate(report["summary"])

    # an explicit format applies to every file, as asked
    explicit = make_spec([{"source": source, "format": "alpaca"}], data={"invalidRows": "skip"})
    report = prepare_data(explicit, tokenizer, cache_dir=tmp_path / "c").report.to_dict()
    assert report["summary"]["invalid"] == 2 and report["summary"]["formats"] == ["alpaca"]
    assert {r["file"] for r in report["invalid"]["rows"]} == {str(sharegpt)}


def test_the_data_check_command_reads_a_prefix_of_mixed_formats(
    tiny_model_dir: Path, write_jsonl: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.cli import main

    write_jsonl("mixed/a.jsonl", ALPACA)
    (tmp_path / "mixed" / "b.json").write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(
            [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]
        ).encode()
    )
    assert main(["data", "check", str(tmp_path / "mixed"), "--model", str(tiny_model_dir), "--no-preview"]) == 0
    out = capsys.readouterr().out
    assert "rows read 4, invalid 0" in out
    assert f"{tmp_path}/mixed/b.json: sharegpt" in out


def test_a_deep_or_duplicate_key_row_is_an_invalid_row_honouring_invalid_rows(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = write_jsonl(
        "hostile.jsonl",
        [
            ALPACA[0],
            '{"instruction": ' + deep + ', "output": "x"}',
            '{"instruction": "q", "output": "a", "output": "b"}',
        ],
    )
    with pytest.raises(DataValidationError) as err:
        prepare_data(make_spec([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "cache")
    assert f"{path} row 2: nested too deeply" in str(err.value)
    assert f"{path} row 3: key 'output' appears twice in one JSON object" in str(err.value)
    spec = make_spec([{"source": str(path)}], data={"invalidRows": "skip"})
    prepared = prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    assert len(prepared.train) == 1 and prepared.report.invalid == 2


LLAMAFACTORY = Path(__file__).parent / "llamafactory"
# LLaMA-Factory's own dataset_info.json entries for its demo files (format and mappings as a user would copy them).
LF_SHAREGPT_ROLES = {
    "format": "sharegpt",
    "tags": {"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant"},
}


TEXT_ONLY = "kubetune trains text only"


@pytest.mark.parametrize(
    ("name", "options", "kind", "advice"),
    [
        (
            "kto_en_demo.json",
            LF_SHAREGPT_ROLES,
            "KTO data (a true/false 'label' column",
            "set spec.stage: kto to train on it",
        ),
        (
            "dpo_en_demo.json",
            {"format": "sharegpt"},
            "preference data ('chosen' and 'rejected' columns",
            "set spec.stage: dpo to train on it",
        ),
        ("mllm_demo.json", LF_SHAREGPT_ROLES, "multimodal data ('images' with the turns)", TEXT_ONLY),
        ("mllm_video_demo.json", {}, "multimodal data ('videos' with the turns)", TEXT_ONLY),
        ("mllm_audio_demo.json", {}, "multimodal data ('audios' with the turns)", TEXT_ONLY),
    ],
)
@pytest.mark.parametrize("as_configured", [True, False], ids=["llamafactory-mapping", "auto"])
def test_llamafactory_kto_preference_and_multimodal_data_are_refused_as_what_they_are(
    tokenizer: Any, tmp_path: Path, name: str, options: dict[str, Any], kind: str, advice: str, as_configured: bool
) -> None:
    path = LLAMAFACTORY / name
    dataset = {"source": str(path), **(options if as_configured else {})}
    expected = f"{path}: this looks like {kind}"
    for policy in ("fail", "skip"):
        spec = make_spec([dataset], data={"invalidRows": policy})
        with pytest.raises(DataValidationError) as err:
            prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
        assert expected in str(err.value) and advice in str(err.value)
    with pytest.raises(DataValidationError, match=advice):
        check_file(str(path), tokenizer, resolve_template("auto", tokenizer))


def test_a_stray_multimodal_row_in_text_data_is_an_invalid_row(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("mostly_text.jsonl", [*ALPACA, {**ALPACA[0], "images": ["cat.png"]}])
    report, _ = check_file(str(path), tokenizer, resolve_template("auto", tokenizer))
    assert [(r.row, r.reason) for r in report.invalid_rows] == [
        (4, "this looks like multimodal data ('images' with the turns); kubetune trains text only")
    ]


def test_a_row_over_max_row_characters_is_refused_before_tokenizing_honouring_invalid_rows(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    from kubetune.trainer.data.pipeline import max_row_characters

    assert max_row_characters(None, 2048) == 262_144 and max_row_characters(None, 8192) == 524_288
    assert max_row_characters(1000, 8192) == 1000
    path = write_jsonl("long.jsonl", [ALPACA[0], {"instruction": "x" * 990, "output": "long", "system": "s" * 10}])
    spec = make_spec([{"source": str(path)}], data={"maxRowCharacters": 1000})
    with pytest.raises(DataValidationError) as err:
        prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    assert f"{path} row 2: 1,004 characters of turns and tools, more than data.maxRowCharacters (1,000" in str(
        err.value
    )
    spec = make_spec([{"source": str(path)}], data={"maxRowCharacters": 1000, "invalidRows": "skip"})
    report = prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache").report
    assert (report.invalid, report.train_examples, report.truncated, report.dropped_too_long) == (1, 1, 0, 0)
    assert report.options["maxRowCharacters"] == 1000
    report, _ = check_file(str(path), tokenizer, resolve_template("auto", tokenizer), max_row_chars=1004)
    assert report.invalid == 0 and report.train_examples == 2


def test_preprocessing_workers_tokenize_the_same_examples_under_the_same_cache_key(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl("d.jsonl", ALPACA)
    one = prepare_data(make_spec([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "one")
    spec = make_spec([{"source": str(path)}], data={"preprocessingWorkers": 2})
    with caplog.at_level(logging.INFO, logger="kubetune.data"):
        two = prepare_data(spec, tokenizer, cache_dir=tmp_path / "two")
    assert "tokenizing 3 conversations (2 processes)" in caplog.text
    assert two.train["input_ids"] == one.train["input_ids"]
    assert two.report.cache_key == one.report.cache_key  # the worker count does not change the data


def test_only_mapped_columns_reaches_the_data_layer(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("d.jsonl", [{**row, "system": "SECRET SYSTEM"} for row in ALPACA])
    mapping = {"prompt": "instruction", "query": "input", "response": "output"}
    read = prepare_data(make_spec([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "c")
    spec = make_spec([{"source": str(path), "columns": mapping, "onlyMappedColumns": True}])
    ignored = prepare_data(spec, tokenizer, cache_dir=tmp_path / "c")
    assert all("SECRET SYSTEM" in text for text in decoded(tokenizer, read.train))
    assert not any("SECRET SYSTEM" in text for text in decoded(tokenizer, ignored.train))


def test_data_check_reads_only_mapped_columns_when_asked(
    tiny_model_dir: Path, write_jsonl: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """As a job imported from LLaMA-Factory (onlyMappedColumns) reads it: an unmapped tools column is not read."""
    from kubetune.cli import main

    rows = [{"instruction": "Q?", "output": "A.", "tools": '[{"name": "lookup"'}]
    path = write_jsonl("tools.jsonl", rows)
    command = ["data", "check", str(path), "--model", str(tiny_model_dir), "--template", "qwen", "--no-preview"]
    main(command)
    assert "rows read 1, invalid 1" in capsys.readouterr().out  # the tools column is read: not JSON
    assert main([*command, "--only-mapped-columns"]) == 0
    assert "rows read 1, invalid 0" in capsys.readouterr().out
