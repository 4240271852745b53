"""Row layouts (alpaca, sharegpt, openai) -> one canonical conversation, with every row checked.

The canonical conversation is a list of {"role", "content"} messages with roles system (first only),
user, assistant, function (a tool-call turn: its content is LLaMA-Factory's function-call text, a
JSON call or list of calls after an optional thought) and tool (a tool result, LLaMA-Factory's
observation), plus an optional tools JSON string. `chat_messages` turns them into the messages chat
templates read (a function turn becomes an assistant message with `tool_calls`). Every check raises `RowError` with a
reason a user can act on; nothing is dropped silently. Keys and defaults follow LLaMA-Factory's
`dataset_info.json` (`columns`, `tags`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kubetune.api.v1alpha1 import ColumnMapping, DatasetSpec, TagMapping

_Layout = TypeVar("_Layout")


class RowError(ValueError):
    """One row is invalid; str() is the reason."""


def loads(text: str) -> Any:
    """json.loads, refusing what it would let through: a key twice in one object (the last would win
    without a word) and nesting deeper than Python's recursion limit (a RecursionError traceback).

    Both raise RowError; malformed JSON raises json.JSONDecodeError as usual.
    """
    return loads_at(text, 0, whole=True)[0]


def loads_at(text: str, pos: int, *, whole: bool = False) -> tuple[Any, int]:
    """`loads` of the JSON value starting at `pos` (the whole text if `whole`), and where it ends."""
    try:
        if whole:
            return _DECODER.decode(text), len(text)
        value, end = _DECODER.raw_decode(text, pos)
        return value, end
    except RecursionError:
        raise too_deep() from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RowError(f"key '{key}' appears twice in one JSON object")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def too_deep() -> RowError:
    return RowError("nested too deeply to read (JSON nesting deeper than Python's recursion limit)")


# Columns LLaMA-Factory reads only when a dataset_info.json entry maps them.
OPTIONAL_COLUMNS = ("query", "history", "system", "tools")


@dataclass(frozen=True)
class Mapping:
    """The names of the spec's `columns` and `tags` (api ColumnMapping/TagMapping), LLaMA-Factory's default
    where unset; the turn keys and role values of sharegpt/openai default per format (see the *_tags methods)."""

    prompt: str = "instruction"
    # None: not read (an unmapped optional column, when the dataset reads only mapped columns).
    query: str | None = "input"
    response: str = "output"
    history: str | None = "history"
    messages: str | None = None  # default depends on the format
    system: str | None = "system"
    tools: str | None = "tools"
    chosen: str = "chosen"
    rejected: str = "rejected"
    kto_tag: str | None = None  # None: kto_tag, else a boolean label column (kubetune.trainer.data.preference)
    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    @classmethod
    def from_spec(
        cls, columns: ColumnMapping | None = None, tags: TagMapping | None = None, only_mapped: bool = False
    ) -> Mapping:
        """`only_mapped`: LLaMA-Factory's rule, an optional column the mapping does not name is not read."""
        names: dict[str, Any] = dict.fromkeys(OPTIONAL_COLUMNS) if only_mapped else {}
        for part in (columns, tags):
            if part is not None:
                names.update(part.model_dump(exclude_none=True))
        return cls(**names)

    @classmethod
    def of(cls, dataset: DatasetSpec) -> Mapping:
        return cls.from_spec(dataset.columns, dataset.tags, dataset.only_mapped_columns)

    def messages_key(self, fmt: str) -> str:
        return self.messages or ("conversations" if fmt == "sharegpt" else "messages")

    def sharegpt_tags(self) -> tuple[str, str, str, str]:
        return (
            self.role_tag or "from",
            self.content_tag or "value",
            self.user_tag or "human",
            self.assistant_tag or "gpt",
        )

    def openai_tags(self) -> tuple[str, str, str, str]:
        return (
            self.role_tag or "role",
            self.content_tag or "content",
            self.user_tag or "user",
            self.assistant_tag or "assistant",
        )


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, str]]
    tools: str | None = None


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

