"""Template -> tokens -> labels, batched (runs inside `datasets.Dataset.map(batched=True, num_proc=...)`).

Masking works for any prefix-consistent chat template, named or the tokenizer's own: for assistant
turn i, the text of turns [0, i) rendered with the generation prompt ends where the answer starts,
and the text of turns [0, i] ends where the turn ends, end-of-turn token included. The whole
conversation is tokenized once (as serving will tokenize it) and a token carries loss when its
first character lies inside an assistant span.

The first token of every example never carries loss: nothing precedes it, and in a packed row the
model's shifted loss would otherwise predict it from the previous example's last token.

An `efficient_eos` template (LLaMA-Factory's glm4, gemma2) has no eos in its text: as LLaMA-Factory
does, the token after each trained answer (the next turn's first) is labelled eos, and an eos is
appended after the last answer, labelled too. Truncation keeps whole answers with their eos label.

`render_preview` shows one example so encoded, with its label mask, for `kubetune data check`.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune.trainer.data.formats import Conversation, chat_messages
from kubetune.trainer.templates import ChatTemplate, render

IGNORE = -100

# Status codes of an encoded example.
OK, TRUNCATED, DROPPED, FAILED = 0, 1, 2, 3


class TemplateMismatch(ValueError):
    """The template renders turns differently depending on what follows them (no stable spans)."""


def assistant_spans(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    special_tokens: dict[str, str],
    train_on: str,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss: the assistant messages',
    tool calls included (LLaMA-Factory trains a function turn like an answer; a tool result is prompt)."""
    full = render(template, messages, special_tokens=special_tokens, tools=tools)
    if train_on == "all":
        return full, [(0, len(full))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "lastTurn":
        turns = turns[-1:]
    spans = []
    for i in turns:
        prompt = render(template, messages[:i], special_tokens=special_tokens, tools=tools, add_generation_prompt=True)
        upto = (
            full
            if i == len(messages) - 1
            else render(template, messages[: i + 1], special_tokens=special_tokens, tools=tools)
        )
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise TemplateMismatch(
                f"template '{template.name}' renders assistant turn {i + 1} differently once later turns follow; "
                "use trainOn: lastTurn or a named template"
            )
        spans.append((len(prompt), len(upto)))
    return full, spans


def encode_batch(
    batch: dict[str, list[Any]],
    *,
    tokenizer: Any,
    template: ChatTemplate,
    cutoff_len: int,
    train_on: str,
) -> dict[str, list[Any]]:
    special = dict(tokenizer.special_tokens_map)
    texts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    errors: list[str] = []
    for messages, tools in zip(batch["messages"], batch["tools"], strict=True):
        try:
            chat = chat_messages(messages)
            text, span = assistant_spans(template, chat, json.loads(tools) if tools else None, special, train_on)
            errors.append("")
        except Exception as exc:  # a template's raise_exception() or a mismatch: this row only
            text, span = "", []
            errors.append(f"chat template failed: {exc}")
        texts.append(text)
        spans.append(span)
    # The Rust tokenizer directly: transformers' wrapper would convert every offset to Python, and only the
    # span boundaries are needed (Encoding.char_to_token).
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "n_full", "trainable", "status", "error")}
    for enc, text, span, error in zip(encodings, texts, spans, errors, strict=True):
        if error:
            _append(out, [], [], 0, FAILED, error)
            continue
        _encode_one(out, enc, len(text), span, cutoff_len, train_on, _efficient_eos(template, tokenizer))
    return out


def _efficient_eos(template: ChatTemplate, tokenizer: Any) -> int | None:
    """The eos id an efficient_eos template labels with; None for the others."""
    return int(tokenizer.eos_token_id) if template.efficient_eos else None


def _append(out: dict[str, list[Any]], ids: list[int], labels: list[int], n_full: int, status: int, error: str) -> None:
    out["input_ids"].append(ids)
    out["labels"].append(labels)
    out["n_full"].append(n_full)
    out["trainable"].append(len(labels) - labels.count(IGNORE))
    out["status"].append(status)
    out["error"].append(error)


def _first_token_from(enc: Any, char: int, text_len: int, n_tokens: int) -> int:
    """Index of the first token that starts at or after `char` (a token straddling `char` is before it)."""
    if char >= text_len or not n_tokens:
        return n_tokens
    idx = enc.char_to_token(char)
    if idx is None:  # a character no token covers (normalized away): scan
        return next((i for i, (a, _) in enumerate(enc.offsets) if a >= char), n_tokens)
    return int(idx) + 1 if enc.token_to_chars(idx)[0] < char else int(idx)


