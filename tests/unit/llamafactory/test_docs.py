"""docs/llamafactory.md's key table is the importer's table, so the two cannot drift."""

from __future__ import annotations

from pathlib import Path

from kubetune.llamafactory.keys import DOCS_BEGIN, KEYS, docs_with_table, markdown_table

DOC = Path(__file__).resolve().parents[3] / "docs" / "llamafactory.md"


def test_the_docs_key_table_is_generated_from_the_importers_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert docs_with_table(text) == text, "stale: run python scripts/sync-llamafactory-docs.py"
    assert text.count(DOCS_BEGIN) == 1


def test_the_table_has_a_row_per_key_and_a_changed_key_changes_it() -> None:
    table = markdown_table()
    assert len(table.splitlines()) == len(KEYS) + 2
    assert "| `lora_rank` | `spec.method.lora.rank` |" in table
    assert "Written as `8` when the config leaves it out" in table
    stale = DOC.read_text(encoding="utf-8").replace("| `lora_rank` |", "| `lora_r` |")
    assert docs_with_table(stale) != stale