MESSAGE_KEYS = ("conversations", "messages", "conversation", "chat", "dialog")


def most_common_layout(
    rows: list[dict[str, Any]], detect_one: Callable[[dict[str, Any]], _Layout | None]
) -> _Layout | None:
    """The layout most sample rows vote for (None when none is recognised): a few broken rows do not
    change the verdict."""
    votes = Counter(vote for row in rows if (vote := detect_one(row)) is not None)
    return votes.most_common(1)[0][0] if votes else None


def keys_found(rows: list[dict[str, Any]]) -> str:
    """The first keys of sample rows, for an error that says what the rows have instead."""
    return ", ".join(sorted({k for row in rows for k in row})[:12]) or "none"


def detect_format(rows: list[dict[str, Any]], mapping: Mapping) -> tuple[str, Mapping, str]:
    """(format, mapping with the found messages key and tags, a one-line description) for sample rows.

    Each row votes; the most common layout wins, so a few broken rows do not change the verdict.
    """
    layout = most_common_layout(rows, lambda row: _detect_one(row, mapping))
    if layout is None:
        raise RowError(
            "cannot detect the format: no row has alpaca columns "
            f"({mapping.prompt}/{mapping.response}) or a list of turns "
            f"({', '.join(MESSAGE_KEYS)}); keys found: {keys_found(rows)}. "
            "Set format and columns for this dataset."
        )
    fmt, key, style = layout
    if fmt == "alpaca":
        return fmt, mapping, f"alpaca ({mapping.prompt}/{mapping.query}/{mapping.response})"
    assert key is not None
    resolved = replace(mapping, messages=key)
    if style == "from/value":
        return "sharegpt", resolved, f"sharegpt (key '{key}', turns with from/value)"
    return "openai", resolved, f"openai (key '{key}', turns with role/content)"


def _detect_one(row: dict[str, Any], mapping: Mapping) -> tuple[str, str | None, str | None] | None:
    keys = [mapping.messages] if mapping.messages else list(MESSAGE_KEYS)
    for key in keys:
        turns = maybe_json_list(row.get(key))
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
            continue
        first = turns[0]
        if mapping.role_tag and mapping.role_tag in first:
            style = "from/value" if mapping.role_tag != "role" else "role/content"
            return ("sharegpt" if style == "from/value" else "openai", key, style)
        if "from" in first and "value" in first:
            return ("sharegpt", key, "from/value")
        if "role" in first and "content" in first:
            return ("openai", key, "role/content")
    if mapping.prompt in row and mapping.response in row:
        return ("alpaca", None, None)
    return None


# --------------------------------------------------------------------------------------------
# Conversion + validation
# --------------------------------------------------------------------------------------------


# What to do with data of another kind than the stage trains on.
_ADVICE = {
    "pair": "set spec.stage: dpo to train on it",
    "kto": "set spec.stage: kto to train on it",
    "multimodal": "kubetune trains text only",
}


def data_kind(row: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, description) if the row is one of LLaMA-Factory's dataset kinds other than text turns (else None)."""
    if "chosen" in row and "rejected" in row:
        return "pair", "preference data ('chosen' and 'rejected' columns, LLaMA-Factory's ranking: true) for DPO"
    if "kto_tag" in row or isinstance(row.get("label"), bool):
        key = "kto_tag" if "kto_tag" in row else "label"
        return "kto", f"KTO data (a true/false '{key}' column marking each answer desirable or not)"
    media = [key for key in ("images", "videos", "audios") if row.get(key)]
    if media:
        return "multimodal", f"multimodal data ({' and '.join(repr(m) for m in media)} with the turns)"
    return None


