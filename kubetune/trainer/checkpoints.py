"""Checkpoints in the output URI, auto-resume, pruning and preemption.

The HF Trainer writes its normal checkpoint directories locally (model/adapter, optimizer,
scheduler, RNG state per rank, trainer_state with the data position). After each save every node
uploads the files it wrote, and rank 0 writes `COMPLETE` last: a checkpoint without it is an upload
that was cut off and is never resumed from.

`COMPLETE` also holds the run identity (`run_identity`): a hash of the spec fields that shape
training. Only checkpoints of the same identity are resumed from or pruned; those of another
configuration under the same output are left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.storage import StorageOptions
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


# Intervals only decide when to save, log or evaluate, and these settings how the run is carried out
# (timeouts, worker processes, where metrics go): changing them must not discard a run's progress.
_NOT_IDENTITY = {
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_steps",
    "logging_steps",
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


class Preemption:
    """SIGTERM sets a flag; training saves at the next step boundary and the process exits 143."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint at the next step, then exiting")
        self.requested = True

    def any_rank(self, device: Any) -> bool:
        """True when any rank was signalled, so that all ranks stop at the same step."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


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


class CheckpointSync(TrainerCallback):
    """Upload each saved checkpoint, mark it complete, prune; stop and save on preemption."""

    def __init__(
        self, prefix: str, keep: int, opts: StorageOptions, dist: Distributed, preemption: Preemption, run_id: str
    ) -> None:
        self.prefix = prefix
        self.run_id = run_id
        self.keep = keep
        self.opts = opts
        self.dist = dist
        self.preemption = preemption

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.preemption.any_rank(args.device):
            self.preemption.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from kubetune.storage import delete_prefix, upload_dir, write_bytes

        step = state.global_step
        local = Path(args.output_dir) / checkpoint_name(step)
        if self.dist.is_main:
            # A checkpoint of another configuration at this step is about to be overwritten: while
            # files are mixed, its old marker must not make the mix look complete to anyone.
            delete_prefix(checkpoint_uri(self.prefix, step) + "/" + COMPLETE, self.opts)
        barrier()  # every rank has written its files (RNG state, ZeRO shards)
        if self.dist.is_local_main and local.is_dir():
            # Each node uploads what it wrote; on a shared volume the same bytes land twice, harmlessly.
            upload_dir(local, checkpoint_uri(self.prefix, step), self.opts)
        barrier()
        if self.dist.is_main:
            write_bytes(checkpoint_uri(self.prefix, step) + "/" + COMPLETE, marker_text(step, self.run_id), self.opts)
            pruned = prune(self.prefix, self.keep, self.opts, self.run_id)
            log.info("checkpoint %d uploaded%s", step, f", pruned {pruned}" if pruned else "")
        return control
