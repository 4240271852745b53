"""alpaca / sharegpt / openai rows -> canonical conversations, LLaMA-Factory mappings, detection, row checks."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.v1alpha1 import ColumnMapping, TagMapping
from kubetune.trainer.data.formats import Mapping, RowError, detect_format, to_conversation


def _nested(depth: int) -> Any:
    """A list `depth` deep, as a parquet reader or a JSON row just under json's own limit may yield."""
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def roles(conv: Any) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in conv.messages]


def test_alpaca_with_input_system_and_history() -> None:
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [["Hi", "Hello!"]],
    }
    assert roles(to_conversation(row, "alpaca", Mapping())) == [
        ("system", "You translate."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Translate\nbonjour"),
        ("assistant", "hello"),
    ]


def test_alpaca_with_llamafactory_column_mapping() -> None:
    mapping = Mapping.from_spec(
        ColumnMapping(prompt="question", query="context", response="answer", system="sys", history="past"),
        None,
    )
    row = {"question": "Q?", "context": "", "answer": "A.", "sys": "S", "past": []}
    assert roles(to_conversation(row, "alpaca", mapping)) == [("system", "S"), ("user", "Q?"), ("assistant", "A.")]


def test_only_mapped_columns_ignores_the_unmapped_optional_ones_as_llamafactory_does() -> None:
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [["Hi", "Hello!"]],
        "tools": '[{"name": "dictionary"}]',
    }
    # An entry mapping prompt and response only: LLaMA-Factory reads neither input, system, history nor tools.
    only = Mapping.from_spec(ColumnMapping(prompt="instruction", response="output"), None, only_mapped=True)
    conv = to_conversation(row, "alpaca", only)
    assert roles(conv) == [("user", "Translate"), ("assistant", "hello")] and conv.tools is None
    # What it maps is read.
    mapped = Mapping.from_spec(ColumnMapping(query="input", system="system"), None, only_mapped=True)
    assert roles(to_conversation(row, "alpaca", mapped)) == [
        ("system", "You translate."),
        ("user", "Translate\nbonjour"),
        ("assistant", "hello"),
    ]
    chat = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "S"}
    only_turns = Mapping.from_spec(ColumnMapping(messages="conversations"), None, only_mapped=True)
    assert roles(to_conversation(chat, "sharegpt", only_turns)) == [("user", "Hi"), ("assistant", "Hello")]
    assert roles(to_conversation(chat, "sharegpt", Mapping()))[0] == ("system", "S")  # kubetune's default reads it


def test_sharegpt_default_tags_with_function_call_and_observation_and_tools() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "Use tools."},
            {"from": "human", "value": "Add 2 and 4"},
            {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2, "b": 4}}'},
            {"from": "observation", "value": "6"},
            {"from": "gpt", "value": "It is 6."},
        ],
        "tools": '[{"name": "add"}]',
    }
    conv = to_conversation(row, "sharegpt", Mapping())
    # A function call is its own kind of turn (trained like an answer, rendered per template).
    assert [r for r, _ in roles(conv)] == ["system", "user", "function", "tool", "assistant"]
    assert conv.tools == '[{"name": "add"}]'


def test_sharegpt_with_llamafactory_tags_and_messages_column() -> None:
    mapping = Mapping.from_spec(
        ColumnMapping(messages="dialog"),
        TagMapping(role_tag="speaker", content_tag="text", user_tag="customer", assistant_tag="agent"),
    )
    row = {"dialog": [{"speaker": "customer", "text": "Hi"}, {"speaker": "agent", "text": "Hello"}]}
    assert roles(to_conversation(row, "sharegpt", mapping)) == [("user", "Hi"), ("assistant", "Hello")]


def test_mapping_accepts_camel_case_flags_from_the_cli() -> None:
    from kubetune.cli.data import _mapping

    columns = _mapping(["messages=msgs"], ColumnMapping, "column")
    tags = _mapping(["roleTag=r", "assistant_tag=bot"], TagMapping, "tag")
    mapping = Mapping.from_spec(columns, tags)
    assert (mapping.messages, mapping.role_tag, mapping.assistant_tag) == ("msgs", "r", "bot")
    with pytest.raises(ValueError, match="unknown key prompts"):
        _mapping(["prompts=x"], ColumnMapping, "column")


