"""Named templates train the text LLaMA-Factory 0.9.5 trains: same conversation text, same answer spans,
same token ids and labels.

The reference is tests/fixtures/llamafactory-0.9.5/golden_templates.json, written by
scripts/llamafactory-golden-templates.py with LLaMA-Factory's own template code (its
`Template.encode_multiturn`, piece by piece): for each template and conversation, plain or with
tools, the (prompt, response) text pairs whose response carries loss; and a digest of those pairs
for each row of an excerpt of LLaMA-Factory's glaive_toolcall_en_demo.json under qwen, qwen3,
chatml and llama3; and for the efficient_eos templates (glm4, gemma2) the input and label pieces of
LLaMA-Factory's supervised processor, whose eos labels are not the text's own tokens.
Rerun the script after adding a template.
Our templates are jinja built from `kubetune.trainer.template_layouts`; these tests hold the two
together, and need no LLaMA-Factory.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import v1alpha1 as api
from kubetune.trainer.data import formats as fm
from kubetune.trainer.data.tokenize import IGNORE, assistant_spans, encode_batch
from kubetune.trainer.template_layouts import LAYOUTS
from kubetune.trainer.templates import ChatTemplate, named_jinja, render, resolve_template

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory-0.9.5"
GOLDEN = json.loads((FIXTURES / "golden_templates.json").read_text(encoding="utf-8"))
GLAIVE_ROWS = json.loads((FIXTURES / "data" / "glaive_toolcall_en_demo_head.json").read_text(encoding="utf-8"))
# What the golden file's bos and eos pieces are; llama3's tool prompt holds the day, fixed there.
BOS, EOS = "<s>", "</s>"
SPECIAL = {"bos_token": BOS, "eos_token": EOS, "date_string": GOLDEN["tool_date"]}
CASES: dict[str, tuple[list[dict[str, str]], str]] = {k: (m, s) for k, (m, s) in GOLDEN["cases"].items()}
PLAIN = CASES["plain"][0]
# LLaMA-Factory's roles -> ours.
OUR_ROLE = {"user": "user", "assistant": "assistant", "function": "function", "observation": "tool"}
TOOL_CASES: dict[str, tuple[list[dict[str, str]], str, str]] = {
    case: ([{"role": OUR_ROLE[m["role"]], "content": m["content"]} for m in messages], system, tools)
    for case, (messages, system, tools) in GOLDEN["tool_cases"].items()
}


def golden_pairs(name: str, case: str) -> list[tuple[str, str]]:
    return [(prompt, response) for prompt, response in GOLDEN["templates"][name][case]]


def refused(name: str, case: str) -> str | None:
    """LLaMA-Factory's error for a conversation the template cannot write (glm4's parallel calls)."""
    entry = GOLDEN["templates"][name][case]
    return entry if isinstance(entry, str) else None


def with_system(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, *messages] if system else messages


def test_the_golden_file_covers_every_named_template() -> None:
    assert GOLDEN["revision"] == "v0.9.5"
    assert set(GOLDEN["templates"]) == set(api.TEMPLATE_NAMES) - {"auto"}
    assert all(set(cases) == set(CASES) | set(TOOL_CASES) for cases in GOLDEN["templates"].values())
    assert set(TOOL_CASES) == {"single call", "call, result, answer", "parallel calls", "system and tools"}
    assert set(GOLDEN["supervised"]) == {name for name, layout in LAYOUTS.items() if layout.efficient_eos}
    assert set(GOLDEN["supervised"]) == {"glm4", "gemma2"}


def expected_spans(pairs: list[tuple[str, str]]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for prompt, response in pairs:
        spans.append((pos + len(prompt), pos + len(prompt) + len(response)))
        pos += len(prompt) + len(response)
    return spans


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
def test_named_template_trains_what_llamafactory_trains(name: str, case: str) -> None:
    messages, system = CASES[case]
    pairs = golden_pairs(name, case)
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    text, spans = assistant_spans(template, with_system(messages, system), None, SPECIAL, "assistant")
    assert text == "".join(p + r for p, r in pairs)
    assert spans == expected_spans(pairs)


def tool_conversation(case: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """A tool case as our data layer carries it (checked by it), and as the templates read it."""
    messages, system, tools = TOOL_CASES[case]
    canonical = with_system(messages, system)
    fm.check_order(canonical)
    return fm.chat_messages(canonical), json.loads(tools)


@pytest.mark.parametrize("case", sorted(TOOL_CASES))
@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
def test_named_template_trains_tool_calls_as_llamafactory_does(name: str, case: str) -> None:
    """LLaMA-Factory's tool prompt in the system slot, its call format trained like an answer, the tool
    result as prompt in the template's observation slot."""
    chat, tools = tool_conversation(case)
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    error = refused(name, case)
    if error:
        with pytest.raises(Exception, match=error):
            assistant_spans(template, chat, tools, SPECIAL, "assistant")
        return
    pairs = golden_pairs(name, case)
    text, spans = assistant_spans(template, chat, tools, SPECIAL, "assistant")
    assert text == "".join(p + r for p, r in pairs)
    assert spans == expected_spans(pairs)


