#!/usr/bin/env python3
"""Write tests/fixtures/llamafactory-0.9.5/golden_templates.json with LLaMA-Factory's own template code.

For every named template of ours and a few conversations (plain, multi-turn, with a system prompt,
with a <think> block), it records the (prompt, response) text pairs LLaMA-Factory's
`Template.encode_multiturn` produces, the pairs whose response part carries loss. The unit tests
(tests/unit/llamafactory/test_lf_templates.py) compare our rendering against this file and do not
need LLaMA-Factory.

LLaMA-Factory is not installed for this: its data/template.py, formatter.py, tool_utils.py and
data_utils.py are read from a git checkout or mirror at the given revision and run as they are, with
two small stand-ins (its logger, and mm_plugin, which only multimodal rows use). The tokenizer is a
stand-in too: it "encodes" a text piece as itself and bos/eos as "<s>"/"</s>", so joining the ids
gives the text LLaMA-Factory tokenizes, piece by piece.

Usage: python scripts/llamafactory-golden-templates.py --lf-repo PATH/TO/LLaMA-Factory [--rev v0.9.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "tests" / "fixtures" / "llamafactory-0.9.5" / "golden_templates.json"

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
    for name in ("template", "formatter", "tool_utils", "data_utils"):
        source = subprocess.run(
            ["git", "-C", lf_repo, "show", f"{rev}:src/llamafactory/data/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (root / "data" / f"{name}.py").write_text(source)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "extras" / "__init__.py").write_text("")
    (root / "extras" / "logging.py").write_text(
        "class _Logger:\n"
        "    def __getattr__(self, name):\n"
        "        return lambda *a, **k: None\n"
        "def get_logger(name=None):\n"
        "    return _Logger()\n"
    )
    (root / "data" / "mm_plugin.py").write_text("def get_mm_plugin(*args, **kwargs):\n    return None\n")
    sys.path.insert(0, str(root.parent))
    module = __import__("llamafactory.data.template", fromlist=["TEMPLATES"])
    templates: dict[str, Any] = module.TEMPLATES
    return templates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lf-repo", required=True, help="a LLaMA-Factory git checkout or mirror")
    parser.add_argument("--rev", default="v0.9.5", help="the revision to read (default v0.9.5)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from kubetune.trainer.template_layouts import LAYOUTS

    templates = load_templates(args.lf_repo, args.rev)
    tokenizer = PieceTokenizer()
    golden: dict[str, Any] = {"revision": args.rev, "cases": CASES, "templates": {}}
    for name in LAYOUTS:
        per_case = {}
        for case, (messages, system) in CASES.items():
            pairs = templates[name].encode_multiturn(tokenizer, messages, system or None, None)
            per_case[case] = [["".join(prompt), "".join(response)] for prompt, response in pairs]
        golden["templates"][name] = per_case
    TARGET.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)} ({len(golden['templates'])} templates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
