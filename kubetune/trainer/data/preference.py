"""Preference data: pairs (stage dpo), a prompt conversation and two answers to it, chosen and rejected;
and tagged answers (stage kto), a conversation whose last assistant turn is marked desirable or not.

The layouts are LLaMA-Factory's `ranking: true` datasets and TRL's:
- sharegpt / openai: the prompt turns under `conversations` / `messages`, and `chosen` / `rejected`
  each one assistant turn ({"from": "gpt", "value": ...} or {"role": "assistant", "content": ...});
- alpaca: instruction / input (and system, history) with `chosen` / `rejected` strings;
- TRL: `prompt` as a string (read as alpaca with columns.prompt: prompt) or as a list of messages,
  and `chosen` / `rejected` as strings or lists of one assistant message.

Every pair is checked like an SFT row (RowError with a reason), and on top: neither answer is empty,
they differ, and the prompt ends with a user (or tool) turn, not a dangling assistant one.
KTO rows are LLaMA-Factory's: any SFT layout plus a boolean `kto_tag` column (columns.kto_tag; its demo
maps it to `label`), checked like SFT rows and the tag a true/false value.
Tokenizing renders the prompt with the generation prompt exactly as SFT masking does, and each
answer as the prompt's assistant turn, end-of-turn token included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from kubetune.trainer.data import formats as fm
from kubetune.trainer.data.formats import Mapping, RowError
from kubetune.trainer.data.tokenize import DROPPED, FAILED, OK, TRUNCATED, TemplateMismatch
from kubetune.trainer.templates import ChatTemplate, render


@dataclass(frozen=True)
class Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    tools: str | None = None

    def chars(self) -> int:
        return (
            sum(len(m["content"]) for m in self.prompt) + len(self.chosen) + len(self.rejected) + len(self.tools or "")
        )

    def messages(self) -> list[dict[str, Any]]:
        """The prompt and the chosen answer as one conversation (the export check's probe), as chat
        templates read it (a function-call turn becomes tool_calls)."""
        return fm.chat_messages([*self.prompt, {"role": "assistant", "content": self.chosen}])


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def is_pair(row: dict[str, Any], mapping: Mapping) -> bool:
    return mapping.chosen in row and mapping.rejected in row


def detect_format(rows: list[dict[str, Any]], mapping: Mapping) -> tuple[str, Mapping, str]:
    """(format, mapping, description) of sample preference rows; the most common layout wins."""
    layout = fm.most_common_layout(rows, lambda row: _detect_one(row, mapping))
    if layout is None:
        raise RowError(
            f"spec.stage is dpo, which trains on preference pairs, but no row has '{mapping.chosen}' and "
            f"'{mapping.rejected}' beside a prompt ({mapping.prompt}, prompt, or a list of turns under "
            f"{', '.join(fm.MESSAGE_KEYS)}); keys found: {fm.keys_found(rows)}. Set format and columns."
        )
    fmt, key, style = layout
    answers = f"answers in '{mapping.chosen}'/'{mapping.rejected}'"
    if fmt == "alpaca":
        prompt = key or mapping.prompt
        return fmt, replace(mapping, prompt=prompt), f"preference pairs, alpaca (prompt in '{prompt}', {answers})"
    return (
        fmt,
        replace(mapping, messages=key),
        f"preference pairs, {fmt} (prompt turns under '{key}' with {style}, {answers})",
    )


def _detect_one(row: dict[str, Any], mapping: Mapping) -> tuple[str, str | None, str] | None:
    if not is_pair(row, mapping):
        return None
    keys = [mapping.messages] if mapping.messages else [*fm.MESSAGE_KEYS, "prompt"]
    for key in keys:
        turns = fm.maybe_json_list(row.get(key))
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            first = turns[0]
            if mapping.role_tag and mapping.role_tag in first:
                return (
                    ("openai", key, "role/content") if mapping.role_tag == "role" else ("sharegpt", key, "from/value")
                )
            if "from" in first and "value" in first:
                return "sharegpt", key, "from/value"
            if "role" in first and "content" in first:
                return "openai", key, "role/content"
    if mapping.prompt in row:
        return "alpaca", None, ""
    if isinstance(row.get("prompt"), str):  # TRL's string shape
        return "alpaca", "prompt", ""
    return None


# --------------------------------------------------------------------------------------------
# Conversion + validation
# --------------------------------------------------------------------------------------------


def to_pair(row: Any, fmt: str, mapping: Mapping) -> Pair:
    """The checked pair of one row, or RowError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise RowError(f"expected an object with named fields, got {type(row).__name__}")
    other_kind = fm.not_kind(row, "pair")
    if other_kind:
        raise RowError(other_kind)
    for key in (mapping.chosen, mapping.rejected):
        if key not in row:
            present = ", ".join(sorted(row)[:10])
            raise RowError(f"missing field '{key}': spec.stage dpo needs a preference pair (fields present: {present})")
    try:
        if fmt == "alpaca":
            prompt, tools = fm.alpaca_prompt(row, mapping), fm.tools_of(row, mapping)
        elif fmt in ("sharegpt", "openai"):
            conv = (fm.sharegpt if fmt == "sharegpt" else fm.openai)(row, mapping)
            prompt, tools = conv.messages, conv.tools
        else:
            raise ValueError(f"unknown format {fmt}")
    except RecursionError:
        raise fm.too_deep() from None
    _check_prompt(prompt)
    chosen = _answer(row[mapping.chosen], mapping.chosen, fmt, mapping)
    rejected = _answer(row[mapping.rejected], mapping.rejected, fmt, mapping)
    if chosen == rejected:
        raise RowError(f"'{mapping.chosen}' and '{mapping.rejected}' are the same answer: there is nothing to prefer")
    return Pair(prompt, chosen, rejected, tools)


def _check_prompt(messages: list[dict[str, str]]) -> None:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if body and body[-1]["role"] == "assistant":
        raise RowError(
            f"the prompt ends with an assistant turn (turn {len(body)}): the chosen and rejected answers must "
            "follow a user turn; move that turn into chosen/rejected or drop it"
        )
    # The answers complete the conversation: its roles must then be in order like an SFT row's.
    fm.check_order([*messages, {"role": "assistant", "content": "answer"}])


def _answer(value: Any, key: str, fmt: str, mapping: Mapping) -> str:
    """One answer: a string, one assistant turn in the format's tags, or a list of one assistant message."""
    value = fm.maybe_json_list(value)
    if isinstance(value, list):
        if len(value) != 1:
            raise RowError(f"field '{key}' must hold one assistant turn, got a list of {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role_tag, content_tag, _, assistant = (
            mapping.sharegpt_tags() if fmt == "sharegpt" or "from" in value else mapping.openai_tags()
        )
        if value.get(role_tag, assistant) != assistant:
            raise RowError(f"field '{key}' is a {value.get(role_tag)!r} turn; the answer must be the assistant's")
        value = value.get(content_tag)
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be an answer (a string or an assistant turn), got {fm.type_name(value)}")
    if not value.strip():
        raise RowError(f"field '{key}' is empty")
    return value


# --------------------------------------------------------------------------------------------
# Tokenizing (runs inside datasets.Dataset.map(batched=True))
# --------------------------------------------------------------------------------------------


def encode_pairs(
    batch: dict[str, list[Any]], *, tokenizer: Any, template: ChatTemplate, cutoff_len: int, train_on: str
) -> dict[str, list[Any]]:
    """prompt_ids / chosen_ids / rejected_ids, the answers cut so prompt + answer fits cutoffLen."""
    del train_on  # only the answers carry loss in preference training
    special = dict(tokenizer.special_tokens_map)
    texts: list[str] = []
    errors: list[str] = []
    for prompt, chosen, rejected, tools in zip(
        batch["prompt"], batch["chosen"], batch["rejected"], batch["tools"], strict=True
    ):
        try:
            texts += render_pair(template, prompt, chosen, rejected, json.loads(tools) if tools else None, special)
            errors.append("")
        except Exception as exc:  # a template's raise_exception() or a mismatch: this row only
            texts += ["", "", ""]
            errors.append(f"chat template failed: {exc}")
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    out: dict[str, list[Any]] = {
        k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "n_full", "trainable", "status", "error")
    }
    for i, error in enumerate(errors):
        prompt_ids, chosen_full, rejected_full = (encodings[3 * i + j].ids for j in range(3))
        if error:
            _append(out, [], [], [], 0, FAILED, error)
            continue
        # A token spanning the end of the prompt stays in the prompt (as TRL does): common prefix of the three.
        n = min(_common(prompt_ids, chosen_full), _common(prompt_ids, rejected_full))
        prompt, chosen, rejected = prompt_ids[:n], chosen_full[n:], rejected_full[n:]
        chosen, rejected = _with_eos(chosen, template, tokenizer), _with_eos(rejected, template, tokenizer)
        n_full = n + max(len(chosen), len(rejected))
        if n >= cutoff_len or not chosen or not rejected:
            reason = f"no answer token within cutoffLen {cutoff_len}: the prompt alone is {n} tokens"
            _append(out, [], [], [], n_full, DROPPED, reason)
            continue
        room = cutoff_len - n
        status = TRUNCATED if n_full > cutoff_len else OK
        _append(out, prompt, chosen[:room], rejected[:room], n_full, status, "")
    return out


