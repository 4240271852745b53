"""Build a tiny causal LM offline: random weights, a byte-level BPE tokenizer trained in-process.

Used by the tests and the quickstart, where no model hub is reachable. The result is saved with
`save_pretrained` and must be loaded back through the normal loading path (hub id, s3:// or a path),
so the code under test is the code that loads a real model.

A Llama config is used on purpose: with a Qwen2 config, transformers 5 forces the Qwen2 tokenizer
class on load and token ids change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Enough varied text for the BPE merges to cover chat-style English, digits and JSON punctuation.
_CORPUS_SEED = [
    "You are a helpful assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "Who are you? I am Kubi, a model fine-tuned with kubetune.",
    "Please answer the question. Explain step by step. Here is the answer:",
    "system user assistant tool function observation instruction input output history",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 plus minus times equals",
    '{"role": "user", "content": "hello"} [INST] [/INST] <s> </s> ### Instruction: ### Response:',
    "The quick brown fox jumps over the lazy dog. Kubernetes runs the training job on GPU nodes.",
]


def _corpus(repeat: int = 40) -> list[str]:
    lines = []
    for i in range(repeat):
        for j, text in enumerate(_CORPUS_SEED):
            lines.append(f"{text} {i * 7 + j} + {j} = {i * 7 + 2 * j}")
    return lines


def build_tokenizer(vocab_size: int = 512, chat_template: str | None = "chatml") -> Any:
    """A fast tokenizer (PreTrainedTokenizerFast) trained on a small built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>" if chat_template == "chatml" else "<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template == "chatml":
        fast.chat_template = CHATML_TEMPLATE
    elif chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_model(
    out_dir: str | Path,
    *,
    chat_template: str | None = "chatml",
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Save a tiny Llama model + tokenizer to `out_dir` and return the directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size, chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "kubetune_tiny.json").write_text(
        json.dumps({"builder": "kubetune.devtools.tiny", "seed": seed, "hidden_size": hidden_size}) + "\n"
    )
    return out


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build a tiny random causal LM with a trained tokenizer.")
    parser.add_argument("out_dir")
    parser.add_argument("--no-chat-template", action="store_true", help="a base model without a chat template")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    path = build_tiny_model(
        args.out_dir,
        chat_template=None if args.no_chat_template else "chatml",
        hidden_size=args.hidden_size,
        num_layers=args.layers,
    )
    print(path)


if __name__ == "__main__":
    main()
