"""What rows each training stage reads, and how they become token columns: one entry per stage.

The pipeline (read -> check -> tokenize -> account -> hold out) is the same for every stage; only
these steps differ. `sft` reads conversations and yields input_ids/labels (packable); `dpo` reads
preference pairs and yields prompt_ids/chosen_ids/rejected_ids, which are never packed; `kto` reads
tagged answers and yields prompt_ids/completion_ids/label, never packed either; `pt` reads
plain text and yields input_ids/labels cut into cutoffLen blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.api.locations import DATA_SUFFIXES
from kubetune.trainer.data import formats as fm
from kubetune.trainer.data import preference as pref
from kubetune.trainer.data import text as tx
from kubetune.trainer.data import tokenize as tk
from kubetune.trainer.data.sources import TEXT_SUFFIX


@dataclass(frozen=True)
class Kind:
    stage: str
    noun: str  # what one example is, for the log
    # Why a row is another stage's data (None if it may be this stage's).
    refuse: Callable[[dict[str, Any]], str | None]
    # (format, mapping, description) from sample rows, for format: auto.
    detect: Callable[[list[dict[str, Any]], fm.Mapping], tuple[str, fm.Mapping, str]]
    convert: Callable[[Any, str, fm.Mapping], Any]
    chars: Callable[[Any], int]
    columns: Callable[[list[Any]], Any]  # examples -> pyarrow table, the input of `encode`
    encode: Callable[..., dict[str, list[Any]]]
    token_columns: tuple[str, ...]  # the columns the trainer reads; "trainable" counts tokens with loss
    packs: bool  # best-fit packing of whole examples when training.packing asks for it
    messages: Callable[[Any], list[dict[str, str]]]  # one example as a conversation (the export probe)
    # (tokenizer, template, example, its encoded token columns, origin, trainOn) -> `kubetune data check` preview
    preview: Callable[..., str]
    # (table, cutoffLen) -> the rows the trainer reads, when they are not the examples themselves
    finish: Callable[[Any, int], Any] | None = None
    suffixes: tuple[str, ...] = DATA_SUFFIXES  # the files under a prefix that are data


def _conversation_columns(convs: list[fm.Conversation]) -> Any:
    import pyarrow as pa

    # Built by pyarrow directly: datasets' from_dict encodes every nested message in Python, which took a
    # tenth of the whole preparation, all of it in the main process.
    return pa.table(
        {
            "messages": pa.array([c.messages for c in convs], type=pa.list_(_message_type())),
            "tools": pa.array([c.tools for c in convs], type=pa.string()),
        }
    )


def _pair_columns(pairs: list[pref.Pair]) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "prompt": pa.array([p.prompt for p in pairs], type=pa.list_(_message_type())),
            "chosen": pa.array([p.chosen for p in pairs], type=pa.string()),
            "rejected": pa.array([p.rejected for p in pairs], type=pa.string()),
            "tools": pa.array([p.tools for p in pairs], type=pa.string()),
        }
    )


def _message_type() -> Any:
    import pyarrow as pa

    return pa.struct([("role", pa.string()), ("content", pa.string())])


def _conversation_chars(conv: fm.Conversation) -> int:
    return sum(len(m["content"]) for m in conv.messages) + len(conv.tools or "")


SFT = Kind(
    stage="sft",
    noun="conversations",
    refuse=fm.not_sft,
    detect=fm.detect_format,
    convert=fm.to_conversation,
    chars=_conversation_chars,
    columns=_conversation_columns,
    encode=tk.encode_batch,
    token_columns=("input_ids", "labels"),
    packs=True,
    messages=lambda conv: fm.chat_messages(conv.messages),  # as chat templates read them (tool calls)
    preview=lambda tok, template, conv, encoded, origin, train_on: tk.render_preview(
        tok, template, conv, encoded["labels"], origin, train_on
    ),
)

DPO = Kind(
    stage="dpo",
    noun="preference pairs",
    refuse=lambda row: fm.not_kind(row, "pair"),
    detect=pref.detect_format,
    convert=pref.to_pair,
    chars=pref.Pair.chars,
    columns=_pair_columns,
    encode=pref.encode_pairs,
    token_columns=("prompt_ids", "chosen_ids", "rejected_ids"),
    packs=False,
    messages=pref.Pair.messages,
    preview=lambda tok, template, pair, encoded, origin, train_on: pref.render_preview(
        tok, template, pair, origin, encoded
    ),
)

KTO = Kind(
    stage="kto",
    noun="tagged answers",
    refuse=lambda row: fm.not_kind(row, "kto"),
    detect=pref.detect_tagged,
    convert=pref.to_tagged,
    chars=pref.Tagged.chars,
    columns=pref.tagged_columns,
    encode=pref.encode_tagged,
    token_columns=("prompt_ids", "completion_ids", "label"),
    packs=False,
    messages=pref.Tagged.messages,
    preview=lambda tok, template, example, encoded, origin, train_on: pref.render_tagged_preview(
        tok, template, example, origin, encoded
    ),
    finish=pref.tagged_rows,
)

PT = Kind(
    stage="pt",
    noun="documents",
    refuse=tx.refuse,
    detect=tx.detect_format,
    convert=tx.to_document,
    chars=tx.Document.chars,
    columns=lambda docs: _text_columns(docs),
    encode=tx.encode_texts,
    token_columns=("input_ids", "labels"),
    packs=False,
    messages=tx.Document.messages,
    preview=lambda tok, template, doc, encoded, origin, train_on: tx.render_preview(tok, doc, encoded, origin),
    finish=tx.blocks,
    suffixes=(*DATA_SUFFIXES, TEXT_SUFFIX),
)


def _text_columns(docs: list[tx.Document]) -> Any:
    import pyarrow as pa

    return pa.table({"text": pa.array([d.text for d in docs], type=pa.string())})


KINDS = {k.stage: k for k in (SFT, DPO, KTO, PT)}


def kind_of(spec: Any) -> Kind:
    return KINDS[str(getattr(spec, "stage", "sft"))]


def template_name(name: str, kind: Kind, tokenizer: Any) -> str:
    """Pre-training renders no chat template: `auto` on a base model's tokenizer (it has none) is
    `empty` there rather than an error."""
    if kind is PT and name == "auto" and not getattr(tokenizer, "chat_template", None):
        return "empty"
    return name
