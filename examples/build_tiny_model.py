"""Build the quickstart's base model offline: a tiny Llama with random weights and a BPE tokenizer
trained in-process (no model hub needed).

    python examples/build_tiny_model.py [OUT_DIR]     # default: runs/tiny-model

`make quickstart` runs this before `kubetune run examples/quickstart.yaml --local`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kubetune.devtools.tiny import build_tiny_model

if __name__ == "__main__":
    default = Path(__file__).resolve().parent.parent / "runs" / "tiny-model"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    # A little wider than the unit-test model so the quickstart visibly learns its facts.
    print(build_tiny_model(out, chat_template=None, hidden_size=128, num_layers=2))
