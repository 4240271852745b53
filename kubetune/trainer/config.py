"""Run settings resolved once from the FineTuneJob and the environment the pod (or `kubetune run`) sets."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api import v1alpha1 as api

if TYPE_CHECKING:
    from kubetune.storage import StorageOptions

log = logging.getLogger("kubetune.trainer")

_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_size(text: str) -> int:
    """'5GB' -> bytes (the same units as the spec's shardSize)."""
    number = text.rstrip("KMGTiB ")
    unit = text[len(number) :].strip()
    return int(float(number) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Distributed:
        env = dict(os.environ) if env is None else env
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


@dataclass(frozen=True)
class OutputLayout:
    """Where each artifact goes under spec.output.uri (the contract the operator and vLLM rely on)."""

    root: str

    def _join(self, *parts: str) -> str:
        from kubetune.storage import join

        return join(self.root, *parts)

    @property
    def checkpoints(self) -> str:
        return self._join("checkpoints")

    @property
    def model(self) -> str:
        return self._join("model")

    @property
    def adapter(self) -> str:
        return self._join("adapter")

    @property
    def data_report(self) -> str:
        return self._join("data_report.json")

    @property
    def progress(self) -> str:
        return self._join("progress.jsonl")

    @property
    def loss_plot(self) -> str:
        return self._join("loss.png")

    @property
    def tensorboard(self) -> str:
        return self._join("tensorboard")

    @property
    def cache(self) -> str:
        return self._join("cache")

    @property
    def manifest(self) -> str:
        return self._join("manifest.json")


@dataclass(frozen=True)
class RunConfig:
    job: api.FineTuneJob
    config_path: str
    dist: Distributed
    cache_dir: Path
    work_dir: Path
    output: OutputLayout
    storage: StorageOptions
    precision: str  # what actually runs: bf16, fp16 or fp32
    device: str  # cuda or cpu

    @property
    def spec(self) -> api.FineTuneJobSpec:
        return self.job.spec

    @property
    def method(self) -> str:
        return str(self.spec.method.type)

    @property
    def merges(self) -> bool:
        return self.method == "full" or self.spec.output.merge

    def summary(self) -> dict[str, Any]:
        return {
            "job": f"{self.job.namespace}/{self.job.name}",
            "method": self.method,
            "precision": self.precision,
            "device": self.device,
            "worldSize": self.dist.world_size,
            "output": self.output.root,
        }


def resolve_precision(requested: str, *, cuda: bool, bf16_supported: bool) -> str:
    """The precision that will run. On CPU everything trains in fp32: bf16 autocast on CPUs without
    native bf16 is slower than fp32 and fp16 has no CPU kernels, so we fall back with a warning."""
    if not cuda:
        if requested != "fp32":
            log.warning("training.precision %s requested but no GPU is present: training in fp32", requested)
        return "fp32"
    if requested == "bf16" and not bf16_supported:
        log.warning("this GPU has no bf16 support: training in fp16 instead")
        return "fp16"
    return requested


def work_dir(cache_dir: Path, namespace: str, name: str, output_uri: str, node: str) -> Path:
    """The node-local directory for one run's checkpoints and exports.

    Keyed by the output URI too: two jobs of the same name writing to different outputs may run at
    the same time on one machine. Per node: two "nodes" of one `kubetune run --local` must not share it.
    """
    key = hashlib.sha256(output_uri.rstrip("/").encode()).hexdigest()[:8]
    return cache_dir / "runs" / f"{namespace}-{name}-{key}" / f"node-{node}"


@dataclass(frozen=True)
class Accelerator:
    """What this process can train on; passed in so that tests do not depend on the machine's GPUs."""

    cuda: bool
    bf16: bool

    @classmethod
    def detect(cls) -> Accelerator:
        import torch

        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported())


def load_run_config(
    config_path: str, env: dict[str, str] | None = None, accelerator: Accelerator | None = None
) -> RunConfig:
    """Read the FineTuneJob (SpecError on a bad file) and resolve everything the run needs."""
    from kubetune.api.validation import load_job_file
    from kubetune.storage import StorageOptions

    env = dict(os.environ) if env is None else env
    job = load_job_file(config_path)
    cache_dir = Path(env.get("KUBETUNE_CACHE_DIR") or Path.home() / ".cache" / "kubetune").expanduser()
    name = env.get("KUBETUNE_JOB_NAME") or job.name
    namespace = env.get("KUBETUNE_JOB_NAMESPACE") or job.namespace
    accelerator = accelerator or Accelerator.detect()
    return RunConfig(
        job=job,
        config_path=config_path,
        dist=Distributed.from_env(env),
        cache_dir=cache_dir,
        work_dir=work_dir(cache_dir, namespace, name, job.spec.output.uri, env.get("GROUP_RANK", "0")),
        output=OutputLayout(job.spec.output.uri),
        storage=StorageOptions.from_spec(job.spec.storage),
        precision=resolve_precision(
            str(job.spec.training.precision), cuda=accelerator.cuda, bf16_supported=accelerator.bf16
        ),
        device="cuda" if accelerator.cuda else "cpu",
    )
