from __future__ import annotations

import math
from pathlib import Path

import pytest

from kubetune.storage import StorageError
from kubetune.trainer.failures import ExitCode, TrainerError, check_loss, classify, write_failure


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_training(loss):
    with pytest.raises(TrainerError) as info:
        check_loss(loss, step=7)
    assert info.value.code is ExitCode.NAN
    assert "step 7" in info.value.line


@pytest.mark.parametrize("loss", [None, 0.0, 3.5])
def test_finite_loss_passes(loss):
    check_loss(loss, step=1)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (StorageError("cannot read s3://b/x: access denied"), ExitCode.STORAGE),
        (StorageError("cannot read s3://b/x: unreachable", permanent=False), ExitCode.STORAGE_UNAVAILABLE),
        (MemoryError(), ExitCode.OOM),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), ExitCode.OOM),
        (KeyError("boom"), ExitCode.INTERNAL),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ],
)
def test_classify(exc, code):
    err = classify(exc)
    assert err.code is code
    assert err.line.startswith("kubetune: error: ")
    assert "\n" not in err.line


def test_spec_and_data_errors_are_config_errors():
    from kubetune.api.validation import Problem, SpecError

    assert classify(SpecError([Problem("spec.model", "required field is missing")])).code is ExitCode.CONFIG


def test_failure_line_goes_to_stderr_and_termination_log(tmp_path, monkeypatch, capsys):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    err = TrainerError(ExitCode.MODEL, "no model at /models/x", "check spec.model.source")
    write_failure(err)
    assert capsys.readouterr().err.strip() == "kubetune: error: no model at /models/x: check spec.model.source"
    assert log.read_text().strip() == err.line


def test_each_failing_rank_appends_its_line(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    first = TrainerError(ExitCode.OOM, "out of memory", "lower the batch size")
    second = TrainerError(ExitCode.INTERNAL, "unexpected RuntimeError: connection closed by peer", "see the log")
    write_failure(first)
    write_failure(second)
    assert log.read_text().splitlines() == [first.line, second.line]


@pytest.mark.parametrize(
    ("torchrun", "ranks", "interrupted", "container"),
    [
        (0, [], False, 0),
        (1, [2], False, 2),  # bad config/data: permanent
        (1, [4], False, 4),
        (1, [5], False, 5),  # OOM: the same batch OOMs again
        (1, [6], False, 6),
        (1, [7], False, 7),
        (1, [143, 143], False, 143),  # preempted
        (1, [3], False, 3),  # storage refused (credentials, missing bucket): permanent
        (1, [8], False, 143),  # storage unavailable after the retry budget: retry
        (1, [1], False, 143),  # unknown/internal: retry
        (1, [], False, 143),  # a worker killed by a signal (node loss, OOM killer) leaves no code
        (-9, [], False, 143),
        (1, [1, 2], False, 2),  # a peer's connection error does not hide the cause
        (1, [130], True, 130),  # Ctrl-C on a local run
    ],
)
def test_container_exit_code(torchrun, ranks, interrupted, container):
    from kubetune.trainer.launch import container_exit_code

    assert container_exit_code(torchrun, ranks, interrupted) == container


def test_failing_rank_leaves_its_code_for_the_launcher(tmp_path, monkeypatch, capsys):
    from kubetune.trainer.launch import read_rank_codes

    monkeypatch.setenv("KUBETUNE_EXIT_DIR", str(tmp_path))
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("RANK", "3")
    write_failure(TrainerError(ExitCode.CONFIG, "invalid FineTuneJob", "fix it"))
    assert (tmp_path / "rank-3").read_text() == "2\n"
    monkeypatch.setenv("RANK", "0")
    write_failure(classify(RuntimeError("gloo connection closed")))
    assert sorted(read_rank_codes(tmp_path)) == [1, 2]


def test_storage_advice_is_the_backends_own(tmp_path):
    """A local path gets no S3 endpoint advice; an S3 refusal is not blamed on the data rows."""
    from kubetune import storage

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError) as local:
        storage.write_bytes(str(tmp_path / "a-file" / "out" / "x.json"), b"{}")
    line = classify(local.value).line
    assert classify(local.value).code is ExitCode.STORAGE
    assert "regular file" in line and "endpoint" not in line and "fix the rows" not in line


# --------------------------------------------------------------------------------------------
# docs/trainer.md's failure table is checked against the classifier and the launcher
# --------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[3] / "docs" / "trainer.md"


def _failure_table() -> list[tuple[int, str, int, str]]:
    text = DOCS.read_text()
    start = text.index("| exit | cause | container exit | kind |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        code, cause, container, kind = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((int(code), cause, int(container), kind))
    return rows


def _example(code: ExitCode) -> BaseException:
    """An exception that each exit code stands for, as the trainer meets it."""
    from kubetune.api.validation import Problem, SpecError

    return {
        ExitCode.INTERNAL: KeyError("boom"),
        ExitCode.CONFIG: SpecError([Problem("spec.model", "required field is missing")]),
        ExitCode.STORAGE: StorageError("cannot read s3://b/x: access denied", "check the credentials Secret"),
        ExitCode.MODEL: TrainerError(ExitCode.MODEL, "no model at /m", "check spec.model.source"),
        ExitCode.OOM: MemoryError(),
        ExitCode.NAN: TrainerError(ExitCode.NAN, "training loss is nan at step 5", "lower the learning rate"),
        ExitCode.EXPORT: TrainerError(ExitCode.EXPORT, "export check failed", "check the template"),
        ExitCode.STORAGE_UNAVAILABLE: StorageError("cannot read s3://b/x: unreachable", "wait", permanent=False),
        ExitCode.INTERRUPTED: KeyboardInterrupt(),
        ExitCode.PREEMPTED: TrainerError(ExitCode.PREEMPTED, "stopped by SIGTERM at step 3", "resumes"),
    }[code]


def test_failure_table_in_the_docs_is_what_the_code_does():
    from kubetune.trainer.failures import PERMANENT
    from kubetune.trainer.launch import container_exit_code

    rows = _failure_table()
    assert sorted(code for code, *_ in rows) == sorted(int(c) for c in ExitCode)  # every code, once
    for code, cause, container, kind in rows:
        exit_code = ExitCode(code)
        assert classify(_example(exit_code)).code is exit_code, cause
        assert container_exit_code(1, [code]) == container, cause
        expected = (
            "local" if exit_code is ExitCode.INTERRUPTED else "permanent" if exit_code in PERMANENT else "retryable"
        )
        assert kind == expected, cause
        if kind == "retryable":
            assert container in {130, 137, 138, 143}  # what Kubeflow's ExitCode policy restarts
        if kind == "permanent":
            assert container == code and 1 <= container <= 127