def not_kind(row: dict[str, Any], wanted: str | None) -> str | None:
    """Why the row is not data of kind `wanted` (None: plain turns), if it is of another kind."""
    found = data_kind(row)
    if found is None or found[0] == wanted:
        return None
    return f"this looks like {found[1]}; {_ADVICE[found[0]]}"


def not_sft(row: dict[str, Any]) -> str | None:
    return not_kind(row, None)


def to_conversation(row: Any, fmt: str, mapping: Mapping) -> Conversation:
    """The canonical conversation of one row, or RowError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise RowError(f"expected an object with named fields, got {type(row).__name__}")
    other_kind = not_sft(row)
    if other_kind:
        raise RowError(other_kind)
    convert = {"alpaca": _alpaca, "sharegpt": sharegpt, "openai": openai}.get(fmt)
    if convert is None:
        raise ValueError(f"unknown format {fmt}")
    try:
        conv = convert(row, mapping)
    except RecursionError:  # a value nested almost as deep as the JSON reader allows
        raise too_deep() from None
    check_order(conv.messages)
    return conv


def _text(row: dict[str, Any], key: str | None, *, required: bool, what: str | None = None) -> str:
    what = what or f"'{key}'"
    value = row.get(key) if key is not None else None
    if value is None:
        if required:
            present = ", ".join(sorted(row)[:10])
            raise RowError(f"missing field {what} (fields present: {present})")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {what} must be a string, got {type_name(value)}")
    if required and not value.strip():
        raise RowError(f"field {what} is empty")
    return value


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def maybe_json_list(value: Any) -> Any:
    """CSV and some parquet exports store lists as JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return loads(value)
        except json.JSONDecodeError:
            return value
    return value


def tools_of(row: dict[str, Any], mapping: Mapping) -> str | None:
    value = row.get(mapping.tools) if mapping.tools is not None else None
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"field '{mapping.tools}' is not valid JSON: {exc}") from None
    else:
        parsed = value
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise RowError(f"field '{mapping.tools}' must be a list of tool descriptions, got {type_name(parsed)}")
    return json.dumps(parsed, ensure_ascii=False) if parsed else None


def _system_message(row: dict[str, Any], mapping: Mapping) -> list[dict[str, str]]:
    system = _text(row, mapping.system, required=False)
    return [{"role": "system", "content": system}] if system else []


def _alpaca(row: dict[str, Any], mapping: Mapping) -> Conversation:
    messages = alpaca_prompt(row, mapping)
    messages.append({"role": "assistant", "content": _text(row, mapping.response, required=True)})
    return Conversation(messages, tools_of(row, mapping))


def alpaca_prompt(row: dict[str, Any], mapping: Mapping) -> list[dict[str, str]]:
    """The messages of an alpaca row up to its answer: system, history, then the instruction and input."""
    prompt = _text(row, mapping.prompt, required=False)
    query = _text(row, mapping.query, required=False)
    if mapping.prompt not in row and mapping.query not in row:
        raise RowError(f"missing field '{mapping.prompt}' (fields present: {', '.join(sorted(row)[:10])})")
    user = "\n".join(part for part in (prompt, query) if part)
    if not user.strip():
        raise RowError(f"fields '{mapping.prompt}' and '{mapping.query}' are both empty")
    messages = _system_message(row, mapping)
    history = maybe_json_list(row.get(mapping.history)) if mapping.history is not None else None
    if history not in (None, ""):
        if not isinstance(history, list):
            raise RowError(
                f"field '{mapping.history}' must be a list of [prompt, response] pairs, got {type_name(history)}"
            )
        for i, pair in enumerate(history, start=1):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise RowError(f"'{mapping.history}' entry {i} is not a [prompt, response] pair of strings")
            if not pair[0].strip() or not pair[1].strip():
                raise RowError(f"'{mapping.history}' entry {i} has an empty prompt or response")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": user})
    return messages


