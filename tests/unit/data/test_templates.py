"""Chat templates: names, `auto`, prefix consistency, and what gets written into the exported tokenizer."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api import v1alpha1 as api
from kubetune.trainer.templates import TEMPLATE_NAMES, TemplateError, render, resolve_template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Call the tool."},
    {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 2}}'},
    {"role": "tool", "content": "6"},
    {"role": "assistant", "content": "It is 6."},
]


def test_template_names_match_the_api() -> None:
    assert tuple(TEMPLATE_NAMES) == tuple(api.TEMPLATE_NAMES)


def test_auto_renders_exactly_like_the_tokenizer(tokenizer: Any) -> None:
    template = resolve_template("auto", tokenizer)
    assert template.name == "tokenizer" and template.stop_tokens == ["<|im_end|>"]
    messages = CONVERSATION[:3]
    ours = render(template, messages, special_tokens=tokenizer.special_tokens_map)
    assert ours == tokenizer.apply_chat_template(messages, tokenize=False)


def test_auto_without_a_chat_template_says_which_template_to_pick(base_tokenizer: Any) -> None:
    with pytest.raises(TemplateError, match="default or alpaca"):
        resolve_template("auto", base_tokenizer)


@pytest.mark.parametrize("name", [n for n in TEMPLATE_NAMES if n != "auto"])
def test_named_templates_are_prefix_consistent_and_end_turns_with_a_stop_token(name: str, tokenizer: Any) -> None:
    template = resolve_template(name, tokenizer)
    special = tokenizer.special_tokens_map
    conversation = CONVERSATION
    full = render(template, conversation, special_tokens=special)
    for i, msg in enumerate(conversation):
        if msg["role"] != "assistant":
            continue
        prompt = render(template, conversation[:i], special_tokens=special, add_generation_prompt=True)
        upto = render(template, conversation[: i + 1], special_tokens=special)
        assert full.startswith(upto) and upto.startswith(prompt), name
        answer = upto[len(prompt) :].removeprefix("<think>\n\n</think>\n\n")
        assert answer.strip().startswith(msg["content"]), (name, answer)
        # LLaMA-Factory's `empty` trains the bare text, no end-of-turn; an efficient_eos template's stop
        # is a label after the text (tests/unit/data/test_efficient_eos.py).
        if name != "empty" and not template.efficient_eos:
            assert answer.rstrip().endswith(template.stop_tokens[0]), (name, answer)


def test_rendering_does_not_modify_the_messages(tokenizer: Any) -> None:
    messages = copy.deepcopy(CONVERSATION[:3])
    render(resolve_template("gemma", tokenizer), messages, special_tokens=tokenizer.special_tokens_map)
    assert messages == CONVERSATION[:3]


def test_apply_to_writes_the_template_and_the_stop_token_into_the_tokenizer(base_tokenizer: Any) -> None:
    tok = copy.deepcopy(base_tokenizer)
    assert tok.eos_token == "<|endoftext|>" and not tok.chat_template
    template = resolve_template("chatml", tok)
    template.apply_to(tok)
    assert tok.chat_template == template.jinja
    assert tok.eos_token == "<|im_end|>", "serving must stop where trained turns end"
    im_end, endoftext = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert template.stop_token_ids(tok) == [im_end]
    rendered = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    assert rendered == render(template, CONVERSATION[1:2], special_tokens={}, add_generation_prompt=True)
    assert resolve_template("chatml", base_tokenizer).stop_token_ids(base_tokenizer) == [im_end, endoftext]


def test_templates_ending_turns_with_eos_use_the_tokenizers_eos(tokenizer: Any) -> None:
    for name in ("llama2", "mistral", "deepseek", "alpaca", "default"):
        assert resolve_template(name, tokenizer).stop_tokens == [tokenizer.eos_token]


def test_stop_tokens_missing_from_the_vocabulary_are_reported(tokenizer: Any) -> None:
    assert resolve_template("llama3", tokenizer).unknown_stop_tokens(tokenizer) == ["<|eot_id|>"]
    assert resolve_template("chatml", tokenizer).unknown_stop_tokens(tokenizer) == []


def test_unknown_template_name_lists_the_choices(tokenizer: Any) -> None:
    with pytest.raises(TemplateError, match="chatml"):
        resolve_template("vicuna_v2", tokenizer)
