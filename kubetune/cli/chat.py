"""`kubetune chat MODEL`: talk to an exported model in the terminal, or ask it once with --prompt."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ORDER = 25


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with an exported model (or a base model plus --adapter)",
        description="Chat in the terminal with a model kubetune exported: a directory, an s3:// URI (downloaded "
        "with the AWS_* credentials of this shell) or a hub id. Turns are formatted by the model's own chat "
        "template and generation stops at the end-of-turn token its generation_config.json names. With --prompt "
        "it answers once and exits. Runs on the GPU when there is one, else on the CPU (fine for small models).",
    )
    p.add_argument("model", metavar="MODEL", help="exported model: a path, s3://bucket/.../model/ or a hub id")
    p.add_argument("--adapter", help="a LoRA adapter (path or s3:// URI) to apply to MODEL")
    p.add_argument("--prompt", help="answer this one message and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 (the default) is greedy decoding, the same answer every time",
    )
    p.set_defaults(func=run)


def _local_dir(uri: str, into: Path) -> str:
    """A directory for `uri`: s3:// is downloaded; a path or a hub id is left to from_pretrained."""
    from kubetune import storage

    if not storage.is_remote(uri):
        return uri.removeprefix("file://")
    print(f"kubetune: downloading {uri}", file=sys.stderr, flush=True)
    return str(storage.download_dir(uri, into / uri.rstrip("/").rsplit("/", 1)[-1]))


class Chat:
    """A model, its tokenizer and generation config, and the conversation so far."""

    def __init__(self, model_dir: str, adapter_dir: str | None, system: str | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # An exported adapter ships the training tokenizer (with its chat template); prefer it.
        tokenizer_dir = (
            adapter_dir if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").exists() else model_dir
        )
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
        self.model = model.to(self.device).eval()
        try:
            self.generation = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            self.generation = GenerationConfig(eos_token_id=self.tokenizer.eos_token_id)
        self.system = system
        self.turns: list[dict[str, str]] = []

    def prompt_text(self, message: str) -> str:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [*self.turns, {"role": "user", "content": message}]
        if not self.tokenizer.chat_template:
            return message  # a base model without a template: plain completion
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def answer(self, message: str, *, max_new_tokens: int, temperature: float) -> str:
        import copy

        import torch

        inputs = self.tokenizer(self.prompt_text(message), return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(self.device)
        generation = copy.deepcopy(self.generation)
        generation.max_new_tokens = max_new_tokens
        generation.do_sample = temperature > 0
        if generation.do_sample:
            generation.temperature = temperature
        else:  # greedy: drop the sampling knobs so transformers does not warn they are unused
            generation.temperature, generation.top_p, generation.top_k = None, None, None
        generation.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**inputs, generation_config=generation)
        text = str(self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)).strip()
        self.turns += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return text


def run(args: argparse.Namespace) -> int:
    from kubetune.storage.errors import StorageError

    with tempfile.TemporaryDirectory(prefix="kubetune-chat-") as tmp:
        try:
            model_dir = _local_dir(args.model, Path(tmp) / "model")
            adapter_dir = _local_dir(args.adapter, Path(tmp) / "adapter") if args.adapter else None
        except (StorageError, FileNotFoundError) as exc:
            print(f"kubetune: error: {exc}", file=sys.stderr)
            return 1
        chat = Chat(model_dir, adapter_dir, args.system)
        options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        if args.prompt is not None:
            print(chat.answer(args.prompt, **options))
            return 0
        print(f"kubetune chat: {args.model} on {chat.device}. Empty line or Ctrl-D ends; /reset forgets the talk.")
        while True:
            try:
                message = input("you> ").strip()
            except EOFError:
                print()
                return 0
            if not message:
                return 0
            if message == "/reset":
                chat.turns.clear()
                continue
            print(f"model> {chat.answer(message, **options)}", flush=True)
