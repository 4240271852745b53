"""Named templates train the text LLaMA-Factory 0.9.5 trains: same conversation text, same answer spans.

LLaMA-Factory cannot be installed cheaply here, so the reference is written from its source by hand:
`LF_TEMPLATES` copies each `register_template(...)` of `src/llamafactory/data/template.py` (v0.9.5)
slot for slot, in LLaMA-Factory's own notation, and `lf_encode` follows `Template._encode`,
`Llama2Template._encode` and `ReasoningTemplate.encode_multiturn` (with its default
`enable_thinking: true`) at the text level. Our templates are jinja built from another table
(`kubetune.trainer.template_layouts`); these tests hold the two together, on the text and answer
spans, and on token ids and labels with the tiny test tokenizer (which has no bos token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api import v1alpha1 as api
from kubetune.trainer.data.tokenize import IGNORE, assistant_spans, encode_batch
from kubetune.trainer.templates import ChatTemplate, named_jinja, render, resolve_template

BOS, EOS = "<s>", "</s>"
SPECIAL = {"bos_token": BOS, "eos_token": EOS}
E: set[str] = {"eos_token"}
B: set[str] = {"bos_token"}
CHATML = {
    "format_user": ["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
    "format_assistant": ["{{content}}<|im_end|>\n"],
    "format_system": ["<|im_start|>system\n{{content}}<|im_end|>\n"],
}
GEMMA = {
    "format_user": ["<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n"],
    "format_assistant": ["{{content}}<end_of_turn>\n"],
    "format_system": ["{{content}}\n\n"],
    "format_prefix": [B],
    "template_class": "Llama2Template",
}

# register_template(...) arguments of LLaMA-Factory 0.9.5, slot for slot (tool formatters left out).
LF_TEMPLATES: dict[str, dict[str, Any]] = {
    "default": {
        "format_user": ["Human: {{content}}", E, "\nAssistant:"],
        "format_assistant": ["{{content}}", E, "\n"],
        "format_system": ["System: {{content}}", E, "\n"],
    },
    "empty": {"format_assistant": ["{{content}}"]},
    "alpaca": {
        "format_user": ["### Instruction:\n{{content}}\n\n### Response:\n"],
        "format_assistant": ["{{content}}", E, "\n\n"],
        "default_system": "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n",
    },
    "vicuna": {
        "format_user": ["USER: {{content}} ASSISTANT:"],
        "default_system": "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    },
    "chatml": CHATML,
    "qwen": {**CHATML, "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
    "qwen2_vl": {**CHATML, "default_system": "You are a helpful assistant."},
    "qwen3": {**CHATML, "template_class": "ReasoningTemplate"},
    "qwen3_nothink": CHATML,
    "qwen3_vl": {**CHATML, "template_class": "ReasoningTemplate"},
    "qwen3_vl_nothink": CHATML,
    "qwen3_5": {**CHATML, "template_class": "ReasoningTemplate"},
    "qwen3_5_nothink": CHATML,
    "yi": CHATML,
    "llama2": {
        "format_user": [B, "[INST] {{content}} [/INST]"],
        "format_system": ["<<SYS>>\n{{content}}\n<</SYS>>\n\n"],
        "template_class": "Llama2Template",
    },
    "llama3": {
        "format_user": [
            "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ],
        "format_assistant": ["{{content}}<|eot_id|>"],
        "format_system": ["<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"],
        "format_prefix": [B],
    },
    "llama4": {
        "format_user": [
            "<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n"
        ],
        "format_assistant": ["{{content}}<|eot|>"],
        "format_system": ["<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>"],
        "format_prefix": [B],
    },
    "mistral": {
        "format_user": ["[INST] {{content}}[/INST]"],
        "format_assistant": [" {{content}}", E],
        "format_system": ["{{content}}\n\n"],
        "format_prefix": [B],
        "template_class": "Llama2Template",
    },
    "mistral_small": {
        "format_user": ["[INST]{{content}}[/INST]"],
        "format_system": ["[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]"],
        "format_prefix": [B],
    },
    "gemma": GEMMA,
    "gemma3": GEMMA,
    "deepseek": {
        "format_user": ["User: {{content}}\n\nAssistant:"],
        "format_system": ["{{content}}\n\n"],
        "format_prefix": [B],
    },
    "deepseek3": {"format_user": ["<｜User｜>{{content}}<｜Assistant｜>"], "format_prefix": [B]},
    "deepseekr1": {
        "format_user": ["<｜User｜>{{content}}<｜Assistant｜>"],
        "format_prefix": [B],
        "template_class": "ReasoningTemplate",
    },
    "phi": {
        "format_user": ["<|user|>\n{{content}}<|end|>\n<|assistant|>\n"],
        "format_assistant": ["{{content}}<|end|>\n"],
        "format_system": ["<|system|>\n{{content}}<|end|>\n"],
    },
    "phi4": {
        "format_user": ["<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>"],
        "format_assistant": ["{{content}}<|im_end|>"],
        "format_system": ["<|im_start|>system<|im_sep|>{{content}}<|im_end|>"],
    },
    "phi4_mini": {
        "format_user": ["<|user|>{{content}}<|end|><|assistant|>"],
        "format_assistant": ["{{content}}<|end|>"],
        "format_system": ["<|system|>{{content}}<|end|>"],
    },
}


def _apply(slots: list[Any], content: str, bos: str, eos: str) -> str:
    """StringFormatter.apply + _convert_elements_to_ids, as text."""
    out = ""
    for slot in slots:
        if isinstance(slot, str):
            out += slot.replace("{{content}}", content)
        elif "bos_token" in slot:
            out += bos
        elif "eos_token" in slot:
            out += eos
    return out


def lf_encode(
    name: str, messages: list[dict[str, str]], system: str = "", bos: str = BOS, eos: str = EOS
) -> list[tuple[str, str]]:
    """(prompt, response) text pairs, as LLaMA-Factory's encode_multiturn makes them (no tools)."""
    spec = LF_TEMPLATES[name]
    user = spec.get("format_user", ["{{content}}"])
    assistant = spec.get("format_assistant", ["{{content}}", E])
    system_slots = spec.get("format_system", ["{{content}}"])
    kind = spec.get("template_class", "Template")
    system = system or spec.get("default_system", "")
    encoded = []
    for i, message in enumerate(messages):
        text, system_text = "", ""
        if i == 0:
            text += _apply(spec.get("format_prefix", []), "", bos, eos)
            if system:
                if kind == "Llama2Template":
                    system_text = _apply(system_slots, system, bos, eos)
                else:
                    text += _apply(system_slots, system, bos, eos)
        if message["role"] == "user":
            text += _apply(user, system_text + message["content"], bos, eos)
        else:
            text += _apply(assistant, message["content"], bos, eos)
        encoded.append(text)
    pairs = [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]
    if kind == "ReasoningTemplate":  # enable_thinking (its default): an empty thought, trained
        pairs = [
            (p, r if "<think>" in m["content"] or "</think>" in m["content"] else "<think>\n\n</think>\n\n" + r)
            for (p, r), m in zip(pairs, messages[1::2], strict=True)
        ]
    return pairs


