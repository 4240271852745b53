"""LLaMA-Factory's efficient_eos templates (glm4, gemma2): no eos in the text, an eos label where the next
turn starts and on an eos appended after the last answer; truncation keeps whole answers with that label;
the export check and the stop tokens see the template's text and its stops.
(LLaMA-Factory parity of ids and labels: tests/unit/llamafactory/test_lf_templates.py.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer.data.tokenize import IGNORE, OK, TRUNCATED, encode_batch
from kubetune.trainer.template_layouts import LAYOUTS
from kubetune.trainer.templates import render, resolve_template

CONV = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "The answer is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "It is 6."},
]


def encode(tokenizer: Any, name: str, *, cutoff: int = 4096, train_on: str = "assistant") -> dict[str, Any]:
    template = resolve_template(name, tokenizer)
    out = encode_batch(
        {"messages": [CONV], "tools": [None]},
        tokenizer=tokenizer,
        template=template,
        cutoff_len=cutoff,
        train_on=train_on,
    )
    return {k: v[0] for k, v in out.items()}


def text_ids(tokenizer: Any, name: str) -> list[int]:
    text = render(resolve_template(name, tokenizer), CONV, special_tokens=tokenizer.special_tokens_map)
    return list(tokenizer.encode(text, add_special_tokens=False))


def eos_labels(tokenizer: Any, out: dict[str, Any]) -> list[int]:
    """Positions labelled eos."""
    return [i for i, lab in enumerate(out["labels"]) if lab == tokenizer.eos_token_id]


def test_efficient_eos_is_declared_by_the_layout() -> None:
    assert {name for name, layout in LAYOUTS.items() if layout.efficient_eos} == {"glm4", "gemma2"}


@pytest.mark.parametrize("name", ["glm4", "gemma2"])
def test_the_next_turns_first_token_is_labelled_eos_and_an_eos_ends_the_example(name: str, tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    text = text_ids(tokenizer, name)
    out = encode(tokenizer, name)
    ids, labels = out["input_ids"], out["labels"]
    assert out["status"] == OK
    assert ids == [*text, eos], "the text's own ids, then the appended eos"
    first_eos, last_eos = eos_labels(tokenizer, out)
    assert ids[first_eos] != eos, "the next user turn keeps its token; only its label is eos"
    assert tokenizer.decode(ids[first_eos:]).startswith("<|user|>" if name == "glm4" else "<start_of_turn>user")
    assert last_eos == len(ids) - 1
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE]
    answers = tokenizer.decode([ids[i] for i in trained if i not in (first_eos, last_eos)])
    assert "The answer is 4." in answers and "It is 6." in answers and "3+3" not in answers


def test_gemma2_trains_gemmas_text_plus_the_eos_labels(tokenizer: Any) -> None:
    """The same turns as gemma (whose eos is its end-of-turn): only the eos labels are added."""
    gemma, gemma2 = encode(tokenizer, "gemma"), encode(tokenizer, "gemma2")
    assert gemma2["input_ids"] == [*gemma["input_ids"], tokenizer.eos_token_id]
    differs = [i for i, (a, b) in enumerate(zip(gemma["labels"], gemma2["labels"], strict=False)) if a != b]
    assert differs == eos_labels(tokenizer, gemma2)[:1]


def test_last_turn_labels_eos_after_the_last_answer_only(tokenizer: Any) -> None:
    out = encode(tokenizer, "glm4", train_on="lastTurn")
    assert eos_labels(tokenizer, out) == [len(out["input_ids"]) - 1]
    assert "The answer is 4." not in tokenizer.decode([t for t in out["labels"] if t != IGNORE])


def test_train_on_all_trains_the_text_and_the_appended_eos(tokenizer: Any) -> None:
    out = encode(tokenizer, "glm4", train_on="all")
    assert out["input_ids"] == [*text_ids(tokenizer, "glm4"), tokenizer.eos_token_id]
    assert out["labels"] == [IGNORE, *out["input_ids"][1:]]


def test_truncation_keeps_a_whole_answer_only_with_its_eos_label(tokenizer: Any) -> None:
    """Cut at the whole text (no room for the appended eos): the second answer would be kept without the
    label that teaches it to stop, so the cut falls after the first answer's eos label instead."""
    text = text_ids(tokenizer, "glm4")
    full = encode(tokenizer, "glm4")
    first_eos = eos_labels(tokenizer, full)[0]
    out = encode(tokenizer, "glm4", cutoff=len(text))
    assert out["status"] == TRUNCATED
    assert out["input_ids"] == full["input_ids"][: first_eos + 1]
    assert out["labels"] == full["labels"][: first_eos + 1]
    assert out["labels"][-1] == tokenizer.eos_token_id
    # With room for the eos label, nothing is cut.
    assert encode(tokenizer, "glm4", cutoff=len(text) + 1)["status"] == OK