def _with_eos(answer: list[int], template: ChatTemplate, tokenizer: Any) -> list[int]:
    """An efficient-eos template (glm4, gemma2) leaves eos out of the answer's text; LLaMA-Factory's
    pairwise and feedback processors append it to each answer, so the model learns to stop."""
    return [*answer, tokenizer.eos_token_id] if answer and template.efficient_eos else answer


def render_pair(
    template: ChatTemplate,
    prompt: list[dict[str, str]],
    chosen: str,
    rejected: str,
    tools: list[Any] | None,
    special: dict[str, str],
) -> list[str]:
    """The prompt rendered with the generation prompt, then prompt + each answer as the last assistant turn."""
    return render_answers(template, prompt, [chosen, rejected], tools, special)


def render_answers(
    template: ChatTemplate,
    prompt: list[dict[str, str]],
    answers: list[str],
    tools: list[Any] | None,
    special: dict[str, str],
) -> list[str]:
    prompt = fm.chat_messages(prompt)  # as SFT renders the same turns: a function call as a call
    head = render(template, prompt, special_tokens=special, tools=tools, add_generation_prompt=True)
    texts = [head]
    for answer in answers:
        full = render(
            template, [*prompt, {"role": "assistant", "content": answer}], special_tokens=special, tools=tools
        )
        if not full.startswith(head):
            raise TemplateMismatch(f"template '{template.name}' renders the prompt differently once an answer follows")
        texts.append(full)
    return texts


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _append(
    out: dict[str, list[Any]],
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    n_full: int,
    status: int,
    error: str,
) -> None:
    out["prompt_ids"].append(prompt)
    out["chosen_ids"].append(chosen)
    out["rejected_ids"].append(rejected)
    out["n_full"].append(n_full)
    out["trainable"].append(len(chosen) + len(rejected))
    out["status"].append(status)
    out["error"].append(error)


