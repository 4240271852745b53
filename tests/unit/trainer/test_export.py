"""The streaming merge against peft's own merge, on the tiny model (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kubetune.trainer.export import (
    Probe,
    check_template,
    iter_tensors,
    peft_merge,
    read_tensor,
    resave_weights,
    stream_merge,
    streamable,
    tensor_infos,
    write_generation_config,
    write_sharded,
)
from kubetune.trainer.failures import TrainerError


def _adapter(tiny_model_dir, out, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora))
    # A fresh adapter is a no-op (B = 0); give B values so the merge has something to get wrong.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(str(out))
    return model


@pytest.mark.parametrize("rslora", [False, True])
def test_stream_merge_matches_adapter_logits(tiny_model_dir, tmp_path, rslora):
    from transformers import AutoModelForCausalLM

    adapter = _adapter(tiny_model_dir, tmp_path / "adapter", use_rslora=rslora).eval()
    assert streamable(tmp_path / "adapter")
    # A tiny shard size forces several shards and an index, like a real 7B model at 5GB.
    shards = stream_merge(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged", shard_bytes=100_000)
    assert len(shards) > 1
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)

    (tmp_path / "merged" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.randint(0, 400, (2, 24))
    with torch.no_grad():
        want = adapter(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-3)  # the adapter changes the output...
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # ...and the merge keeps the change


def test_dora_adapters_merge_through_peft(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = _adapter(tiny_model_dir, tmp_path / "adapter", use_dora=True).eval()
    assert not streamable(tmp_path / "adapter")  # the magnitude vector needs the module to merge
    peft_merge(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged", 100_000, trust=False)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.randint(0, 400, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_streamed_files_are_real_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(4, dtype=torch.int64),
        "c": torch.randn(2).bfloat16(),
        "scalar": torch.tensor(2.5),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    infos = tensor_infos(tmp_path)
    assert write_sharded(tmp_path / "one", infos, 10**9, read_tensor) == ["model.safetensors"]
    names = write_sharded(tmp_path / "many", infos, 30, read_tensor)  # a (60 B) | b (32 B) | c + scalar
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in range(1, 4)]
    for out in (tmp_path / "one" / "model.safetensors", *(tmp_path / "many" / n for n in names)):
        for name, tensor in load_file(str(out)).items():  # the reference reader accepts our files
            torch.testing.assert_close(tensor, tensors[name])


def test_reading_keeps_no_weight_file_mapped(tiny_model_dir, tmp_path):
    # A map kept open across a shard keeps every page read so far in the process's RSS.
    infos = tensor_infos(tiny_model_dir)
    weights = str((tiny_model_dir / "model.safetensors").resolve())

    def mapped() -> bool:
        return weights in Path("/proc/self/maps").read_text()

    seen = []

    def produce(info):
        seen.append(mapped())  # the previous tensor was written and dropped
        return read_tensor(info)

    write_sharded(tmp_path / "out", infos, 10**9, produce)
    assert len(seen) == len(infos) > 1
    assert not any(seen) and not mapped()


def test_resave_casts_floats_to_the_base_dtype(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(4, 4), "ids": torch.arange(3)}, str(tmp_path / "model.safetensors"))
    resave_weights(tmp_path, tmp_path / "out", 10**9, torch.bfloat16)
    got = dict(iter_tensors(tmp_path / "out"))
    assert got["w"].dtype == torch.bfloat16 and got["ids"].dtype == torch.int64


def test_generation_config_stops_on_end_of_turn(tiny_base_model_dir, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(tiny_base_model_dir))  # eos is <|endoftext|>
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = write_generation_config(tiny_base_model_dir, tmp_path, tok, [im_end])
    assert ids == [tok.eos_token_id, im_end]
    assert GenerationConfig.from_pretrained(str(tmp_path)).eos_token_id == [tok.eos_token_id, im_end]


def test_template_check_names_the_first_difference(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    messages = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    check_template(tok, Probe(messages, list(ids)))
    trained_with = tok("### Instruction:\nWhat is 2 plus 2?\n\n### Response:\n4<|im_end|>")["input_ids"]
    with pytest.raises(TrainerError, match="first difference at token 0"):
        check_template(tok, Probe(messages, trained_with))


def test_merge_keeps_the_base_dtype(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "bf16-base"
    base.mkdir()
    weights = {k: v.bfloat16() for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items()}
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    _adapter(tiny_model_dir, tmp_path / "adapter")
    stream_merge(base, tmp_path / "adapter", tmp_path / "merged", shard_bytes=10**9)
    merged = dict(iter_tensors(tmp_path / "merged"))
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], weights[name])  # the delta was added...
    assert torch.equal(merged["model.norm.weight"], weights["model.norm.weight"])  # ...only where LoRA was
