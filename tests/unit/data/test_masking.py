"""Labels checked token by token on known conversations: assistant turns only, each with its end-of-turn token."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.trainer.data.tokenize import DROPPED, IGNORE, OK, TRUNCATED, encode_batch
from kubetune.trainer.templates import render, resolve_template

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "The answer is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "It is 6."},
]

# What each template must train for CONV: the answer and its end-of-turn, per assistant turn.
EXPECTED = {
    "auto": ["The answer is 4.<|im_end|>\n", "It is 6.<|im_end|>\n"],
    "chatml": ["The answer is 4.<|im_end|>\n", "It is 6.<|im_end|>\n"],
    "llama3": ["The answer is 4.<|eot_id|>", "It is 6.<|eot_id|>"],
    "alpaca": ["The answer is 4.<|im_end|>\n\n", "It is 6.<|im_end|>\n\n"],
    "mistral": [" The answer is 4.<|im_end|>", " It is 6.<|im_end|>"],
    "gemma": ["The answer is 4.<end_of_turn>\n", "It is 6.<end_of_turn>\n"],
}


def encode(
    tokenizer: Any,
    template_name: str,
    messages: list[dict[str, str]],
    *,
    cutoff: int = 1024,
    train_on: str = "assistant",
) -> dict[str, Any]:
    template = resolve_template(template_name, tokenizer)
    out = encode_batch(
        {"messages": [messages], "tools": [None]},
        tokenizer=tokenizer,
        template=template,
        cutoff_len=cutoff,
        train_on=train_on,
    )
    one = {k: v[0] for k, v in out.items()}
    one["text"] = render(template, messages, special_tokens=tokenizer.special_tokens_map)
    return one


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    return spans


def expected_trained(text: str, segments: list[str]) -> list[tuple[int, int]]:
    """Character ranges of the segments, found in order in the rendered text."""
    ranges, pos = [], 0
    for seg in segments:
        start = text.index(seg, pos)
        ranges.append((start, start + len(seg)))
        pos = start + len(seg)
    return ranges


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_assistant_answers_and_their_end_of_turn_are_trained(name: str, tokenizer: Any) -> None:
    enc = encode(tokenizer, name, CONV)
    text, ids, labels = enc["text"], enc["input_ids"], enc["labels"]
    ranges = expected_trained(text, EXPECTED[name])
    offsets = token_spans(tokenizer, text)
    assert len(offsets) == len(ids) == len(labels)
    for i, ((a, b), tid, label) in enumerate(zip(offsets, ids, labels, strict=True)):
        inside = any(lo <= a < hi for lo, hi in ranges)
        if inside:
            assert label == tid, f"{name}: token {i} {text[a:b]!r} is part of an answer but is not trained"
        else:
            assert label == IGNORE, f"{name}: token {i} {text[a:b]!r} is prompt but is trained"
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert trained == "".join(EXPECTED[name])
    assert enc["status"] == OK and enc["trainable"] == sum(lab != IGNORE for lab in labels)


@pytest.mark.parametrize("name", ["auto", "gemma", "alpaca"])
def test_each_assistant_turn_trains_its_end_of_turn_token(name: str, tokenizer: Any) -> None:
    enc = encode(tokenizer, name, CONV)
    stop = resolve_template(name, tokenizer).stop_tokens[0]
    stop_id = tokenizer.convert_tokens_to_ids(stop) if stop in tokenizer.get_vocab() else None
    if stop_id is not None:
        assert enc["labels"].count(stop_id) == 2, "one trained end-of-turn per assistant turn"
        masked_stops = [
            t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if t == stop_id and lab == IGNORE
        ]
        # chatml also ends the system and user turns with <|im_end|>: those stay masked
        assert len(masked_stops) == (3 if name == "auto" else 0)
    else:  # gemma's <end_of_turn> is plain text for this tokenizer: its characters are trained
        trained = tokenizer.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE])
        assert trained.count(stop) == 2


def test_last_turn_only(tokenizer: Any) -> None:
    enc = encode(tokenizer, "chatml", CONV, train_on="lastTurn")
    trained = tokenizer.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE])
    assert trained == "It is 6.<|im_end|>\n"


def test_train_on_all_trains_every_token_but_the_first(tokenizer: Any) -> None:
    enc = encode(tokenizer, "chatml", CONV, train_on="all")
    assert enc["labels"][0] == IGNORE
    assert enc["labels"][1:] == enc["input_ids"][1:]


def test_truncation_keeps_whole_turns_when_one_fits(tokenizer: Any) -> None:
    full = encode(tokenizer, "chatml", CONV)
    first_turn_end = full["text"].index("It is 6.")  # within the second answer's prompt area
    n_first = len(tokenizer(full["text"][:first_turn_end], add_special_tokens=False)["input_ids"])
    enc = encode(tokenizer, "chatml", CONV, cutoff=len(full["input_ids"]) - 3)
    assert enc["status"] == TRUNCATED and enc["n_full"] == len(full["input_ids"])
    assert len(enc["input_ids"]) < n_first  # cut after the first answer, not mid-way through the second
    trained = tokenizer.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE])
    assert trained == "The answer is 4.<|im_end|>\n"


def test_truncation_never_leaves_an_example_without_a_trainable_token(tokenizer: Any) -> None:
    long_prompt = [{"role": "user", "content": "Explain step by step. " * 40}, {"role": "assistant", "content": "No."}]
    enc = encode(tokenizer, "chatml", long_prompt, cutoff=32)
    assert enc["status"] == DROPPED and enc["input_ids"] == [] and enc["trainable"] == 0
    assert "cutoffLen 32" in enc["error"]

    cut_answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Kubernetes runs jobs. " * 20}]
    enc = encode(tokenizer, "chatml", cut_answer, cutoff=32)
    assert enc["status"] == TRUNCATED and len(enc["input_ids"]) == 32 and enc["trainable"] > 0


def test_multibyte_text_masks_on_character_boundaries(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Grüße 👋 ¿qué?"}, {"role": "assistant", "content": "¡Hola! 👋 日本"}]
    enc = encode(tokenizer, "chatml", messages)
    trained = tokenizer.decode([t for t, lab in zip(enc["input_ids"], enc["labels"], strict=True) if lab != IGNORE])
    assert trained == "¡Hola! 👋 日本<|im_end|>\n"