PLAIN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
MULTI = [*PLAIN, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "It's 6.\nDone."}]
THOUGHT = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nBecause."}]
CASES = {
    "plain": (PLAIN, ""),
    "multi-turn": (MULTI, ""),
    "system": (MULTI, "Be brief."),
    "with a thought": (THOUGHT, "Be brief."),
}


def test_the_reference_covers_every_named_template() -> None:
    assert set(LF_TEMPLATES) == set(api.TEMPLATE_NAMES) - {"auto"}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(LF_TEMPLATES))
def test_named_template_trains_what_llamafactory_trains(name: str, case: str) -> None:
    messages, system = CASES[case]
    pairs = lf_encode(name, messages, system)
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    ours = [{"role": "system", "content": system}, *messages] if system else messages
    text, spans = assistant_spans(template, ours, None, SPECIAL, "assistant")
    assert text == "".join(p + r for p, r in pairs)
    expected, pos = [], 0
    for prompt, response in pairs:
        expected.append((pos + len(prompt), pos + len(prompt) + len(response)))
        pos += len(prompt) + len(response)
    assert spans == expected


# A few spelled out in full, so the reference above is checked against the source by eye too.
LITERAL = {
    "qwen3": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n",
    "llama2": "<s>[INST] What is 2+2? [/INST]4</s>",
    "mistral": "<s>[INST] What is 2+2?[/INST] 4</s>",
    "gemma3": "<s><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "qwen": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "deepseek3": "<s><｜User｜>What is 2+2?<｜Assistant｜>4</s>",
}


@pytest.mark.parametrize("name", sorted(LITERAL))
def test_plain_conversation_spelled_out(name: str) -> None:
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    assert render(template, PLAIN, special_tokens=SPECIAL) == LITERAL[name]


def test_an_empty_system_turn_falls_back_to_the_default_system_as_in_llamafactory() -> None:
    template = ChatTemplate(name="qwen", jinja=named_jinja("qwen"))
    with_empty = render(template, [{"role": "system", "content": ""}, *PLAIN], special_tokens=SPECIAL)
    assert with_empty == LITERAL["qwen"]


@pytest.mark.parametrize("name", sorted(LF_TEMPLATES))
def test_tool_calling_rows_are_refused_not_trained_differently(name: str) -> None:
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    tool_turns = [
        *PLAIN[:1],
        {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 2}}'},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4"},
    ]
    with pytest.raises(Exception, match="template: auto"):
        render(template, tool_turns, special_tokens=SPECIAL)
    with pytest.raises(Exception, match="template: auto"):
        render(template, PLAIN, special_tokens=SPECIAL, tools=[{"name": "add", "parameters": {}}])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("name", sorted(LF_TEMPLATES))
def test_ids_and_labels_are_llamafactorys(name: str, tokenizer: Any) -> None:
    """LLaMA-Factory tokenizes each prompt and answer on its own; we tokenize the whole text once."""
    for messages, system in CASES.values():
        ours = [{"role": "system", "content": system}, *messages] if system else messages
        template = resolve_template(name, tokenizer)
        out = encode_batch(
            {"messages": [ours], "tools": [None]},
            tokenizer=tokenizer,
            template=template,
            cutoff_len=4096,
            train_on="assistant",
        )
        ids, labels = [], []
        for prompt, response in lf_encode(name, messages, system, tokenizer.bos_token or "", tokenizer.eos_token):
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            response_ids = tokenizer.encode(response, add_special_tokens=False)
            ids += prompt_ids + response_ids
            labels += [IGNORE] * len(prompt_ids) + response_ids
        assert out["input_ids"][0] == ids
        assert out["labels"][0] == labels
