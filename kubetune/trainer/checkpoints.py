"""Checkpoints in the output URI, auto-resume, pruning and preemption.

The HF Trainer writes its normal checkpoint directories locally (model/adapter, optimizer,
scheduler, RNG state per rank, trainer_state with the data position). After each save every node
uploads the files it wrote, and rank 0 writes `COMPLETE` last: a checkpoint without it is an upload
that was cut off and is never resumed from.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from kubetune.storage import StorageOptions
    from kubetune.trainer.config import Distributed

log = logging.getLogger("kubetune.trainer")

COMPLETE = "COMPLETE"
_CHECKPOINT = re.compile(r"(?:^|/)checkpoint-(\d+)/(.+)$")


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


def checkpoint_uri(prefix: str, step: int) -> str:
    from kubetune.storage import join

    return join(prefix, f"checkpoint-{step}")


def restore_latest(prefix: str, local_dir: Path, opts: StorageOptions) -> Path | None:
    """Download the newest complete checkpoint into local_dir; None when there is none (a fresh run).

    Local checkpoints left by an earlier process are dropped first: only what reached the output URI
    with its COMPLETE marker counts."""
    from kubetune.storage import download_dir

    shutil.rmtree(local_dir, ignore_errors=True)
    complete, _ = scan(prefix, opts)
    if not complete:
        return None
    step = complete[-1]
    dest = local_dir / f"checkpoint-{step}"
    download_dir(checkpoint_uri(prefix, step), dest, opts)
    (dest / COMPLETE).unlink(missing_ok=True)
    log.info("resuming from %s (step %d)", checkpoint_uri(prefix, step), step)
    return dest


def prune(prefix: str, keep: int, opts: StorageOptions) -> list[int]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than them."""
    from kubetune.storage import delete_prefix

    complete, incomplete = scan(prefix, opts)
    if not complete:
        return []
    doomed = complete[:-keep] + [s for s in incomplete if s < complete[-1]]
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


class CheckpointSync(TrainerCallback):
    """Upload each saved checkpoint, mark it complete, prune; stop and save on preemption."""

    def __init__(self, prefix: str, keep: int, opts: StorageOptions, dist: Distributed,
                 preemption: Preemption) -> None:
        self.prefix = prefix
        self.keep = keep
        self.opts = opts
        self.dist = dist
        self.preemption = preemption
        self.uploaded: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.preemption.any_rank(args.device):
            self.preemption.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from kubetune.storage import upload_dir, write_bytes

        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        barrier()  # every rank has written its files (RNG state, ZeRO shards)
        if self.dist.is_local_main and local.is_dir():
            # Each node uploads what it wrote; on a shared volume the same bytes land twice, harmlessly.
            upload_dir(local, checkpoint_uri(self.prefix, step), self.opts)
        barrier()
        if self.dist.is_main:
            write_bytes(checkpoint_uri(self.prefix, step) + "/" + COMPLETE, f"{step}\n".encode(), self.opts)
            pruned = prune(self.prefix, self.keep, self.opts)
            log.info("checkpoint %d uploaded%s", step, f", pruned {pruned}" if pruned else "")
        self.uploaded.append(step)
        return control
