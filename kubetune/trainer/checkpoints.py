"""Checkpoints in the output URI, auto-resume, pruning and preemption.

The HF Trainer writes its normal checkpoint directories locally (model/adapter, optimizer,
scheduler, RNG state per rank, trainer_state with the data position). After each save every node
uploads the files it wrote, and rank 0 writes `COMPLETE` last: a checkpoint without it is an upload
that was cut off and is never resumed from.

Uploads do not pause training: each runs on a thread from hard links of the saved files (the HF
Trainer may delete the directory at its next save), with at most one in flight per node (the next
save waits for it). `COMPLETE` is written at the first step boundary where every node's upload has
finished. A preemption waits for the in-flight upload within the grace period before exiting.

`COMPLETE` also holds the run identity (`run_identity`): a hash of the spec fields that shape
training. Only checkpoints of the same identity are resumed from or pruned; those of another
configuration under the same output are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.storage import StorageOptions
    from kubetune.trainer.collectives import CollectiveTimeouts
    from kubetune.trainer.config import Distributed

log = logging.getLogger("kubetune.trainer")

COMPLETE = "COMPLETE"
# Files of checkpoint_name(step) directories under the checkpoint prefix.
_CHECKPOINT = re.compile(rf"(?:^|/){PREFIX_CHECKPOINT_DIR}-(\d+)/(.+)$")


def scan(prefix: str, opts: StorageOptions) -> tuple[list[int], list[int]]:
    """(complete steps, incomplete steps) under the checkpoint prefix, each ascending."""
    from kubetune.storage import list_files

    files: dict[int, set[str]] = {}
    for uri in list_files(prefix, opts):
        m = _CHECKPOINT.search(uri[len(prefix.rstrip("/")) :])
        if m:
            files.setdefault(int(m.group(1)), set()).add(m.group(2))
    complete = sorted(s for s, names in files.items() if COMPLETE in names)
    incomplete = sorted(s for s, names in files.items() if COMPLETE not in names)
    return complete, incomplete


# Intervals only decide when to save, log or evaluate, kernels how fast a step runs, and the other
# settings how the run is carried out (timeouts, worker processes, where metrics go): changing them
# must not discard a run's progress.
_NOT_IDENTITY = {
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_steps",
    "logging_steps",
    "kernels",
    "ddp_timeout_seconds",
    "dataloader_workers",
    "report_to",
}
_DATA_NOT_IDENTITY = {"preprocessing_workers"}


def run_identity(spec: FineTuneJobSpec) -> str:
    """A hash of what shapes training: stage (and preference loss), model, datasets, data, template,
    method and training settings.

    Not the job's uid: `kubetune run --local` has none, and a FineTuneJob re-created with the same
    spec may legitimately continue its predecessor's checkpoints."""
    shaping = {
        "stage": str(spec.stage),
        "preference": spec.preference.model_dump(mode="json") if spec.preference is not None else None,
        "model": spec.model.model_dump(mode="json"),
        "datasets": [d.model_dump(mode="json") for d in spec.datasets],
        "data": spec.data.model_dump(mode="json", exclude=_DATA_NOT_IDENTITY),
        "template": str(spec.template),
        "method": spec.method.model_dump(mode="json"),
        "training": spec.training.model_dump(mode="json", exclude=_NOT_IDENTITY),
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def marker_text(step: int, run_id: str) -> bytes:
    return (json.dumps({"step": step, "run": run_id}) + "\n").encode()


def marker_run(prefix: str, step: int, opts: StorageOptions) -> str | None:
    """The run identity in a checkpoint's COMPLETE marker; None for a marker without one."""
    from kubetune.storage import StorageError, read_bytes

    try:
        data = json.loads(read_bytes(checkpoint_uri(prefix, step) + "/" + COMPLETE, opts))
    except ValueError:
        return None  # a plain step number: written before markers held an identity
    except StorageError as exc:
        # Pruned between listing and reading (another attempt still running): not a checkpoint to use.
        log.warning("could not read %s/%s: %s", checkpoint_uri(prefix, step), COMPLETE, exc)
        return None
    return data.get("run") if isinstance(data, dict) else None


def owned(prefix: str, steps: list[int], run_id: str, opts: StorageOptions) -> list[int]:
    return [s for s in steps if marker_run(prefix, s, opts) == run_id]


def checkpoint_name(step: int) -> str:
    """The HF Trainer's directory name for a step's checkpoint, locally and under the prefix."""
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def checkpoint_uri(prefix: str, step: int) -> str:
    from kubetune.storage import join

    return join(prefix, checkpoint_name(step))


def restore_latest(prefix: str, local_dir: Path, opts: StorageOptions, run_id: str) -> Path | None:
    """Download this run's newest complete checkpoint into local_dir; None when there is none (a fresh run).

    Local checkpoints left by an earlier process are dropped first: only what reached the output URI
    with its COMPLETE marker counts. Checkpoints of another configuration are never resumed from
    (their optimizer state and data position belong to different data or settings) nor deleted."""
    from kubetune.storage import download_dir

    shutil.rmtree(local_dir, ignore_errors=True)
    complete, _ = scan(prefix, opts)
    mine = owned(prefix, complete, run_id, opts)
    if not mine:
        if complete:
            log.warning(
                "checkpoints under %s belong to a different configuration; starting fresh "
                "(delete them or change output.uri)",
                prefix,
            )
        return None
    step = mine[-1]
    dest = local_dir / checkpoint_name(step)
    download_dir(checkpoint_uri(prefix, step), dest, opts)
    (dest / COMPLETE).unlink(missing_ok=True)
    log.info("resuming from %s (step %d)", checkpoint_uri(prefix, step), step)
    return dest


def restored_checkpoint(local_dir: Path) -> Path | None:
    """The checkpoint restore_latest put in local_dir, found by every rank of the node after it ran.

    restore_latest empties local_dir first, so whatever is there reached the output URI complete."""
    found = get_last_checkpoint(str(local_dir)) if local_dir.is_dir() else None
    return Path(found) if found else None


def prune(prefix: str, keep: int, opts: StorageOptions, run_id: str) -> list[int]:
    """Delete all but this run's newest `keep` complete checkpoints, and incomplete ones older than them.

    Complete checkpoints of another configuration are kept: they are someone's finished work."""
    from kubetune.storage import delete_prefix

    complete, incomplete = scan(prefix, opts)
    mine = owned(prefix, complete, run_id, opts)
    if not mine:
        return []
    doomed = mine[:-keep] + [s for s in incomplete if s < mine[-1]]
    for step in doomed:
        # The marker goes first so a half-deleted checkpoint is never taken for a complete one.
        delete_prefix(checkpoint_uri(prefix, step) + "/" + COMPLETE, opts)
        delete_prefix(checkpoint_uri(prefix, step), opts)
    return sorted(doomed)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# torchrun escalates SIGTERM to SIGKILL after --shutdown-timeout (270 s of the pod's 300 s, see
# render/pod.py trainer_command); waiting for an upload stops 30 s before that to exit cleanly.
PREEMPTION_UPLOAD_WAIT_S = 240.0


class Preemption:
    """SIGTERM sets a flag; training saves at the next step boundary and the process exits 143."""

    def __init__(self, upload_wait_s: float = PREEMPTION_UPLOAD_WAIT_S) -> None:
        self.requested = False
        self.upload_wait_s = upload_wait_s
        self._since: float | None = None
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint at the next step, then exiting")
        self.requested = True
        self._since = time.monotonic()

    def remaining_s(self) -> float:
        """How long a preempted process may still wait for uploads (counted from the signal on the rank
        that got it, from now on the others)."""
        if self._since is None:
            self._since = time.monotonic()
        return max(0.0, self.upload_wait_s - (time.monotonic() - self._since))

    def any_rank(self, device: Any) -> bool:
        """True when any rank was signalled, so that all ranks stop at the same step."""
        return any_rank([self.requested], device)[0]


def any_rank(flags: list[bool], device: Any) -> list[bool]:
    """Each flag OR-ed over all ranks, in one collective (every rank must call it at the same point)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    import torch

    tensor = torch.tensor([1 if f else 0 for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


class AlreadyTrained(Exception):
    """Raised inside trainer.train() when a resumed checkpoint is already the last step."""


class StopWhenFinished(TrainerCallback):
    """Resumed from the final checkpoint (a finished job run again), the HF Trainer would still run one
    more step before noticing max_steps when max_steps ends mid-epoch, changing the model. The
    checkpoint's weights, optimizer and data position are loaded by then, so stop right there; every
    rank stops at the same point, before any collective of the step."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.max_steps and state.global_step >= state.max_steps:
            raise AlreadyTrained()
        return control


Uploader = Callable[[Path, str, "StorageOptions"], Any]


def _upload_dir(local: Path, uri: str, opts: StorageOptions) -> Any:
    from kubetune.storage import upload_dir

    return upload_dir(local, uri, opts)


UPLOAD_NICENESS = 10


class _Upload:
    """One checkpoint upload on a daemon thread: a preempted process past its grace period exits without it."""

    def __init__(self, step: int, work: Callable[[], Any]) -> None:
        self.step = step
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(work,), name=f"checkpoint-{step}-upload", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            # Below training in the CPU scheduler (Linux: per thread, and the transfer threads started
            # from here inherit it): the upload fills idle CPU rather than slowing the steps.
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)
            work()
        except BaseException as exc:  # re-raised on the training thread by wait()
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """False when still running after `timeout`; the upload's own error is raised here."""
        if not self._done.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True


