#!/usr/bin/env python3
"""Write tests/fixtures/llamafactory-0.9.5/golden_templates.json with LLaMA-Factory's own template code.

For every named template of ours and a few conversations (plain, multi-turn, with a system prompt,
with a <think> block; and with tools: a single call, a call with its result and the final answer,
parallel calls, a system prompt with tools), it records the (prompt, response) text pairs
LLaMA-Factory's `Template.encode_multiturn` produces, the pairs whose response part carries loss.
For the `efficient_eos` templates (glm4, gemma2), whose labels are not the response text's own
pieces, it also records what LLaMA-Factory's supervised processor (`_encode_data_example`) makes of
each conversation: its input and label pieces, an eos label where each next prompt starts and an
eos appended. A conversation LLaMA-Factory refuses (glm4's parallel calls) is recorded as its error.
For the first rows of LLaMA-Factory's glaive_toolcall_en_demo.json (the committed excerpt) it
records a digest of those pairs per row under qwen, qwen3, chatml and llama3. The unit tests
(tests/unit/llamafactory/test_lf_templates.py) compare our rendering against this file and do not
need LLaMA-Factory.

LLaMA-Factory is not installed for this: its data/template.py, formatter.py, tool_utils.py,
data_utils.py, processor/processor_utils.py and processor/supervised.py are read from a git checkout
or mirror at the given revision and run as they are, with small stand-ins (its logger, its
constants' IGNORE_INDEX, and mm_plugin, which only multimodal rows use and which here passes
messages and ids through); llama3's tool prompt, which holds the day it runs, is given a fixed day
(TOOL_DATE). The tokenizer is a
stand-in too: it "encodes" a text piece as itself and bos/eos as "<s>"/"</s>", so joining the ids
gives the text LLaMA-Factory tokenizes, piece by piece.

Usage: python scripts/llamafactory-golden-templates.py --lf-repo PATH/TO/LLaMA-Factory [--rev v0.9.5]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "llamafactory-0.9.5"
TARGET = FIXTURES / "golden_templates.json"
GLAIVE = FIXTURES / "data" / "glaive_toolcall_en_demo_head.json"
GLAIVE_TEMPLATES = ("qwen", "qwen3", "chatml", "llama3")
TOOL_DATE = datetime.datetime(2024, 7, 26)

PLAIN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
MULTI = [*PLAIN, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "It's 6.\nDone."}]
THOUGHT = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nBecause."}]
# case -> (messages, system)
CASES: dict[str, tuple[list[dict[str, str]], str]] = {
    "plain": (PLAIN, ""),
    "multi-turn": (MULTI, ""),
    "system": (MULTI, "Be brief."),
    "with a thought": (THOUGHT, "Be brief."),
}

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city, °C.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "array", "items": {"type": "integer"}, "description": "Days ahead"},
            },
            "required": ["city"],
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        },
    },
]
ASK = {"role": "user", "content": "Weather in Zürich?"}
CALL = {"role": "function", "content": '{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2]}}'}
RESULT = {"role": "observation", "content": '{"temp": 21}'}
ANSWER = {"role": "assistant", "content": "21 °C."}
PARALLEL = {
    "role": "function",
    "content": '[{"name": "get_weather", "arguments": {"city": "Bern"}}, '
    '{"name": "add", "arguments": {"a": 1, "b": 2}}]',
}
# case -> (messages in LLaMA-Factory's roles: user, assistant, function, observation; system; tools JSON)
TOOL_CASES: dict[str, tuple[list[dict[str, str]], str, str]] = {
    "single call": ([ASK, CALL], "", json.dumps(TOOLS[:1], ensure_ascii=False)),
    "call, result, answer": ([ASK, CALL, RESULT, ANSWER], "", json.dumps(TOOLS, ensure_ascii=False)),
    "parallel calls": ([ASK, PARALLEL], "", json.dumps(TOOLS, ensure_ascii=False)),
    "system and tools": (
        [ASK, CALL, RESULT, ANSWER, PLAIN[0], PLAIN[1]],
        "Be brief.",
        json.dumps(TOOLS, ensure_ascii=False),
    ),
}
# LLaMA-Factory's sharegpt roles, as its dataset_info defaults name them.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "function", "observation": "observation"}


def digest(pairs: list[list[str]]) -> str:
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()[:16]


class PieceTokenizer:
    """Ids are the text pieces themselves, so the encoding can be read back as text."""

    bos_token, eos_token = "<s>", "</s>"
    bos_token_id, eos_token_id = "<s>", "</s>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return [text]

    def convert_tokens_to_ids(self, token: str) -> str:
        return token


def load_templates(lf_repo: str, rev: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp()) / "llamafactory"
    (root / "data").mkdir(parents=True)
    (root / "extras").mkdir()
    (root / "data" / "processor").mkdir()
    for name in (
        "template",
        "formatter",
        "tool_utils",
        "data_utils",
        "processor/processor_utils",
        "processor/supervised",
    ):
        source = subprocess.run(
            ["git", "-C", lf_repo, "show", f"{rev}:src/llamafactory/data/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (root / "data" / f"{name}.py").write_text(source)
    for package in ("", "data", "data/processor", "extras"):
        (root / package / "__init__.py").write_text("")
    (root / "extras" / "constants.py").write_text("IGNORE_INDEX = -100\n")
    (root / "extras" / "logging.py").write_text(
        "class _Logger:\n"
        "    def __getattr__(self, name):\n"
        "        return lambda *a, **k: None\n"
        "def get_logger(name=None):\n"
        "    return _Logger()\n"
    )
    (root / "data" / "mm_plugin.py").write_text(
        "class _TextOnly:\n"
        "    def process_messages(self, messages, *args):\n"
        "        return messages\n"
        "    def process_token_ids(self, input_ids, labels, *args):\n"
        "        return input_ids, labels\n"
        "def get_mm_plugin(*args, **kwargs):\n"
        "    return _TextOnly()\n"
    )
    sys.path.insert(0, str(root.parent))
    tool_utils = __import__("llamafactory.data.tool_utils", fromlist=["datetime"])

    class FixedDay(datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> FixedDay:
            return cls.fromtimestamp(TOOL_DATE.timestamp())

    tool_utils.datetime = FixedDay
    module = __import__("llamafactory.data.template", fromlist=["TEMPLATES"])
    templates: dict[str, Any] = module.TEMPLATES
    return templates


def supervised_encoder(templates: dict[str, Any], tokenizer: PieceTokenizer) -> Any:
    """LLaMA-Factory's SupervisedDatasetProcessor._encode_data_example (default data arguments, no cutoff)."""
    import types

    supervised = __import__("llamafactory.data.processor.supervised", fromlist=["SupervisedDatasetProcessor"])
    data_args = types.SimpleNamespace(cutoff_len=1 << 20, mask_history=False, train_on_prompt=False)

    def encode(name: str, messages: list[dict[str, str]], system: str, tools: str | None) -> dict[str, Any]:
        processor = supervised.SupervisedDatasetProcessor(
            template=templates[name], tokenizer=tokenizer, processor=None, data_args=data_args
        )
        try:
            ids, labels = processor._encode_data_example(
                messages[:-1], messages[-1:], system or None, tools, [], [], []
            )
        except ValueError as exc:
            return {"error": str(exc)}
        return {"input_ids": ids, "labels": labels}

    return encode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-repo", required=True, help="a LLaMA-Factory git checkout or mirror")
    parser.add_argument("--rev", default="v0.9.5", help="the revision to read (default v0.9.5)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from kubetune.trainer.template_layouts import LAYOUTS

    templates = load_templates(args.lf_repo, args.rev)
    tokenizer = PieceTokenizer()
    golden: dict[str, Any] = {
        "revision": args.rev,
        "cases": CASES,
        "tool_date": TOOL_DATE.strftime("%d %b %Y"),
        "tool_cases": TOOL_CASES,
        "templates": {},
        "glaive": {},
        "supervised": {},
    }
    supervised = supervised_encoder(templates, tokenizer)

    def encode(name: str, messages: list[dict[str, str]], system: str, tools: str | None) -> list[list[str]] | str:
        try:
            pairs = templates[name].encode_multiturn(tokenizer, messages, system or None, tools)
        except ValueError as exc:  # a conversation the template refuses: its error
            return str(exc)
        return [["".join(prompt), "".join(response)] for prompt, response in pairs]

    for name, layout in LAYOUTS.items():
        cases = {case: (messages, system, None) for case, (messages, system) in CASES.items()} | TOOL_CASES
        golden["templates"][name] = {case: encode(name, *conversation) for case, conversation in cases.items()}
        if layout.efficient_eos:
            golden["supervised"][name] = {case: supervised(name, *conversation) for case, conversation in cases.items()}
    rows = json.loads(GLAIVE.read_text(encoding="utf-8"))
    for name in GLAIVE_TEMPLATES:
        digests = []
        for row in rows:
            turns = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]
            digests.append(digest(encode(name, turns, "", row["tools"])))
        golden["glaive"][name] = digests
    TARGET.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)} ({len(golden['templates'])} templates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
