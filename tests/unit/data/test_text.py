"""stage pt data: documents from a text column or .txt lines, EOS after each, cut into cutoffLen blocks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer.data import DataValidationError, check_file, prepare_data
from kubetune.trainer.data.kinds import PT
from kubetune.trainer.data.tokenize import IGNORE
from kubetune.trainer.templates import resolve_template
from tests.unit.data.helpers import make_spec

LLAMAFACTORY = Path(__file__).parent / "llamafactory"


def _pt(datasets: list[dict[str, Any]], **sections: Any) -> Any:
    return make_spec(datasets, stage="pt", **sections)


def test_documents_are_joined_with_eos_and_cut_into_blocks_without_a_template(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    docs = ["The cat sat on the mat.", "Dogs bark at night and sleep all day long.", "Birds sing."]
    path = write_jsonl("text.jsonl", [{"text": d} for d in docs])
    spec = _pt([{"source": str(path)}], training={"cutoffLen": 16})
    prepared = prepare_data(spec, tokenizer, cache_dir=tmp_path / "cache")
    eos = tokenizer.eos_token_id
    stream = [t for d in docs for t in [*tokenizer(d, add_special_tokens=False)["input_ids"], eos]]
    rows = prepared.train[:]
    assert [t for row in rows["input_ids"] for t in row] == stream
    assert all(len(row) == 16 for row in rows["input_ids"][:-1]) and 0 < len(rows["input_ids"][-1]) <= 16
    for ids, labels, positions in zip(rows["input_ids"], rows["labels"], rows["position_ids"], strict=True):
        assert labels == [IGNORE, *ids[1:]] and positions == list(range(len(ids)))
    assert prepared.report.total_tokens == len(stream) and prepared.report.train_examples == 3


def test_txt_files_and_llamafactory_text_demos_check_clean(tokenizer: Any, tmp_path: Path) -> None:
    # dataset_info.json: "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}}, and
    # "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}}
    for name in ("c4_demo.jsonl", "wiki_demo.txt"):
        path = LLAMAFACTORY / name
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for dataset in ({"source": str(path), "columns": {"prompt": "text"}}, {"source": str(path)}):
            prepared = prepare_data(_pt([dataset]), tokenizer, cache_dir=tmp_path / "cache")
            assert prepared.report.invalid == 0 and prepared.report.train_examples == len(lines)
            assert "plain text (column 'text')" in prepared.report.datasets[0].detected
    template = resolve_template("auto", tokenizer)
    report, preview = check_file(str(LLAMAFACTORY / "wiki_demo.txt"), tokenizer, template, kind=PT)
    assert report.invalid == 0 and "plain text, no template" in preview and "Anarchism is" in preview


def test_chat_data_under_stage_pt_is_refused_naming_the_field(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    chat = write_jsonl("chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 3)
    with pytest.raises(DataValidationError, match=r"this looks like chat data .*spec.stage pt trains on plain text"):
        prepare_data(_pt([{"source": str(chat)}]), tokenizer, cache_dir=tmp_path / "cache")
    other = write_jsonl("other.jsonl", [{"body": "some text"}] * 3)
    with pytest.raises(DataValidationError, match=r"no row has a .text. column; keys found: body"):
        prepare_data(_pt([{"source": str(other)}]), tokenizer, cache_dir=tmp_path / "cache")
    prepared = prepare_data(
        _pt([{"source": str(other), "columns": {"prompt": "body"}}]), tokenizer, cache_dir=tmp_path / "c"
    )
    assert prepared.report.train_examples == 3


def test_bad_text_rows_are_named_by_file_and_row(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("text.jsonl", [{"text": "fine"}, {"text": "  "}, {"text": 3}, {"text": "fine too"}])
    with pytest.raises(DataValidationError) as err:
        prepare_data(_pt([{"source": str(path)}]), tokenizer, cache_dir=tmp_path / "cache")
    assert f"{path} row 2: field 'text' is empty" in str(err.value)
    assert f"{path} row 3: field 'text' must be a string, got a number" in str(err.value)


def test_a_prefix_reads_txt_files_for_stage_pt_only(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    folder = tmp_path / "corpus"
    write_jsonl("corpus/a.jsonl", [{"text": "one"}, {"text": "two"}])
    (folder / "b.txt").write_text("three\n\nfour\n")
    prepared = prepare_data(_pt([{"source": f"{folder}/"}]), tokenizer, cache_dir=tmp_path / "cache")
    assert prepared.report.train_examples == 4
    assert [f["uri"] for f in prepared.report.datasets[0].files] == [f"{folder}/a.jsonl", f"{folder}/b.txt"]


def test_stage_pt_needs_no_chat_template_on_a_base_tokenizer(
    tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    import copy

    base = copy.deepcopy(tokenizer)
    base.chat_template = None  # a base model's tokenizer
    path = write_jsonl("text.jsonl", [{"text": "The cat sat on the mat."}])
    prepared = prepare_data(_pt([{"source": str(path)}]), base, cache_dir=tmp_path / "cache")  # template: auto
    assert prepared.report.train_examples == 1