def _snapshot(src: Path, dest: Path) -> Path:
    """Hard links of a checkpoint's files (no copy), which outlive the HF Trainer deleting `src`."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:  # another file system or one without hard links
            shutil.copy2(s, d)

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, copy_function=link)
    return dest


class CheckpointSync(TrainerCallback):
    """Upload each saved checkpoint in the background, mark it complete, prune; stop and save on preemption."""

    def __init__(
        self,
        prefix: str,
        keep: int,
        opts: StorageOptions,
        dist: Distributed,
        preemption: Preemption,
        run_id: str,
        upload: Uploader = _upload_dir,
        timeouts: CollectiveTimeouts | None = None,
    ) -> None:
        self.prefix = prefix
        self.timeouts = timeouts
        self.run_id = run_id
        self.keep = keep
        self.opts = opts
        self.dist = dist
        self.preemption = preemption
        self.upload = upload
        self._in_flight: _Upload | None = None  # this node's upload
        self._unmarked: int | None = None  # the step uploaded or uploading whose COMPLETE is not written

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        uploading = self._in_flight is not None and not self._in_flight.done()
        preempted, any_uploading = any_rank([self.preemption.requested, uploading], args.device)
        if preempted:
            self.preemption.requested = True
            control.should_save = True
            control.should_training_stop = True
        if self._unmarked is not None and not any_uploading:
            self._settle()  # every node's upload of it has finished (or failed: raised here)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from kubetune.storage import delete_prefix

        step = state.global_step
        # One upload in flight: the previous one ends before the next starts.
        if not self.wait_for_uploads(self._wait_limit()):
            log.warning("checkpoint %d not uploaded: the grace period ran out", step)
            return control
        local = Path(args.output_dir) / checkpoint_name(step)
        if self.dist.is_main:
            # A checkpoint of another configuration at this step is about to be overwritten: while
            # files are mixed, its old marker must not make the mix look complete to anyone.
            delete_prefix(checkpoint_uri(self.prefix, step) + "/" + COMPLETE, self.opts)
        barrier()  # every rank has written its files (RNG state, ZeRO shards)
        if self.dist.is_local_main and local.is_dir():
            # Each node uploads what it wrote; on a shared volume the same bytes land twice, harmlessly.
            snapshot = _snapshot(local, Path(args.output_dir) / ".uploading" / checkpoint_name(step))
            uri = checkpoint_uri(self.prefix, step)

            def work() -> None:
                self.upload(snapshot, uri, self.opts)
                shutil.rmtree(snapshot, ignore_errors=True)

            self._in_flight = _Upload(step, work)
        self._unmarked = step
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self.wait_for_uploads(self._wait_limit()):
            log.warning(
                "checkpoint %d was still uploading when the grace period ran out; "
                "the restarted pod resumes from the complete one before it",
                self._unmarked,
            )
        return control

    def _wait_limit(self) -> float | None:
        return self.preemption.remaining_s() if self.preemption.requested else None

    def wait_for_uploads(self, timeout: float | None = None) -> bool:
        """Wait for this node's upload, then (all ranks) mark it complete. False when `timeout` ran out first."""
        if self._in_flight is not None:
            if not self._in_flight.wait(timeout):
                return False
            self._in_flight = None
        # Every node's upload has finished: the others' may take long after this node's.
        with self.timeouts.waiting_for_io() if self.timeouts else contextlib.nullcontext():
            barrier()
        if self._unmarked is not None:
            self._settle()
        return True

    def _settle(self) -> None:
        if self._in_flight is not None:
            self._in_flight.wait()  # done already: raises its error, if any
            self._in_flight = None
        step, self._unmarked = self._unmarked, None
        if self.dist.is_main and step is not None:
            from kubetune.storage import write_bytes

            write_bytes(checkpoint_uri(self.prefix, step) + "/" + COMPLETE, marker_text(step, self.run_id), self.opts)
            pruned = prune(self.prefix, self.keep, self.opts, self.run_id)
            log.info("checkpoint %d uploaded%s", step, f", pruned {pruned}" if pruned else "")