def _turns(row: dict[str, Any], key: str) -> list[Any]:
    if key not in row:
        raise RowError(f"missing field '{key}' (fields present: {', '.join(sorted(row)[:10])})")
    turns = maybe_json_list(row[key])
    if not isinstance(turns, list):
        raise RowError(f"field '{key}' must be a list of turns, got {type_name(turns)}")
    if not turns:
        raise RowError(f"field '{key}' is an empty conversation")
    return turns


def sharegpt(row: dict[str, Any], mapping: Mapping) -> Conversation:
    key = mapping.messages_key("sharegpt")
    role_tag, content_tag, user_tag, assistant_tag = mapping.sharegpt_tags()
    roles = {
        user_tag: "user",
        assistant_tag: "assistant",
        mapping.observation_tag: "tool",
        mapping.function_tag: "function",
        mapping.system_tag: "system",
    }
    return _conversation(row, mapping, key, role_tag, content_tag, roles, "turn")


# How LLaMA-Factory's OpenAI reader joins consecutive tool results into one observation.
TOOL_RESULTS_JOINER = "\n</tool_response>\n<tool_response>\n"


def _conversation(
    row: dict[str, Any],
    mapping: Mapping,
    key: str,
    role_tag: str,
    content_tag: str,
    roles: dict[str, str],
    word: str,
    *,
    merge_tool_results: bool = False,
) -> Conversation:
    """The turns under `key`, after the system column's message; `word` names a turn in errors."""
    messages = _system_message(row, mapping)
    for n, turn in enumerate(_turns(row, key), start=1):
        role, content = _turn(turn, n, role_tag, content_tag, roles)
        if role == "system" and (n != 1 or messages):
            raise RowError(f"turn {n} is a system {word}; only the first {word} may be one")
        if role == "function":
            try:
                function_calls(content)
            except RowError as exc:
                raise RowError(f"turn {n} ({turn[role_tag]}): {exc}") from None
        if role == "tool" and merge_tool_results and messages and messages[-1]["role"] == "tool":
            # LLaMA-Factory's OpenAI reader: the results of one turn's calls are one observation.
            messages[-1]["content"] += TOOL_RESULTS_JOINER + content
            continue
        messages.append({"role": role, "content": content})
    return Conversation(messages, tools_of(row, mapping))


def _turn(turn: Any, n: int, role_tag: str, content_tag: str, roles: dict[str, str]) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise RowError(f"turn {n} must be an object with '{role_tag}' and '{content_tag}', got {type_name(turn)}")
    for tag in (role_tag, content_tag):
        if tag not in turn:
            raise RowError(f"turn {n} has no '{tag}' key (keys: {', '.join(sorted(turn))}); check tags/format")
    raw_role = turn[role_tag]
    if raw_role not in roles:
        expected = ", ".join(repr(r) for r in roles)
        raise RowError(f"turn {n} has role {raw_role!r}; expected one of {expected} (set tags to map it)")
    role, content = roles[raw_role], turn[content_tag]
    if role in ("assistant", "function") and turn.get("tool_calls"):
        # LLaMA-Factory's OpenAI reader: the calls' `function` objects are the turn, its text is dropped.
        return "function", _openai_calls(turn["tool_calls"], n)
    if isinstance(content, list):  # openai content parts
        content = _join_parts(content, n)
    if not isinstance(content, str):
        raise RowError(f"turn {n} ({raw_role}) content must be a string, got {type_name(content)}")
    if role != "system" and not content.strip():
        raise RowError(f"turn {n} ({raw_role}) is empty")
    return role, content


def _openai_calls(tool_calls: Any, n: int) -> str:
    """The calls as LLaMA-Factory's function-turn JSON; a call without OpenAI's `function` wrapper is
    taken as it is."""
    if not isinstance(tool_calls, list) or not all(isinstance(call, dict) for call in tool_calls):
        raise RowError(f"turn {n} 'tool_calls' must be a list of objects")
    calls = [call["function"] if isinstance(call.get("function"), dict) else call for call in tool_calls]
    text = json.dumps(calls, ensure_ascii=False)
    try:
        function_calls(text)
    except RowError as exc:
        raise RowError(f"turn {n} 'tool_calls': {exc}") from None
    return text


