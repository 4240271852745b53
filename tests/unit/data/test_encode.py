"""Worker processes and their count: the container's CPU limit, and the same columns from any worker count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer.data import encode as enc
from kubetune.trainer.data.formats import Mapping, to_conversation
from kubetune.trainer.data.kinds import SFT
from kubetune.trainer.templates import resolve_template


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


def test_the_cgroup_v2_cpu_limit_caps_the_workers_rounded_up(tmp_path: Path) -> None:
    assert enc.cpu_limit(cgroup(tmp_path / "one", {"cpu.max": "100000 100000"})) == 1
    assert enc.cpu_limit(cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    assert enc.cpu_limit(cgroup(tmp_path / "1.5", {"cpu.max": "150000 100000"})) == min(2, affinity())
    assert enc.cpu_limit(cgroup(tmp_path / "none", {"cpu.max": "max 100000"})) == affinity()


def test_the_cgroup_v1_cfs_quota_caps_the_workers(tmp_path: Path) -> None:
    v1 = {"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    assert enc.cpu_limit(cgroup(tmp_path / "v1", v1)) == 1
    unlimited = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    assert enc.cpu_limit(cgroup(tmp_path / "unlimited", unlimited)) == affinity()
    assert enc.cpu_limit(tmp_path / "no-cgroup-files") == affinity()


def test_default_workers_follow_the_rows_and_the_cpu_limit(tmp_path: Path) -> None:
    limit = cgroup(tmp_path, {"cpu.max": "100000 100000"})
    assert enc.default_workers(100 * enc.ROWS_PER_WORKER, limit) == 1
    assert enc.default_workers(10, tmp_path / "none") == 1
    assert enc.default_workers(2 * enc.ROWS_PER_WORKER, tmp_path / "none") == min(2, affinity())


@pytest.mark.parametrize("workers", [2, 3])
def test_forked_workers_encode_the_same_columns_in_the_same_order(tokenizer: Any, workers: int) -> None:
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}. " * (i + 1)} for i in range(7)]
    convs = [to_conversation(row, "alpaca", Mapping()) for row in rows]
    options = {"tokenizer": tokenizer, "template": resolve_template("auto", tokenizer), "cutoff_len": 24}
    one = enc.encode(convs, SFT, 1, train_on="assistant", **options)
    many = enc.encode(convs, SFT, workers, train_on="assistant", **options)
    assert many.equals(one)
    assert one.num_rows == 7 and one.column("status").to_pylist().count(1) > 0  # some were cut to cutoffLen
    assert enc.encode([], SFT, workers, train_on="assistant", **options).num_rows == 0


@pytest.mark.parametrize("model", ["tiny_model_dir", "tiny_base_model_dir"])
def test_data_check_loads_the_tokenizer_autotokenizer_loads(model: str, request: pytest.FixtureRequest) -> None:
    """`data check` loads a generic tokenizer by its class, to skip importing torch: the same tokenizer."""
    from transformers import AutoTokenizer

    from kubetune.cli.data import _from_pretrained

    folder = request.getfixturevalue(model)
    ours, auto = _from_pretrained(str(folder)), AutoTokenizer.from_pretrained(folder)
    assert type(ours) is type(auto)
    assert ours.special_tokens_map == auto.special_tokens_map and ours.chat_template == auto.chat_template
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    assert ours(text, return_offsets_mapping=True).data == auto(text, return_offsets_mapping=True).data
    assert ours.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()


def test_data_check_starts_without_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Q?", "output": "A."}\n')
    probe = (
        "import sys, runpy; sys.argv = ['kubetune', 'data', 'check', sys.argv[1], '--model', sys.argv[2], "
        "'--no-preview']\ntry:\n    runpy.run_module('kubetune.cli', run_name='__main__')\nexcept SystemExit as exc:\n"
        "    assert not exc.code, exc.code\nprint('torch imported:', 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(data), str(tiny_model_dir)], capture_output=True, text=True, check=True
    )
    assert "torch imported: False" in done.stdout