def test_openai_messages_with_tool_and_content_parts() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
            },
            {"role": "tool", "content": "ok"},
            {"role": "assistant", "content": "Done"},
        ]
    }
    # LLaMA-Factory's OpenAI reader: the calls' function objects, arguments as given (a JSON string here).
    assert roles(to_conversation(row, "openai", Mapping())) == [
        ("system", "S"),
        ("user", "Hi there"),
        ("function", '[{"name": "f", "arguments": "{\\"x\\": 1}"}]'),
        ("tool", "ok"),
        ("assistant", "Done"),
    ]


@pytest.mark.parametrize(
    ("rows", "fmt", "key"),
    [
        ([{"instruction": "a", "output": "b"}], "alpaca", None),
        ([{"conversations": [{"from": "human", "value": "a"}]}], "sharegpt", "conversations"),
        ([{"messages": [{"role": "user", "content": "a"}]}], "openai", "messages"),
        ([{"conversation": [{"role": "user", "content": "a"}]}], "openai", "conversation"),
        ([{"conversations": [{"role": "user", "content": "a"}]}], "openai", "conversations"),
    ],
)
def test_auto_detection(rows: list[dict[str, Any]], fmt: str, key: str | None) -> None:
    detected, mapping, description = detect_format(rows, Mapping())
    assert detected == fmt and description.startswith(fmt)
    if key:
        assert mapping.messages == key and f"'{key}'" in description


def test_detection_is_a_majority_vote_and_says_what_it_found_when_it_fails() -> None:
    rows = [{"instruction": "a", "output": "b"}] * 3 + [{"messages": [{"role": "user", "content": "x"}]}]
    assert detect_format(rows, Mapping())[0] == "alpaca"
    with pytest.raises(RowError, match="keys found: prompt, text"):
        detect_format([{"prompt": "a", "text": "b"}], Mapping())


@pytest.mark.parametrize(
    ("row", "fmt", "reason"),
    [
        ({"instruction": "Q"}, "alpaca", "missing field 'output'"),
        ({"instruction": "Q", "output": "   "}, "alpaca", "field 'output' is empty"),
        ({"instruction": "Q", "output": 3}, "alpaca", "must be a string, got a number"),
        ({"instruction": "Q", "output": "A", "history": [["only one"]]}, "alpaca", "not a [prompt, response] pair"),
        ({"conversations": "hello"}, "sharegpt", "must be a list of turns"),
        ({"conversations": []}, "sharegpt", "empty conversation"),
        ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt", "no assistant turn"),
        (
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            "sharegpt",
            "roles out of order: turn 1 is assistant as the first turn",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
            "sharegpt",
            "roles out of order: turn 2 is user after a user turn",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
            "sharegpt",
            "turn 2 has role 'bot'",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]},
            "sharegpt",
            "turn 2 (gpt) is empty",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "openai",
            "ends with a user turn",
        ),
        ({"messages": [{"role": "user", "text": "a"}]}, "openai", "turn 1 has no 'content' key"),
        (["not", "an", "object"], "openai", "expected an object"),
        ({"instruction": "Q", "output": "A", "tools": "{not json"}, "alpaca", "'tools' is not valid JSON"),
        # JSON held as text (CSV cells, some parquet exports) is read with the same rules as a JSON row
        ({"messages": "[" * 100_000 + "]" * 100_000}, "openai", "nested too deeply"),
        ({"instruction": "Q", "output": "A", "tools": '[{"name": "a", "name": "b"}]'}, "alpaca", "key 'name' appears"),
        ({"instruction": "Q", "output": "A", "tools": _nested(5000)}, "alpaca", "nested too deeply"),
    ],
)
def test_invalid_rows_say_why(row: Any, fmt: str, reason: str) -> None:
    with pytest.raises(RowError) as err:
        to_conversation(row, fmt, Mapping())
    assert reason in str(err.value)
