"""`kubetune data check` on hostile rows, as a real process: bounded memory, each row reported, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Runs the command as its own child, so the peak RSS reported is that command's alone.
PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def test_an_8mb_row_a_100k_deep_row_and_a_duplicate_key_are_invalid_rows_in_bounded_memory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    big = {"instruction": "Summarise: " + "lorem ipsum dolor sit amet " * 300_000, "output": "ok"}  # 8.1 MB
    lines = [
        json.dumps(big),
        '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + ', "output": "x"}',
        '{"instruction": "q", "output": "a", "output": "b"}',
        json.dumps({"instruction": "Who are you?", "output": "I am Kubi."}),
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "kubetune.cli", "data", "check", str(path), "--model", str(tiny_model_dir)]
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # invalid rows, not a crash (2) or a kill
    assert "Traceback" not in out and "RecursionError" not in out
    assert f"{path} row 1: 8,100,013 characters of turns and tools, more than data.maxRowCharacters (262,144" in out
    assert f"{path} row 2: nested too deeply" in out
    assert f"{path} row 3: key 'output' appears twice in one JSON object" in out
    assert f"Preview: {path} row 4" in out
    peak_mb = int(out.split("peak_rss_kb ")[1].split()[0]) // 1024
    # Tokenizing the 8 MB row whole took 2.1 GB; the interpreter with transformers and datasets takes ~0.5 GB.
    assert peak_mb < 900, f"peak RSS {peak_mb} MB"