# LLaMA-Factory's own tool formats, spelled out for the first call of "call, result, answer".
CALLS = {
    "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2]}}\n</tool_call>'
    "<|im_end|>\n",
    "llama3": '{"name": "get_weather", "parameters": {"city": "Zürich", "days": [1, 2]}}<|eot_id|>',
    "chatml": 'Action: get_weather\nAction Input: {"city": "Zürich", "days": [1, 2]}<|im_end|>\n',
    "mistral": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2]}}]</s>',
}
RESULTS = {
    "qwen": '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
    "llama3": '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": '<|im_start|>tool\n{"temp": 21}<|im_end|>\n<|im_start|>assistant\n',
    "mistral": '[TOOL_RESULTS] {"content": {"temp": 21}}[/TOOL_RESULTS]',
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_tool_call_and_result_spelled_out(name: str) -> None:
    (_, call), (result, _) = golden_pairs(name, "call, result, answer")
    assert (call, result) == (CALLS[name], RESULTS[name])


def test_qwen_tool_prompt_is_in_the_system_block() -> None:
    prompt = golden_pairs("qwen", "system and tools")[0][0]
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions")
    assert '\n<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt


def lf_empty_system(name: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What LLaMA-Factory adds for a `tools: "[]"` row and we deliberately do not (docs/data.md): an empty
    system turn after the prefix, when the template has no default system prompt."""
    layout = LAYOUTS[name]
    if layout.default_system:
        return pairs
    prefix = layout.prefix.replace("{bos}", BOS)
    empty = layout.system.replace("{content}", "").replace("{eos}", EOS)
    (prompt, response), *rest = pairs
    return [(prefix + empty + prompt[len(prefix) :], response), *rest]


@pytest.mark.parametrize("name", sorted(GOLDEN["glaive"]))
def test_llamafactorys_glaive_tool_demo_renders_as_llamafactory_renders_it(name: str) -> None:
    """Rows of LLaMA-Factory's glaive_toolcall_en_demo.json, read by our data layer with its
    dataset_info.json entry (columns messages: conversations, tools: tools)."""
    mapping = fm.Mapping.from_spec(api.ColumnMapping(messages="conversations", tools="tools"), only_mapped=True)
    template = ChatTemplate(name=name, jinja=named_jinja(name))
    digests = GOLDEN["glaive"][name]
    assert len(digests) == len(GLAIVE_ROWS) == 50
    for i, row in enumerate(GLAIVE_ROWS):
        conv = fm.to_conversation(row, "sharegpt", mapping)
        tools = json.loads(conv.tools) if conv.tools else None
        text, spans = assistant_spans(template, fm.chat_messages(conv.messages), tools, SPECIAL, "assistant")
        starts = [0, *(end for _, end in spans[:-1])]
        pairs = [(text[start:a], text[a:b]) for start, (a, b) in zip(starts, spans, strict=True)]
        assert spans[-1][1] == len(text)
        if row["tools"] == "[]":
            pairs = lf_empty_system(name, pairs)
        encoded = json.dumps([list(p) for p in pairs], ensure_ascii=False).encode()
        assert hashlib.sha256(encoded).hexdigest()[:16] == digests[i], f"row {i}"


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


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def llamafactory_ids(name: str, case: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """LLaMA-Factory's ids and labels with a real tokenizer, from the golden pieces: each piece tokenized
    on its own (as LLaMA-Factory encodes each slot), bos/eos pieces as the tokenizer's tokens."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token
    # Training writes today into llama3's tool prompt, as LLaMA-Factory does.
    today = datetime.datetime.now().strftime("%d %b %Y")

    def encode(piece: str) -> list[int]:
        piece = piece.replace(BOS, bos).replace(EOS, eos).replace(GOLDEN["tool_date"], today)
        return list(tokenizer.encode(piece, add_special_tokens=False))

    ids: list[int] = []
    labels: list[int] = []
    if name not in GOLDEN["supervised"]:
        for prompt, response in golden_pairs(name, case):
            prompt_ids, response_ids = encode(prompt), encode(response)
            ids += prompt_ids + response_ids
            labels += [IGNORE] * len(prompt_ids) + response_ids
        return ids, labels
    # efficient_eos: a prompt piece may be labelled eos (LLaMA-Factory: [eos] + [IGNORE] * (len - 1)).
    record = GOLDEN["supervised"][name][case]
    for piece, label in zip(record["input_ids"], record["labels"], strict=True):
        piece_ids = encode(piece)
        ids += piece_ids
        if label == IGNORE:
            labels += [IGNORE] * len(piece_ids)
        elif label == piece:
            labels += piece_ids
        else:
            assert label == EOS, (piece, label)
            labels += [tokenizer.eos_token_id] + [IGNORE] * (len(piece_ids) - 1)
    return ids, labels


@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
def test_ids_and_labels_are_llamafactorys(name: str, tokenizer: Any) -> None:
    """LLaMA-Factory tokenizes each prompt and answer on its own; we tokenize the whole text once.
    The tiny tokenizer has no bos token (LLaMA-Factory then adds none) and ends with <|im_end|>."""
    cases = {case: (messages, system, None) for case, (messages, system) in CASES.items()} | TOOL_CASES
    template = resolve_template(name, tokenizer)
    assert template.efficient_eos == (name in GOLDEN["supervised"])
    for case, (messages, system, tools) in cases.items():
        out = encode_batch(
            {"messages": [with_system(messages, system)], "tools": [tools]},
            tokenizer=tokenizer,
            template=template,
            cutoff_len=4096,
            train_on="assistant",
        )
        error = refused(name, case)
        if error:
            assert GOLDEN["supervised"].get(name, {}).get(case, {"error": error}) == {"error": error}
            assert error in out["error"][0], case
            continue
        ids, labels = llamafactory_ids(name, case, tokenizer)
        assert out["error"][0] == "", case
        assert out["input_ids"][0] == ids, case
        assert out["labels"][0] == labels, case
