"""`kubetune run --local` owns its process tree and its output.

Killed with any signal it takes launcher, torchrun and trainers with it; a second run of the same
output is refused while the first lives; a run stopped after its manifest was written finished, and
running it again only reports it; a failed run says what failed in one line and keeps the rest in
its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.trainer.helpers import chat_rows, job, write_job, write_jsonl

pytestmark = pytest.mark.integration

MARKER = "KUBETUNE_TEST_RUN"


def _job(tmp_path: Path, model: Path, name: str = "owned", **spec: object) -> Path:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    return write_job(tmp_path / f"{name}.yaml", job(name, str(model), str(data), str(tmp_path / "out"), **spec))


def _long_job(tmp_path: Path, model: Path) -> Path:
    return _job(tmp_path, model, training={"maxSteps": 100000, "checkpointEverySteps": 10, "loggingSteps": 10})


class Run:
    """`kubetune run FILE --local` in the background, every process of it marked by one env variable."""

    def __init__(self, job_file: Path, cwd: Path) -> None:
        self.marker = uuid.uuid4().hex
        cwd.mkdir(parents=True, exist_ok=True)
        self.out, self.err = cwd / "stdout", cwd / "stderr"
        env = {**os.environ, MARKER: self.marker, "KUBETUNE_LOCAL_CACHE_DIR": str(cwd / "node-cache")}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("kubetune")), "run", str(job_file), "--local", "--no-sample"],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                text=True,
            )

    def processes(self) -> list[int]:
        found = []
        needle = f"{MARKER}={self.marker}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:  # gone, or a zombie
                    continue
        return found

    def wait_for(self, path: Path, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, self.stderr()[-3000:]
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL], ids=lambda s: s.name)
def test_killing_run_leaves_no_process_behind(sig: signal.Signals, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = Run(_long_job(tmp_path, tiny_model_dir), tmp_path / "cwd")
    run.wait_for(tmp_path / "out" / "checkpoints" / "checkpoint-10" / "COMPLETE")  # trainers are training
    assert len(run.processes()) >= 4  # kubetune, launcher, torchrun, trainer
    run.proc.send_signal(sig)
    run.finish(timeout=60)
    deadline = time.monotonic() + 30
    while (left := run.processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running after {sig.name} to kubetune run: {left}"
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_second_run_of_the_same_output_is_refused_while_the_first_lives(tiny_model_dir: Path, tmp_path: Path) -> None:
    job_file = _long_job(tmp_path, tiny_model_dir)
    first = Run(job_file, tmp_path / "first")
    first.wait_for(tmp_path / "out" / "checkpoints" / "checkpoint-10" / "COMPLETE")
    # Another directory, so another work dir: the output's own lock refuses it.
    second = Run(job_file, tmp_path / "second")
    assert second.finish(timeout=120) == 1
    assert f"kubetune: error: output {tmp_path / 'out'} is in use by another run (pid {first.proc.pid} on " in (
        second.stderr()
    )
    assert "running owned locally" not in second.stdout() and not second.processes()
    # Same directory, same work dir: refused as well, by the work dir's lock first.
    third = Run(job_file, tmp_path / "first")
    assert third.finish(timeout=120) == 1
    assert "kubetune: error: work dir " in third.stderr() and "is in use by another run" in third.stderr()
    assert first.proc.poll() is None  # the refused runs left the first one alone
    first.proc.send_signal(signal.SIGKILL)
    first.finish()


def test_a_run_stopped_after_its_manifest_finished(tiny_model_dir: Path, tmp_path: Path) -> None:
    job_file = _job(tmp_path, tiny_model_dir, training={"maxSteps": 10, "checkpointEverySteps": 10})
    run = Run(job_file, tmp_path / "cwd")
    manifest = tmp_path / "out" / "manifest.json"
    run.wait_for(manifest)
    run.proc.send_signal(signal.SIGTERM)  # the trainers are still cleaning up
    assert run.finish() == 0, run.stderr()[-3000:]
    assert "after it finished; the manifest is complete" in run.stdout()
    assert f"manifest      {manifest}" in run.stdout() and "failed" not in run.stderr()
    written = manifest.read_bytes()

    again = Run(job_file, tmp_path / "cwd")
    assert again.finish() == 0, again.stderr()[-3000:]
    assert "kubetune: owned already finished (its manifest records this spec); nothing to run" in again.stdout()
    assert f"manifest      {manifest}" in again.stdout() and "running owned locally" not in again.stdout()
    assert manifest.read_bytes() == written  # nothing was trained, exported or uploaded again


def test_a_failed_run_says_it_in_one_line_and_logs_the_traceback(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}] * 3)
    job_file = write_job(tmp_path / "bad.yaml", job("bad", str(tiny_model_dir), str(data), str(tmp_path / "out")))
    run = Run(job_file, tmp_path / "cwd")
    assert run.finish() == 2
    stderr = run.stderr()
    assert "kubetune: the run failed (exit 2): kubetune: error: invalid training data" in stderr
    assert "ChildFailedError" not in stderr and "Traceback" not in stderr, stderr
    log_line = next(line for line in stderr.splitlines() if line.startswith("kubetune: full log: "))
    log = Path(tmp_path / "cwd" / log_line.removeprefix("kubetune: full log: ")).read_text()
    assert "ChildFailedError" in log and "kubetune: error: invalid training data" in log