def test_stop_tokens_are_the_eos_then_llamafactorys_stop_words(tokenizer: Any) -> None:
    assert resolve_template("glm4", tokenizer).stop_tokens == [tokenizer.eos_token, "<|user|>", "<|observation|>"]
    assert resolve_template("gemma2", tokenizer).stop_tokens == [tokenizer.eos_token, "<end_of_turn>"]


@pytest.mark.parametrize("name", ["glm4", "gemma2"])
def test_the_export_probe_renders_as_training_did(
    name: str, tokenizer: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The export check compares the exported template's rendering with the ids training gave the first
    conversation: the appended eos is a label, not template text, so it is not part of the probe."""
    import yaml

    from kubetune.trainer.config import Accelerator, load_run_config
    from kubetune.trainer.export import check_template
    from kubetune.trainer.recipe import _probe

    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": CONV}) + "\n")
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "e"},
        "spec": {
            "model": {"source": str(tiny_model_dir)},
            "template": name,
            "datasets": [{"source": str(tmp_path / "d.jsonl")}],
            "output": {"uri": str(tmp_path / "out")},
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cfg = load_run_config(
        str(tmp_path / "job.yaml"), {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}, Accelerator(cuda=False, bf16=False)
    )
    tok = copy.deepcopy(tokenizer)
    template = resolve_template(name, tok)
    probe = _probe(cfg, template, tok)
    assert probe.messages == CONV
    assert probe.input_ids == text_ids(tokenizer, name)
    template.apply_to(tok)
    check_template(tok, probe)


def test_the_data_report_does_not_warn_that_an_efficient_eos_template_never_stops(tokenizer: Any) -> None:
    """Its answers' text has no stop token by design: the eos label after them teaches the stop."""
    from kubetune.trainer.data.pipeline import _template_info
    from kubetune.trainer.data.report import DataReport

    for name, warns in (("glm4", False), ("empty", True)):
        report = DataReport()
        _template_info(resolve_template(name, tokenizer), tokenizer, report)
        assert any("will not learn to stop" in w for w in report.warnings) == warns, name


def test_data_check_previews_the_eos_labels(tokenizer: Any, write_jsonl: Any) -> None:
    """The eos label on the next turn's first token shows as [[eos]] before that (untrained) token, and
    the appended eos as a trained token."""
    from kubetune.trainer.data.pipeline import check_file

    path = write_jsonl("d.jsonl", [{"messages": CONV}])
    report, preview = check_file(str(path), tokenizer, resolve_template("glm4", tokenizer), cutoff_len=4096)
    assert report.train_examples == 1
    eos = tokenizer.eos_token
    assert f"[[\nThe answer is 4.]][[{eos}]]<|user|>\nAnd 3+3?<|assistant|>[[\nIt is 6.{eos}]]" in preview


@pytest.mark.parametrize("name", ["glm4", "gemma2", "qwen"])
def test_preference_answers_end_with_eos_as_llamafactory_appends_it(tokenizer: Any, name: str) -> None:
    # LF's pairwise.py / feedback.py append eos to each answer of an efficient_eos template; the
    # others end their answers with the template's own end-of-turn text already.
    from kubetune.trainer.data.preference import encode_pairs, encode_tagged

    template = resolve_template(name, tokenizer)
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    common = {"tokenizer": tokenizer, "template": template, "cutoff_len": 4096, "train_on": "assistant"}
    pairs = encode_pairs({"prompt": [prompt], "chosen": ["4."], "rejected": ["Five."], "tools": [None]}, **common)
    tagged = encode_tagged({"prompt": [prompt], "answer": ["4."], "desirable": [True], "tools": [None]}, **common)
    eos = tokenizer.eos_token_id
    answers = [pairs["chosen_ids"][0], pairs["rejected_ids"][0], tagged["completion_ids"][0]]
    if template.efficient_eos:
        assert all(a[-1] == eos and eos not in a[:-1] for a in answers), answers
    else:
        assert all(a.count(eos) <= 1 for a in answers), "an eos appended twice"
