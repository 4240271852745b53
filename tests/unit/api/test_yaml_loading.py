"""Every command that reads a FineTuneJob file reads it the same way, and hostile YAML is refused
with one line, fast, in bounded memory."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune.api.validation import MAX_DEPTH, MAX_FILE_BYTES, SpecError, load_documents
from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = (ROOT / "examples" / "quickstart.yaml").read_text()


def _duplicate_learning_rate() -> tuple[str, int, int]:
    """The quickstart with `learningRate` written twice in `training`, and the two lines."""
    lines = QUICKSTART.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("learningRate:"))
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    lines.insert(first + 1, f"{indent}learningRate: 0.5")
    return "\n".join(lines) + "\n", first + 1, first + 2


@pytest.mark.parametrize("command", ["validate", "render", "run"])
def test_a_duplicate_key_is_an_error_naming_the_key_and_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text, first, second = _duplicate_learning_rate()
    path = tmp_path / "job.yaml"
    path.write_text(text)
    args = {"validate": ["validate", "-q"], "render": ["render"], "run": ["run", "--local"]}[command]
    assert main([*args, str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{path}: not valid YAML at line {second}, column 5: duplicate key 'learningRate' (first at line {first})"
    ]


def test_a_second_block_of_the_same_section_is_a_duplicate_too() -> None:
    text = QUICKSTART + "  training:\n    epochs: 1\n"
    with pytest.raises(SpecError, match="duplicate key 'training'"):
        load_documents(text, "job.yaml")


def test_merge_keys_may_still_be_overridden() -> None:
    text = "base: &base {a: 1, b: 2}\nderived:\n  <<: *base\n  b: 3\n"
    [(_, doc)] = load_documents(text)
    assert doc["derived"] == {"a": 1, "b": 3}


def _billion_laughs() -> str:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    return text


def _limit_memory() -> None:
    # Without the fix the expansion eats memory until killed; fail the test instead of the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))


def test_a_billion_laughs_file_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "lol.yaml"
    path.write_text(_billion_laughs())
    assert path.stat().st_size < 1100
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "validate", "-q", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"{path}: not valid YAML at line 1, column 1: the document expands to more than 100000 nodes (YAML aliases?)"
    )
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], style: str
) -> None:
    if style == "flow":
        text = "spec: " + "[" * 20_000 + "]" * 20_000 + "\n"
    else:
        text = "".join("  " * i + f"k{i}:\n" for i in range(500)) + "  " * 500 + "x: 1\n"
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    assert main(["validate", "-q", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"nested more than {MAX_DEPTH} levels deep" in err[0], err


def test_an_absurdly_large_file_is_refused_without_reading_it_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as fh:
        fh.write(QUICKSTART)
        fh.write("# " + "x" * (MAX_FILE_BYTES + 10) + "\n")
    assert main(["validate", "-q", str(path)]) == 1
    assert capsys.readouterr().err.strip() == f"{path}: file is larger than 3 MiB, the API server's request limit"
