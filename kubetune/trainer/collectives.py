"""How long a collective may wait for the other ranks: long while some rank does slow I/O, short in training.

Ranks wait in collectives while one process per node downloads the base model or a checkpoint
(`main_process_first`, barriers), while nodes finish uploading a checkpoint, and while rank 0
exports: 140 GB at a few hundred MB/s takes hours. In a training step the ranks wait only for
each other's compute, so a rank that has not arrived within `training.ddpTimeoutSeconds` is hung
(a stuck NIC, a wedged GPU): failing the collective then lets torchrun restart every node's
workers from the last checkpoint (render/pod.py `torchrun_args`) instead of idling the cluster for
hours. A rank that dies outright does not need the timeout at all: its peers' collectives fail
at once, and torchrun's rendezvous notices the lost node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

# The wait around slow I/O; at least the training timeout, for specs that set that longer.
WAITING_FOR_IO_S = 4 * 3600


class CollectiveTimeouts:
    """Switches the default process group between the two timeouts (a no-op without one)."""

    def __init__(self, training_s: int) -> None:
        self.training_s = training_s
        self.waiting_s = max(WAITING_FOR_IO_S, training_s)

    def training(self) -> None:
        _set(self.training_s)

    @contextlib.contextmanager
    def waiting_for_io(self) -> Iterator[None]:
        _set(self.waiting_s)
        try:
            yield
        finally:
            _set(self.training_s)


def _set(seconds: int) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # torch's setter for an initialised group's timeout (gloo and NCCL): private by name, but the
        # only way short of a second process group for the slow waits.
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=seconds))
