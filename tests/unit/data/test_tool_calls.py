"""Tool-calling rows: function-call turns are their own kind of turn in the data layer, trained like
answers; tool results are prompt. Per-template renderings are checked against LLaMA-Factory in
tests/unit/llamafactory/test_lf_templates.py; here, the data layer and `template: auto`."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kubetune.trainer.data import formats as fm
from kubetune.trainer.data.formats import Mapping, RowError, to_conversation
from kubetune.trainer.data.tokenize import IGNORE, encode_batch
from kubetune.trainer.templates import resolve_template

CALL = '{"name": "add", "arguments": {"a": 2, "b": 4}}'
TOOLS = [{"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}]


def sharegpt_row(*turns: tuple[str, str], tools: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    if tools is not None:
        row["tools"] = tools
    return row


def test_a_function_call_may_end_the_conversation_and_is_what_is_learned() -> None:
    conv = to_conversation(sharegpt_row(("human", "Add"), ("function_call", CALL)), "sharegpt", Mapping())
    assert conv.messages[-1] == {"role": "function", "content": CALL}


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ((("human", "Add"), ("function_call", "add(2, 4)")), r"turn 2 \(function_call\): a function call must be JSON"),
        ((("human", "Add"), ("function_call", '{"name": "add"}')), 'must be an object with "name" and "arguments"'),
        ((("observation", "6"), ("gpt", "6")), "turn 1 is tool as the first turn"),
        ((("human", "Add"), ("function_call", CALL), ("observation", "6")), "ends with a tool turn"),
        ((("human", "Add"), ("function_call", CALL), ("function_call", CALL)), "turn 3 is function after a function"),
    ],
)
def test_broken_tool_rows_are_refused_with_the_reason(turns: tuple[tuple[str, str], ...], reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        to_conversation(sharegpt_row(*turns), "sharegpt", Mapping())


def test_a_thought_before_the_call_is_kept_before_it_as_llamafactory_keeps_it() -> None:
    thought = "<think>\nAdd them.\n</think>\n\n"
    assert fm.function_calls(thought + CALL) == (thought, [{"name": "add", "arguments": {"a": 2, "b": 4}}])
    assert fm.function_calls(f"Sure.<tool_call>{CALL}</tool_call>")[0] == "Sure."
    chat = fm.chat_messages([{"role": "user", "content": "Add"}, {"role": "function", "content": f"[{CALL}, {CALL}]"}])
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 4}}}
    assert chat[1] == {"role": "assistant", "content": "", "tool_calls": [call, call]}


def test_openai_tool_results_of_one_turn_are_one_observation_as_in_llamafactory() -> None:
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    row = {
        "messages": [
            {"role": "user", "content": "Add twice"},
            {"role": "assistant", "content": "I will.", "tool_calls": [call, call]},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            {"role": "assistant", "content": "1 and 2."},
        ]
    }
    conv = to_conversation(row, "openai", Mapping())
    assert [m["role"] for m in conv.messages] == ["user", "function", "tool", "assistant"]
    assert conv.messages[1]["content"] == json.dumps([call["function"]] * 2)  # the text beside calls is dropped
    assert conv.messages[2]["content"] == "1\n</tool_response>\n<tool_response>\n2"


# A small tool-aware template in the style of Qwen2.5's own: tools listed in the system turn, calls
# as <tool_call> JSON, results as a user turn.
TOOL_AWARE = (
    "{%- if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for c in m.tool_calls | default([]) %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def tool_tokenizer(tokenizer: Any) -> Any:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOL_AWARE
    return tok


def test_auto_renders_tools_and_calls_with_the_tokenizers_own_template(tool_tokenizer: Any) -> None:
    """`template: auto` hands the tools list and OpenAI-style tool_calls to the tokenizer's template
    (as apply_chat_template(tools=...) does); the call is trained, the tool result is not."""
    row = sharegpt_row(
        ("human", "Add"), ("function_call", CALL), ("observation", "6"), ("gpt", "Six."), tools=json.dumps(TOOLS)
    )
    conv = to_conversation(row, "sharegpt", Mapping())
    template = resolve_template("auto", tool_tokenizer)
    out = encode_batch(
        {"messages": [conv.messages], "tools": [conv.tools]},
        tokenizer=tool_tokenizer,
        template=template,
        cutoff_len=4096,
        train_on="assistant",
    )
    assert out["error"] == [""]
    expected = tool_tokenizer.apply_chat_template(fm.chat_messages(conv.messages), tools=TOOLS, tokenize=False)
    assert '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 4}}</tool_call>' in expected
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tool_tokenizer.decode(ids) == expected
    trained = tool_tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    call_text = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 4}}</tool_call><|im_end|>'
    assert trained.replace("\n", "") == call_text + "Six.<|im_end|>"  # not the question, not the result


@pytest.mark.parametrize("name", ["qwen", "llama3", "mistral"])
def test_the_export_probe_of_a_tool_row_renders_as_training_did(name: str, tokenizer: Any) -> None:
    """The export check renders the first training conversation with the exported tokenizer's chat
    template and compares it with the ids training gave it: a function turn must reach both as a call."""
    from kubetune.trainer.data.kinds import SFT
    from kubetune.trainer.export import check_template
    from kubetune.trainer.recipe import Probe

    row = sharegpt_row(("human", "Add"), ("function_call", CALL), ("observation", "6"), ("gpt", "Six."))
    messages = SFT.messages(to_conversation(row, "sharegpt", Mapping()))
    assert messages[1]["tool_calls"][0]["function"]["name"] == "add"
    tok = copy.deepcopy(tokenizer)
    template = resolve_template(name, tok)
    batch = {"messages": [messages], "tools": [None]}
    encoded = encode_batch(batch, tokenizer=tok, template=template, cutoff_len=4096, train_on="all")
    template.apply_to(tok)
    check_template(tok, Probe(messages=messages, input_ids=encoded["input_ids"][0]))


def test_a_preference_prompt_with_a_tool_call_renders_as_sft_renders_it() -> None:
    # The prompt of a DPO pair (or a KTO row) is rendered exactly as the same turns are in SFT: a
    # function-call turn is a call in the template's own format, not text in a user slot.
    from kubetune.trainer.data.preference import render_answers
    from kubetune.trainer.data.tokenize import assistant_spans

    prompt = [
        {"role": "user", "content": "Add 2 and 4"},
        {"role": "function", "content": CALL},
        {"role": "tool", "content": "6"},
    ]
    template = resolve_template("qwen", None)
    head, chosen, _ = render_answers(template, prompt, ["It is 6.", "Five."], TOOLS, {})
    sft, _ = assistant_spans(
        template, fm.chat_messages([*prompt, {"role": "assistant", "content": "It is 6."}]), TOOLS, {}, "last"
    )
    assert "<tool_call>" in head
    assert chosen == sft
