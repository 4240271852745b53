"""Plain text (stage pt): documents, concatenated with EOS and cut into cutoffLen blocks (LLaMA-Factory's pt).

A document is one row's text column (LLaMA-Factory `columns.prompt: text`; `text` when unset) of a
json/jsonl/parquet/csv file, or one line of a `.txt` file. No chat template: every token of every
document, and the EOS after it, carries loss. Blocks are the documents' tokens end to end, so a
document may continue in the next block and a block may hold several documents (which attend to
each other, as in LLaMA-Factory); the last, shorter block is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kubetune.trainer.data import formats as fm
from kubetune.trainer.data.formats import Mapping, RowError
from kubetune.trainer.data.tokenize import FAILED, IGNORE, OK
from kubetune.trainer.templates import ChatTemplate

# The text column when columns.prompt is unset (Mapping's own default is alpaca's instruction).
TEXT_COLUMN = "text"


@dataclass(frozen=True)
class Document:
    text: str

    def chars(self) -> int:
        return len(self.text)

    def messages(self) -> list[dict[str, str]]:
        """The document as a conversation (the export check's probe): its start asks, the rest answers."""
        cut = max(1, min(len(self.text) // 2, 200))
        return [{"role": "user", "content": self.text[:cut]}, {"role": "assistant", "content": self.text[cut:] or "."}]


def refuse(row: dict[str, Any]) -> str | None:
    """Why a row is chat or pair data rather than text."""
    other = fm.not_kind(row, "text")
    if other:
        return other.split(";")[0] + "; spec.stage pt trains on plain text"
    turns = [k for k in fm.MESSAGE_KEYS if isinstance(fm.maybe_json_list(row.get(k)), list)]
    if turns or ("instruction" in row and "output" in row):
        shape = f"turns under '{turns[0]}'" if turns else "instruction/output columns"
        return f"this looks like chat data ({shape}); spec.stage pt trains on plain text: use stage sft for it"
    return None


def detect_format(rows: list[dict[str, Any]], mapping: Mapping) -> tuple[str, Mapping, str]:
    column = _column(mapping)
    if not any(column in row for row in rows):
        keys = sorted({k for row in rows for k in row})[:12]
        raise RowError(
            f"spec.stage is pt, which trains on plain text, but no row has a '{column}' column; keys found: "
            f"{', '.join(keys) or 'none'}. Set columns.prompt to the text column."
        )
    return "text", replace(mapping, prompt=column), f"plain text (column '{column}')"


def _column(mapping: Mapping) -> str:
    return TEXT_COLUMN if mapping.prompt == Mapping.prompt else mapping.prompt


def to_document(row: Any, fmt: str, mapping: Mapping) -> Document:
    del fmt  # text is text, whatever the file's declared layout
    if not isinstance(row, dict):
        raise RowError(f"expected an object with named fields, got {type(row).__name__}")
    other = refuse(row)
    if other:
        raise RowError(other)
    column = _column(mapping)
    value = row.get(column)
    if value is None:
        raise RowError(f"missing field '{column}' (fields present: {', '.join(sorted(row)[:10])})")
    if not isinstance(value, str):
        raise RowError(f"field '{column}' must be a string, got {fm.type_name(value)}")
    if not value.strip():
        raise RowError(f"field '{column}' is empty")
    return Document(value)


def encode_texts(
    batch: dict[str, list[Any]], *, tokenizer: Any, template: ChatTemplate, cutoff_len: int, train_on: str
) -> dict[str, list[Any]]:
    """Each document's tokens and EOS, all trained; blocks are cut later (`blocks`)."""
    del template, cutoff_len, train_on  # no template, no mask; blocks span documents
    eos = tokenizer.eos_token_id
    out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "n_full", "trainable", "status", "error")}
    if eos is None:
        for _ in batch["text"]:
            _append(out, [], FAILED, "the tokenizer has no EOS token to end documents with")
        return out
    for enc in tokenizer.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False):
        _append(out, [*enc.ids, eos], OK, "")
    return out


def _append(out: dict[str, list[Any]], ids: list[int], status: int, error: str) -> None:
    out["input_ids"].append(ids)
    out["labels"].append(ids)
    out["n_full"].append(len(ids))
    out["trainable"].append(len(ids))
    out["status"].append(status)
    out["error"].append(error)


def blocks(table: Any, cutoff_len: int) -> Any:
    """The documents end to end, cut into rows of cutoffLen tokens, with position_ids 0..n-1 per row.

    Each row's first token carries no loss (nothing before it in the row to predict it from).
    """
    import pyarrow as pa

    from kubetune.trainer.data.packing import list_array

    ids = np.asarray(list_array(table.column("input_ids")).flatten().to_numpy(zero_copy_only=False), dtype=np.int32)
    offsets = np.arange(0, len(ids), cutoff_len, dtype=np.int64)
    offsets = np.append(offsets, len(ids)).astype(np.int32)
    labels = ids.copy()
    labels[offsets[:-1]] = IGNORE
    lengths = np.diff(offsets)
    positions = np.arange(len(ids), dtype=np.int32) - np.repeat(offsets[:-1], lengths)
    arr = pa.array(offsets)
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(arr, pa.array(ids)),
            "labels": pa.ListArray.from_arrays(arr, pa.array(labels)),
            "position_ids": pa.ListArray.from_arrays(arr, pa.array(positions.astype(np.int32))),
        }
    )


def render_preview(tokenizer: Any, document: Document, encoded: dict[str, Any], origin: tuple[str, int]) -> str:
    ids = encoded["input_ids"]
    return "\n".join(
        [
            f"Preview: {origin[0]} row {origin[1]} (plain text, no template: {len(ids)} tokens with the EOS, "
            "all trained; documents are joined and cut into cutoffLen blocks)",
            tokenizer.decode(ids),
        ]
    )
