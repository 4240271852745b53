"""Named templates train the text LLaMA-Factory 0.9.5 trains: same conversation text, same answer spans,
same token ids and labels.

The reference is tests/fixtures/llamafactory-0.9.5/golden_templates.json, written by
scripts/llamafactory-golden-templates.py with LLaMA-Factory's own template code (its
`Template.encode_multiturn`, piece by piece): for each template and conversation, the (prompt,
response) text pairs whose response carries loss. Rerun the script after adding a template.
Our templates are jinja built from `kubetune.trainer.template_layouts`; these tests hold the two
together, and need no LLaMA-Factory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import v1alpha1 as api
from kubetune.trainer.data.tokenize import IGNORE, assistant_spans, encode_batch
from kubetune.trainer.templates import ChatTemplate, named_jinja, render, resolve_template

GOLDEN = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory-0.9.5" / "golden_templates.json").read_text(
        encoding="utf-8"
    )
)
# What the golden file's bos and eos pieces are.
BOS, EOS = "<s>", "</s>"
SPECIAL = {"bos_token": BOS, "eos_token": EOS}
CASES: dict[str, tuple[list[dict[str, str]], str]] = {k: (m, s) for k, (m, s) in GOLDEN["cases"].items()}
PLAIN = CASES["plain"][0]


def golden_pairs(name: str, case: str) -> list[tuple[str, str]]:
    return [(prompt, response) for prompt, response in GOLDEN["templates"][name][case]]


def with_system(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, *messages] if system else messages


def test_the_golden_file_covers_every_named_template() -> None:
    assert GOLDEN["revision"] == "v0.9.5"
    assert set(GOLDEN["templates"]) == set(api.TEMPLATE_NAMES) - {"auto"}
    assert all(set(cases) == set(CASES) for cases in GOLDEN["templates"].values())


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
def test_named_template_trains_what_llamafactory_trains(name: str, case: str) -> None:
    messages, system = CASES[case]
    pairs = golden_pairs(name, case)
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    text, spans = assistant_spans(template, with_system(messages, system), None, SPECIAL, "assistant")
    assert text == "".join(p + r for p, r in pairs)
    expected, pos = [], 0
    for prompt, response in pairs:
        expected.append((pos + len(prompt), pos + len(prompt) + len(response)))
        pos += len(prompt) + len(response)
    assert spans == expected


# A few spelled out in full, so the golden file is checked against LLaMA-Factory's source by eye too.
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


@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
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


@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
def test_ids_and_labels_are_llamafactorys(name: str, tokenizer: Any) -> None:
    """LLaMA-Factory tokenizes each prompt and answer on its own; we tokenize the whole text once.
    The tiny tokenizer has no bos token (LLaMA-Factory then adds none) and ends with <|im_end|>."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token
    for case, (messages, system) in CASES.items():
        ours = with_system(messages, system)
        template = resolve_template(name, tokenizer)
        out = encode_batch(
            {"messages": [ours], "tools": [None]},
            tokenizer=tokenizer,
            template=template,
            cutoff_len=4096,
            train_on="assistant",
        )
        ids, labels = [], []
        for prompt, response in golden_pairs(name, case):
            prompt, response = (t.replace(BOS, bos).replace(EOS, eos) for t in (prompt, response))
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            response_ids = tokenizer.encode(response, add_special_tokens=False)
            ids += prompt_ids + response_ids
            labels += [IGNORE] * len(prompt_ids) + response_ids
        assert out["input_ids"][0] == ids
        assert out["labels"][0] == labels
