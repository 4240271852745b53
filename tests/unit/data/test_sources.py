"""Reading rows: row numbers, undecodable rows, file-level errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.trainer.data.formats import RowError
from kubetune.trainer.data.sources import SourceError, SourceFile, list_data_files, read_rows


def rows_of(name: str, data: bytes) -> list[tuple[int, object]]:
    return [(r.row, r.value) for r in read_rows(SourceFile(f"/x/{name}", data))]


def test_jsonl_rows_are_line_numbers_and_bad_lines_cost_one_row() -> None:
    data = b'{"a": 1}\n\n{"a": \n[1, 2]\n{"a": "caf\xe9"}\n{"a": 5}\n'
    rows = rows_of("d.jsonl", data)
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6]
    assert rows[0][1] == {"a": 1} and rows[4][1] == {"a": 5}
    assert "not valid JSON" in str(rows[1][1])
    assert "expected a JSON object, got list" in str(rows[2][1])
    assert str(rows[3][1]) == "not valid UTF-8 (byte 0xe9 at offset 10)"


def test_json_array_with_a_non_utf8_row_reports_that_row_only() -> None:
    data = json.dumps([{"a": "ok"}, {"a": "XX"}, {"a": "fine"}]).encode().replace(b"XX", b"\xff\xfe")
    rows = rows_of("d.json", data)
    assert rows[0] == (1, {"a": "ok"}) and rows[2] == (3, {"a": "fine"})
    assert isinstance(rows[1][1], RowError) and "not valid UTF-8" in str(rows[1][1])


def test_json_file_holding_json_lines_is_read_as_jsonl() -> None:
    assert rows_of("d.json", b'{"a": 1}\n{"a": 2}\n') == [(1, {"a": 1}), (2, {"a": 2})]


def test_json_that_is_not_an_array_is_a_file_error() -> None:
    with pytest.raises(SourceError, match="must be an array of rows"):
        rows_of("d.json", b'{"data": []}')
    with pytest.raises(SourceError, match=r"not valid JSON: .* line 1"):
        rows_of("d.json", b"[{]")


def test_csv_rows_count_data_lines_and_flag_bad_ones() -> None:
    data = b'instruction,output\nq1,a1\n"q\xe92",a2\nq3,a3,extra\n'
    rows = rows_of("d.csv", data)
    assert rows[0] == (1, {"instruction": "q1", "output": "a1"})
    assert "not valid UTF-8" in str(rows[1][1])
    assert "has 3 fields, the header has 2" in str(rows[2][1])


def test_prefix_listing_skips_non_data_files_and_says_when_nothing_is_there(tmp_path: Path) -> None:
    (tmp_path / "b.parquet").write_bytes(b"")
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert list_data_files(str(tmp_path), None) == [f"{tmp_path}/a.csv", f"{tmp_path}/b.parquet"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(SourceError, match="no data files under"):
        list_data_files(str(tmp_path / "empty"), None)
    with pytest.raises(SourceError, match="not found"):
        list_data_files(str(tmp_path / "missing.jsonl"), None)


def test_an_empty_directory_has_no_data_files_rather_than_not_being_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for source in (str(tmp_path / "empty"), f"file://{tmp_path}/empty/"):
        with pytest.raises(SourceError, match=r"no data files under .*empty/? \(it is empty\)"):
            list_data_files(source, None)
    with pytest.raises(SourceError, match="not found"):
        list_data_files(str(tmp_path / "missing"), None)


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("d.jsonl", b'{"a": "x"}\n{"a": "caf\xe9"}\n{"a": "z"}\n'),
        ("d.json", b'[{"a": "x"}, {"a": "caf\xe9"}, {"a": "z"}]'),
        ("d.csv", b"a\nx\ncaf\xe9\nz\n"),
    ],
)
def test_a_byte_order_mark_is_not_part_of_row_1_and_bad_rows_keep_their_number(name: str, data: bytes) -> None:
    rows = rows_of(name, BOM + data)
    assert rows[0] == (1, {"a": "x"}) and rows[2] == (3, {"a": "z"})
    assert rows[1][0] == 2 and isinstance(rows[1][1], RowError) and "not valid UTF-8" in str(rows[1][1])


def test_a_byte_order_mark_is_stripped_from_a_json_lines_file_named_json() -> None:
    assert rows_of("d.json", BOM + b'{"a": 1}\n{"a": 2}\n') == [(1, {"a": 1}), (2, {"a": 2})]


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_a_key_twice_in_a_json_row_is_a_row_error_naming_the_key(name: str) -> None:
    rows_text = [
        '{"instruction": "q", "output": "a"}',
        '{"instruction": "q", "output": "first", "output": "second"}',
        '{"conversations": [{"from": "human", "from": "gpt", "value": "x"}]}',
        '{"instruction": "q2", "output": "a2"}',
    ]
    data = ("\n".join(rows_text) if name.endswith("jsonl") else "[" + ",\n".join(rows_text) + "]").encode()
    rows = rows_of(name, data)
    assert [n for n, _ in rows] == [1, 2, 3, 4]
    assert rows[0][1] == {"instruction": "q", "output": "a"} and rows[3][1] == {"instruction": "q2", "output": "a2"}
    assert str(rows[1][1]) == "key 'output' appears twice in one JSON object"
    assert str(rows[2][1]) == "key 'from' appears twice in one JSON object"


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_a_100k_deep_json_row_is_a_row_error_not_a_traceback(name: str) -> None:
    rows_text = ['{"a": 1}', '{"instruction": ' + DEEP + ', "output": "x"}', DEEP, '{"a": "[\\"{"}']
    data = ("\n".join(rows_text) if name.endswith("jsonl") else "[" + ", ".join(rows_text) + "]").encode()
    rows = rows_of(name, data)
    assert [n for n, _ in rows] == [1, 2, 3, 4]
    assert rows[0][1] == {"a": 1} and rows[3][1] == {"a": '["{'}
    assert isinstance(rows[1][1], RowError) and "nested too deeply" in str(rows[1][1])
    assert isinstance(rows[2][1], RowError) and "nested too deeply" in str(rows[2][1])