def _encode_one(
    out: dict[str, list[Any]],
    enc: Any,
    text_len: int,
    spans: list[tuple[int, int]],
    cutoff_len: int,
    train_on: str,
    eos_label: int | None = None,
) -> None:
    ids: list[int] = enc.ids
    n_text = len(ids)
    token_spans = [
        (_first_token_from(enc, a, text_len, n_text), _first_token_from(enc, b, text_len, n_text)) for a, b in spans
    ]
    labels = [IGNORE] * n_text
    for a, b in token_spans:
        labels[a:b] = ids[a:b]
    if n_text:
        labels[0] = IGNORE
    if eos_label is not None:
        ids, labels, token_spans = _label_eos(ids, labels, token_spans, eos_label)
    n_full = len(ids)
    status = OK
    if n_full > cutoff_len:
        status = TRUNCATED
        cut = cutoff_len
        if train_on != "all":
            # Prefer ending at a complete assistant turn, so the kept part still teaches when to stop.
            whole = [b for a, b in token_spans if b <= cutoff_len and b > a]
            if whole:
                cut = max(whole)
        ids, labels = ids[:cut], labels[:cut]
    if labels.count(IGNORE) == len(labels):
        first = token_spans[0][0] if token_spans else n_full
        reason = (
            f"no trainable token within cutoffLen {cutoff_len}: the first answer starts at token {first} of {n_full}"
        )
        _append(out, [], [], n_full, DROPPED, reason)
        return
    _append(out, ids, labels, n_full, status, "")


def _label_eos(
    ids: list[int], labels: list[int], spans: list[tuple[int, int]], eos: int
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """LLaMA-Factory's efficient_eos labels: eos on the token after each trained answer (the next turn's
    first token keeps its id), and an eos appended after the last one. Each span then ends after its eos
    label, so truncation keeps an answer only with the label that teaches it to stop."""
    ids, labels = list(ids), list(labels)
    if spans and spans[-1][1] == len(ids):
        ids.append(eos)
        labels.append(eos)
    for _, b in spans:
        labels[b] = eos
    return ids, labels, [(a, b + 1) for a, b in spans]


def render_preview(
    tokenizer: Any,
    template: ChatTemplate,
    conv: Conversation,
    labels: list[int],
    origin: tuple[str, int],
    train_on: str,
) -> str:
    """The example as text with the trained parts in [[ ]], then token by token with its label."""
    tools = json.loads(conv.tools) if conv.tools else None
    chat = chat_messages(conv.messages)
    text, _ = assistant_spans(template, chat, tools, dict(tokenizer.special_tokens_map), train_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][: len(labels)]
    token_texts = [text[a:b] for a, b in enc["offset_mapping"][: len(labels)]]
    if len(ids) < len(labels):  # efficient_eos: the eos appended after the last answer
        ids, token_texts = [*ids, tokenizer.eos_token_id], [*token_texts, tokenizer.eos_token]
    trained = [lab != IGNORE for lab in labels]
    pieces, inside = [], False
    for piece, tid, lab in zip(token_texts, ids, labels, strict=True):
        t = lab != IGNORE and lab == tid
        if lab != IGNORE and lab != tid:  # efficient_eos: an eos label on the next turn's first token
            pieces += [*(["]]"] if inside else []), f"[[{tokenizer.decode([lab])}]]"]
            inside = False
        elif t != inside:
            pieces.append("[[" if t else "]]")
            inside = t
        pieces.append(piece)
    if inside:
        pieces.append("]]")
    n_trained = sum(trained)
    lines = [
        f"Preview: {origin[0]} row {origin[1]} (template {template.name}, {len(ids)} tokens, {n_trained} trained; "
        "trained text is inside [[ ]])",
        "".join(pieces),
        "",
        f"{'#':>5} {'id':>7} {'label':>7}  token",
    ]
    for i, (piece, tid, lab) in enumerate(zip(token_texts, ids, labels, strict=True)):
        lines.append(f"{i:>5} {tid:>7} {lab if lab != IGNORE else '-':>7}  {piece!r}")
    return "\n".join(lines)