# LLaMA-Factory's default thought_words and tool_call_words (its FunctionFormatter's).
_THOUGHT = re.compile(r"<think>\n(.*?)\n</think>\n\n", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def function_calls(content: str) -> tuple[str, list[dict[str, Any]]]:
    """(the text before the calls, the calls as {"name", "arguments"}) of a function turn, split as
    LLaMA-Factory's FunctionFormatter splits it: a <tool_call> block holds the JSON and the rest is
    kept before the calls, else a <think> block is taken out and the rest is the JSON. The JSON is
    one call or a list of calls."""
    call = _TOOL_CALL.search(content)
    if call is not None:
        before, text = content.replace(call.group(0), ""), call.group(1)
    else:
        thought = _THOUGHT.search(content)
        before = thought.group(0) if thought else ""
        text = content.replace(before, "") if thought else content
    try:
        parsed = loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f'a function call must be JSON ({{"name": ..., "arguments": ...}}): {exc}') from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    for call_obj in calls:
        if not (isinstance(call_obj, dict) and isinstance(call_obj.get("name"), str) and "arguments" in call_obj):
            raise RowError('a function call must be an object with "name" and "arguments"')
    return before, [{"name": c["name"], "arguments": c["arguments"]} for c in calls]


def chat_messages(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The canonical messages as chat templates read them: a function turn becomes an assistant
    message whose `tool_calls` are OpenAI's ({"type": "function", "function": {"name", "arguments"}}),
    its content the text before the calls (a thought, or empty)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] != "function":
            out.append(message)
            continue
        before, calls = function_calls(message["content"])
        tool_calls = [{"type": "function", "function": call} for call in calls]
        out.append({"role": "assistant", "content": before, "tool_calls": tool_calls})
    return out


def _join_parts(parts: list[Any], n: int) -> str:
    texts = []
    for part in parts:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise RowError(f"turn {n} has a non-text content part; only text is supported")
        texts.append(part["text"])
    return "".join(texts)


def openai(row: dict[str, Any], mapping: Mapping) -> Conversation:
    key = mapping.messages_key("openai")
    role_tag, content_tag, user_tag, assistant_tag = mapping.openai_tags()
    roles = {user_tag: "user", assistant_tag: "assistant", "tool": "tool", "function": "tool", "system": "system"}
    return _conversation(row, mapping, key, role_tag, content_tag, roles, "message", merge_tool_results=True)


# Which roles may follow which (None = the start of the conversation, after the system message):
# LLaMA-Factory's rule, a prompt turn (user, tool result) then an answer turn (assistant, tool call).
_PROMPT, _ANSWER = {"user", "tool"}, {"assistant", "function"}
_NEXT = {None: {"user"}, "user": _ANSWER, "tool": _ANSWER, "assistant": _PROMPT, "function": _PROMPT}


def check_order(messages: list[dict[str, str]]) -> None:
    """Roles alternate prompt (user, tool result) -> answer (assistant, tool call), starting with the
    user; the last turn is an answer."""
    prev: str | None = None
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise RowError("conversation has no turns besides the system prompt")
    for n, msg in enumerate(body, start=1):
        role = msg["role"]
        if role not in _NEXT[prev]:
            after = f"after a {prev} turn" if prev else "as the first turn"
            raise RowError(f"roles out of order: turn {n} is {role} {after}")
        prev = role
    if not any(m["role"] in _ANSWER for m in body):
        raise RowError("conversation has no assistant turn (nothing to learn)")
    if prev not in _ANSWER:
        raise RowError(f"conversation ends with a {prev} turn; the last turn must be the assistant's")
