"""Fatal errors as one clear line, an exit code per kind, and a place the operator can read them.

Every failure the trainer knows about becomes a `TrainerError(kind, what, todo)`. The entry point turns
it into `kubetune: error: <what>: <todo>` on stderr, the container termination log (Kubernetes
shows it as the pod's termination message, which the operator surfaces as the job's failure reason)
and a `stage: failed` progress report.
"""

from __future__ import annotations

import math
import os
import sys
from enum import IntEnum


class ExitCode(IntEnum):
    INTERNAL = 1
    CONFIG = 2  # the FineTuneJob or its data is wrong: retrying will not help
    STORAGE = 3  # wrong credentials, a missing bucket or key, an unwritable path: retrying will not help
    MODEL = 4
    OOM = 5
    NAN = 6
    EXPORT = 7
    # S3 kept failing transiently (unreachable, 5xx, throttling) for the whole KUBETUNE_STORAGE_RETRY_S.
    STORAGE_UNAVAILABLE = 8
    INTERRUPTED = 130  # Ctrl-C on a local run
    # 128 + SIGTERM: Kubeflow's ExitCode restart policy treats it as retryable, so a preempted pod
    # comes back and resumes from the checkpoint it just saved.
    PREEMPTED = 143


# Retrying reruns the same spec on the same data and storage: these fail the same way again. The
# launcher (launch.py) passes them through as the container's exit code; every other failure exits 143.
PERMANENT = frozenset({ExitCode.CONFIG, ExitCode.STORAGE, ExitCode.MODEL, ExitCode.OOM, ExitCode.NAN, ExitCode.EXPORT})


class TrainerError(Exception):
    """A failure with a known cause: what failed and what the user can do about it."""

    def __init__(self, code: ExitCode, what: str, todo: str) -> None:
        super().__init__(f"{what}: {todo}")
        self.code = code
        self.what = what
        self.todo = todo

    @property
    def line(self) -> str:
        return one_line(f"kubetune: error: {self.what}: {self.todo}")


def one_line(text: str, limit: int = 1000) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_loss(loss: float | None, step: int) -> None:
    """Stop at the first non-finite loss: continuing only burns GPU hours on a broken model."""
    if loss is not None and not math.isfinite(loss):
        raise TrainerError(
            ExitCode.NAN,
            f"training loss is {loss} at step {step}",
            "lower training.learningRate, keep maxGradNorm set, use bf16 instead of fp16, "
            "or check the data report for broken examples",
        )


def classify(exc: BaseException) -> TrainerError:
    """Map an exception raised anywhere in the run to a TrainerError."""
    if isinstance(exc, TrainerError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return TrainerError(ExitCode.INTERRUPTED, "interrupted", "run it again to resume from the last checkpoint")
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return TrainerError(
            ExitCode.OOM,
            f"out of memory ({one_line(str(exc), 200) or name})",
            "lower training.perDeviceBatchSize or cutoffLen, keep gradientCheckpointing on, use qlora or "
            "deepspeed zero3 with cpu offload, or request more memory",
        )
    if name == "SpecError":
        return TrainerError(ExitCode.CONFIG, f"invalid FineTuneJob ({exc})", "fix the spec and resubmit")
    if name == "DataValidationError":
        return TrainerError(
            ExitCode.CONFIG,
            f"invalid training data ({one_line(str(exc), 600)})",
            "fix the rows named above, or set data.invalidRows: skip",
        )
    if name == "StorageError":  # its message already names the backend and what to check there
        what, todo = one_line(getattr(exc, "what", str(exc)), 600), getattr(exc, "todo", "")
        if getattr(exc, "permanent", True):
            return TrainerError(ExitCode.STORAGE, what, todo or "check the URI and its access rights")
        return TrainerError(ExitCode.STORAGE_UNAVAILABLE, what, f"{todo}; the job is retried" if todo else "retried")
    return TrainerError(
        ExitCode.INTERNAL,
        f"unexpected {name}: {one_line(str(exc), 600)}",
        "see the trainer log above; report a bug if the spec and data look right",
    )


def termination_log_path() -> str | None:
    explicit = os.environ.get("KUBETUNE_TERMINATION_LOG")
    if explicit:
        return explicit
    default = "/dev/termination-log"
    if os.path.exists(default) and os.access(default, os.W_OK):
        return default
    return None


def write_failure(err: TrainerError) -> None:
    """Print the line to stderr, append it to the termination log and leave the code for the launcher.

    Every rank appends: the rank that failed first (the cause) is usually the first line, and the
    peers that then lose their connection add theirs after it."""
    print(err.line, file=sys.stderr, flush=True)
    write_exit_code(err.code)
    path = termination_log_path()
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(err.line + "\n")
        except OSError:
            pass  # the line is on stderr already; a read-only log must not hide the real error


def write_exit_code(code: int) -> None:
    """`$KUBETUNE_EXIT_DIR/rank-<RANK>`: torchrun reports every worker failure as exit 1, so this
    rank's own code reaches the container's exit status only through this file (see launch.py)."""
    exit_dir = os.environ.get("KUBETUNE_EXIT_DIR")
    if not exit_dir:
        return
    path = os.path.join(exit_dir, f"rank-{os.environ.get('RANK', '0')}")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(f"{int(code)}\n")
        os.replace(path + ".tmp", path)  # the launcher never reads half a number
    except OSError:
        pass  # the launcher then treats this rank's failure as unknown, which is retried
