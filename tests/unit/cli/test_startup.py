"""`kubetune --help` and `kubetune validate` must not pay for the training or operator stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml"
HEAVY = ("torch", "transformers", "datasets", "peft", "trl", "boto3", "botocore", "kopf", "kubernetes", "deepspeed")

PROBE = """
import json, sys
from kubetune.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["validate", "-q", str(EXAMPLE)], ["validate", "--cluster", "-q", str(EXAMPLE)]]
)
def test_light_commands_import_no_heavy_stack(argv):
    probe = PROBE.format(heavy=set(HEAVY))
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=False)
    imported = json.loads(done.stderr.strip().splitlines()[-1])
    assert imported == []
