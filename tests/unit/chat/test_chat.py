"""`kubetune chat` on a tiny exported model: the answer is the one the exported chat template and
generation config give (what `kubetune run --local`'s sample generation shows)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kubetune.cli import main
from kubetune.local import sample_generation

PROMPT = "Who are you?"


def _chat(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["chat", *args, "--max-new-tokens", "8"]) == 0
    return capsys.readouterr().out


def test_prompt_answers_once_with_the_exported_template(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _chat(capsys, str(tiny_model_dir), "--prompt", PROMPT)
    assert out == sample_generation(tiny_model_dir, PROMPT, max_new_tokens=8) + "\n"


def test_adapter_answers_like_the_merged_model(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # Random B as well as A: an adapter that changes the answer, unlike a freshly initialised one.
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(merged)
    (merged / "generation_config.json").write_bytes((tiny_model_dir / "generation_config.json").read_bytes())

    out = _chat(capsys, str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "--prompt", PROMPT)
    assert out == sample_generation(merged, PROMPT, max_new_tokens=8) + "\n"
    assert out != sample_generation(tiny_model_dir, PROMPT, max_new_tokens=8) + "\n"


def test_system_prompt_and_earlier_turns_reach_the_template(tiny_model_dir: Path) -> None:
    from kubetune.cli.chat import Chat

    chat = Chat(str(tiny_model_dir), None, "You are terse.")
    first = chat.answer("Hello", max_new_tokens=4, temperature=0.0)
    text = chat.prompt_text("And then?")
    assert text.index("You are terse.") < text.index("Hello") < text.index("And then?")
    assert first in text
    assert text.endswith("<|im_start|>assistant\n")


def test_interactive_chat_until_an_empty_line(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n/reset\n{PROMPT}\n\nnever read\n"))
    out = _chat(capsys, str(tiny_model_dir))
    answers = [line.split("model> ", 1)[1] for line in out.splitlines() if "model> " in line]
    # /reset forgot the first turn: the second answer is the first one again.
    assert answers == [sample_generation(tiny_model_dir, PROMPT, max_new_tokens=8)] * 2