def render_preview(tokenizer: Any, template: ChatTemplate, pair: Pair, origin: tuple[str, int], example: Any) -> str:
    """The pair as the model sees it: prompt, then each answer (the trained part) inside [[ ]]."""
    decode = tokenizer.decode
    prompt = decode(example["prompt_ids"])
    lines = [
        f"Preview: {origin[0]} row {origin[1]} (template {template.name}, preference pair: "
        f"{len(example['prompt_ids'])} prompt tokens, {len(example['chosen_ids'])} chosen, "
        f"{len(example['rejected_ids'])} rejected; trained text is inside [[ ]])",
        "chosen:",
        f"{prompt}[[{decode(example['chosen_ids'])}]]",
        "rejected:",
        f"{prompt}[[{decode(example['rejected_ids'])}]]",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Tagged answers (stage kto)
# --------------------------------------------------------------------------------------------

# LLaMA-Factory's default kto_tag column, and the boolean column its demo data maps it to.
TAG_KEYS = ("kto_tag", "label")


@dataclass(frozen=True)
class Tagged:
    """One KTO example: a prompt conversation, one answer to it, and whether that answer is desirable."""

    prompt: list[dict[str, str]]
    answer: str
    desirable: bool
    tools: str | None = None

    def chars(self) -> int:
        return sum(len(m["content"]) for m in self.prompt) + len(self.answer) + len(self.tools or "")

    def messages(self) -> list[dict[str, Any]]:
        return fm.chat_messages([*self.prompt, {"role": "assistant", "content": self.answer}])


def _tag_key(rows: list[dict[str, Any]], mapping: Mapping) -> str | None:
    if mapping.kto_tag:
        return mapping.kto_tag
    if any(TAG_KEYS[0] in row for row in rows):
        return TAG_KEYS[0]
    return TAG_KEYS[1] if any(isinstance(row.get(TAG_KEYS[1]), bool) for row in rows) else None


def detect_tagged(rows: list[dict[str, Any]], mapping: Mapping) -> tuple[str, Mapping, str]:
    """(format, mapping, description) of sample KTO rows: the tag column, then the SFT layout of the rest."""
    key = _tag_key(rows, mapping)
    if key is None or not any(key in row for row in rows):
        raise RowError(
            f"spec.stage is kto, which trains on answers tagged desirable or not, but no row has a "
            f"'{key or TAG_KEYS[0]}' column{'' if key else ' (or a true/false label)'}; keys found: "
            f"{fm.keys_found(rows)}. Set columns.ktoTag to the column holding true/false."
        )
    untagged = [{k: v for k, v in row.items() if k != key} for row in rows]
    fmt, found, description = fm.detect_format(untagged, replace(mapping, kto_tag=key))
    return fmt, found, f"KTO answers tagged by '{key}', {description}"


def to_tagged(row: Any, fmt: str, mapping: Mapping) -> Tagged:
    """The checked KTO example of one row, or RowError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise RowError(f"expected an object with named fields, got {type(row).__name__}")
    key = mapping.kto_tag or TAG_KEYS[0]
    if key not in row:
        present = ", ".join(sorted(row)[:10])
        raise RowError(
            f"missing field '{key}': spec.stage kto needs each answer tagged true (desirable) or false "
            f"(fields present: {present})"
        )
    tag = row[key]
    if not isinstance(tag, bool):
        raise RowError(f"field '{key}' must be true or false (is the answer desirable?), got {fm.type_name(tag)}")
    conv = fm.to_conversation({k: v for k, v in row.items() if k != key}, fmt, mapping)
    *prompt, last = conv.messages  # an SFT row ends with the assistant's answer, which the tag judges
    return Tagged(prompt, last["content"], tag, conv.tools)


def tagged_columns(examples: list[Tagged]) -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.table(
        {
            "prompt": pa.array([e.prompt for e in examples], type=pa.list_(message)),
            "answer": pa.array([e.answer for e in examples], type=pa.string()),
            "desirable": pa.array([e.desirable for e in examples], type=pa.bool_()),
            "tools": pa.array([e.tools for e in examples], type=pa.string()),
        }
    )


def encode_tagged(
    batch: dict[str, list[Any]], *, tokenizer: Any, template: ChatTemplate, cutoff_len: int, train_on: str
) -> dict[str, list[Any]]:
    """prompt_ids / completion_ids / label ([1] desirable, [0] not: the pipeline's columns are token
    lists, `tagged_rows` makes it TRL's boolean), the answer cut so prompt + answer fits cutoffLen."""
    del train_on  # only the answer carries loss
    special = dict(tokenizer.special_tokens_map)
    texts: list[str] = []
    errors: list[str] = []
    for prompt, answer, tools in zip(batch["prompt"], batch["answer"], batch["tools"], strict=True):
        try:
            texts += render_answers(template, prompt, [answer], json.loads(tools) if tools else None, special)
            errors.append("")
        except Exception as exc:  # a template's raise_exception() or a mismatch: this row only
            texts += ["", ""]
            errors.append(f"chat template failed: {exc}")
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    out: dict[str, list[Any]] = {
        k: [] for k in ("prompt_ids", "completion_ids", "label", "n_full", "trainable", "status", "error")
    }

    def append(prompt: list[int], answer: list[int], label: int, n_full: int, status: int, error: str) -> None:
        row: dict[str, Any] = {"prompt_ids": prompt, "completion_ids": answer, "label": [label], "n_full": n_full}
        row.update(trainable=len(answer), status=status, error=error)
        for name, value in row.items():
            out[name].append(value)

    for i, (error, desirable) in enumerate(zip(errors, batch["desirable"], strict=True)):
        label = int(desirable)
        if error:
            append([], [], label, 0, FAILED, error)
            continue
        prompt_ids, full = encodings[2 * i].ids, encodings[2 * i + 1].ids
        n = _common(prompt_ids, full)
        prompt, answer = full[:n], _with_eos(full[n:], template, tokenizer)
        n_full = n + len(answer)
        if n >= cutoff_len or not full[n:]:
            append(
                [],
                [],
                label,
                n_full,
                DROPPED,
                f"no answer token within cutoffLen {cutoff_len}: the prompt alone is {n} tokens",
            )
            continue
        append(prompt, answer[: cutoff_len - n], label, n_full, TRUNCATED if n_full > cutoff_len else OK, "")
    return out


def tagged_rows(table: Any, cutoff_len: int) -> Any:
    """The trainer's rows: `label` as TRL's boolean."""
    del cutoff_len
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = pc.cast(pc.list_element(table.column("label"), 0), pa.bool_())
    return table.set_column(table.column_names.index("label"), "label", labels)


def render_tagged_preview(
    tokenizer: Any, template: ChatTemplate, example: Tagged, origin: tuple[str, int], encoded: Any
) -> str:
    """The KTO example as the model sees it: prompt, then the answer (the trained part) inside [[ ]]."""
    decode = tokenizer.decode
    verdict = "desirable" if example.desirable else "undesirable"
    return "\n".join(
        [
            f"Preview: {origin[0]} row {origin[1]} (template {template.name}, KTO answer tagged {verdict}: "
            f"{len(encoded['prompt_ids'])} prompt tokens, {len(encoded['completion_ids'])} answer tokens; "
            "trained text is inside [[ ]])",
            f"{decode(encoded['prompt_ids'])}[[{decode(encoded['completion_ids'])}]]",
        ]
    )
