"""Run a FineTuneJob on this machine the way the cluster would.

`kubetune run FILE --local` resolves the job exactly like `render` does for the ConfigMap, then
starts one `torchrun` per "node" with the environment a PyTorchJob pod gets (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, MASTER_ADDR/MASTER_PORT and the KUBETUNE_* variables), so the
trainer cannot tell a laptop from a cluster. Only the cluster-only parts differ: no status
reporting to an API server, credentials from your environment instead of a Secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kubetune import lease, render, storage
from kubetune.api import v1alpha1 as api
from kubetune.api.locations import local_path, location_kind
from kubetune.api.validation import parse_job
from kubetune.trainer.launch import parent_death_signal
from kubetune.trainer.manifest import finished_manifest

_PLACEHOLDER = re.compile(r"\$\(([A-Z_][A-Z0-9_]*)\)")
# How long an interrupted local run waits for checkpoints: torchrun's shutdown timeout plus margin.
_INTERRUPT_GRACE = render.RenderSettings().termination_grace_seconds


@dataclass(frozen=True)
class LocalPlan:
    job: api.FineTuneJob
    config_path: Path
    work_dir: Path
    nodes: int
    procs_per_node: int
    master_port: int
    gpus_per_node: int = 0
    gpus_total: int = 0

    @property
    def log_path(self) -> Path:
        """Everything the run printed, torchrun's tracebacks included."""
        return self.work_dir / "run.log"

    def env(self, node_rank: int, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of one "pod": what the renderer gives the container, plus what Kubeflow injects."""
        env = dict(os.environ if base is None else base)
        for var in render.trainer_env(self.job):
            if "value" in var:  # secretKeyRef entries: locally the credentials are already in the env
                env[var["name"]] = var["value"]
        env.update(
            {
                "KUBETUNE_CONFIG": str(self.config_path),
                "KUBETUNE_TERMINATION_LOG": str(self.work_dir / "termination-log"),
                "KUBETUNE_CACHE_DIR": env.get("KUBETUNE_LOCAL_CACHE_DIR") or str(Path.home() / ".cache" / "kubetune"),
                "PET_NNODES": str(self.nodes),
                "PET_NPROC_PER_NODE": str(self.procs_per_node),
                "PET_NODE_RANK": str(node_rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(self.master_port),
            }
        )
        if self.gpus_per_node > 0:
            # Each local "node" owns its own GPUs, one per process, as each pod would; otherwise every
            # node's LOCAL_RANK 0 would land on cuda:0. Indices are taken from what the user already
            # made visible, if anything.
            visible = (os.environ if base is None else base).get("CUDA_VISIBLE_DEVICES")
            devices = [d for d in visible.split(",") if d.strip()] if visible else []
            devices = devices or [str(i) for i in range(self.gpus_total)]
            first = node_rank * self.procs_per_node
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[first : first + self.procs_per_node])
        # No API server to report to, and the hub cache stays the user's own, not the pod's path.
        env.pop("KUBETUNE_STATUS_REPORTING", None)
        user = os.environ if base is None else base
        if "HF_HOME" in user:
            env["HF_HOME"] = user["HF_HOME"]
        else:
            env.pop("HF_HOME", None)
        return env

    def command(self, env: dict[str, str]) -> list[str]:
        """The pod's command line with Kubernetes' $(VAR) references expanded from `env`."""
        command = render.trainer_command(self.job, render.RenderSettings(), str(self.config_path))
        expanded = [_PLACEHOLDER.sub(lambda m: env[m.group(1)], a) for a in command]
        # The image's `python` is this interpreter here.
        return [sys.executable, *expanded[1:]] if expanded[0] == "python" else expanded


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (MASTER_PORT of a local run; tests use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _absolute(value: str, base: Path, *, allow_hub: bool) -> str:
    """Relative paths in a local run are relative to the FineTuneJob file, like docker-compose's."""
    kind = location_kind(value, allow_hub=allow_hub)
    if kind == "hub" and (base / value).exists():
        # The spec means the same on a laptop and in a pod, where this is a hub id: say how to
        # name the local copy rather than guess.
        raise ValueError(f"'{value}' is a hub id, but {base / value} exists: write './{value}' to use the local copy")
    if kind != "path" or value.startswith("file://"):
        return value
    return str((base / local_path(value)).resolve())


def resolve_local_job(job: api.FineTuneJob, base_dir: Path) -> api.FineTuneJob:
    doc = job.to_manifest()
    spec = doc["spec"]
    spec["model"]["source"] = _absolute(spec["model"]["source"], base_dir, allow_hub=True)
    for ds in spec["datasets"]:
        ds["source"] = _absolute(ds["source"], base_dir, allow_hub=True)
    spec["output"]["uri"] = _absolute(spec["output"]["uri"], base_dir, allow_hub=False)
    return parse_job(doc)


def plan(
    job_file: Path,
    *,
    nodes: int | None = None,
    procs_per_node: int | None = None,
    work_root: Path | None = None,
    cuda_devices: int | None = None,
) -> LocalPlan:
    """Resolve the job and decide the process layout; raises ValueError with advice when it cannot run."""
    from kubetune.api.validation import load_job_file

    job = resolve_local_job(load_job_file(str(job_file)), job_file.resolve().parent)
    res = job.spec.resources
    n_nodes = nodes or res.nodes
    if procs_per_node is None:
        procs_per_node = res.procs_per_node
        available = _cuda_count() if cuda_devices is None else cuda_devices
        if res.gpus_per_node > 0 and available < res.gpus_per_node * n_nodes:
            raise ValueError(
                f"spec.resources asks for {n_nodes} node(s) x {res.gpus_per_node} GPU(s) but this machine has "
                f"{available}; pass --nproc-per-node N (and --nodes M) to run M x N processes here "
                "(CPU processes use gloo)"
            )
    # Keyed by the output too: two local runs of same-named jobs never share a config or a log.
    digest = hashlib.sha256(job.spec.output.uri.encode()).hexdigest()[:8]
    work_dir = (work_root or Path(".kubetune")) / "runs" / f"{job.name}-{digest}"
    config_path = (work_dir / "config.yaml").resolve()
    total = cuda_devices if cuda_devices is not None else _cuda_count()
    if total and res.gpus_per_node and n_nodes * procs_per_node > total:
        raise ValueError(
            f"{n_nodes} node(s) x {procs_per_node} process(es) need {n_nodes * procs_per_node} GPUs, "
            f"this machine has {total}; lower --nodes or --nproc-per-node"
        )
    gpus = res.gpus_per_node if total > 0 else 0
    return LocalPlan(job, config_path, work_dir.resolve(), n_nodes, procs_per_node, free_port(), gpus, total)


def _cuda_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


@contextlib.contextmanager
def claim(p: LocalPlan) -> Iterator[lease.Lease]:
    """Hold the work dir and the output for the run (refused with `LeaseHeld` while another live run
    holds either), and only then write the run's config into the work dir."""
    held: list[lease.Lease] = []
    try:
        for one in (
            lease.PathLock(p.work_dir, "work dir"),
            lease.for_output(p.job.spec.output.uri, storage.StorageOptions.from_spec(p.job.spec.storage)),
        ):
            one.acquire()
            held.append(one)
        p.config_path.write_text(render.config_yaml(p.job))
        (p.work_dir / "termination-log").unlink(missing_ok=True)
        yield held[-1]
    finally:
        for one in reversed(held):
            one.release()


def finished(job: api.FineTuneJob) -> dict[str, Any] | None:
    """The output's manifest if it records this job's result (the job already finished), else None."""
    opts = storage.StorageOptions.from_spec(job.spec.storage)
    return finished_manifest(storage.join(job.spec.output.uri, "manifest.json"), job.spec, opts)


# Ctrl-C, `kill`, a closed terminal: stop gracefully (the trainers checkpoint). SIGQUIT (Ctrl-\\), or
# any second signal: kill at once. SIGKILL cannot be caught: the parent-death signal of every
# process below takes the tree down then.
_GRACEFUL = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_AT_ONCE = (signal.SIGQUIT,)


def launch(p: LocalPlan, lost: threading.Event | None = None) -> int:
    """Start every node's command, wait, stop the rest as soon as one fails. Returns an exit code.

    Output goes to the terminal and to `p.log_path`; no training process outlives this function,
    nor this process (see `_GRACEFUL`). `lost` set (the output's lease taken over) stops the run.
    """
    procs: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    def hurry() -> bool:
        return len(stopping) > 1 or any(sig in _AT_ONCE for sig in stopping)

    previous = {sig: signal.signal(sig, on_signal) for sig in (*_GRACEFUL, *_AT_ONCE)}
    log = _Log(p.log_path)
    relays: list[_Relay] = []
    try:
        for node_rank in range(p.nodes):
            env = p.env(node_rank)
            procs.append(
                subprocess.Popen(
                    p.command(env),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # the terminal's Ctrl-C reaches us alone; we stop them
                    preexec_fn=parent_death_signal(signal.SIGKILL),
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            relays += [_Relay(proc.stdout, sys.stdout, log), _Relay(proc.stderr, sys.stderr, log, quiet_torchrun=True)]
        code = 0
        running = list(procs)
        while running:
            if stopping or (lost is not None and lost.is_set()):
                if not stopping:
                    print("kubetune: error: another run took over the output's lease; stopping", file=sys.stderr)
                # The trainers checkpoint on SIGTERM; torchrun allows them its shutdown timeout.
                _stop(running, grace=0.0 if hurry() else _INTERRUPT_GRACE, hurry=hurry)
                return 128 + stopping[0] if stopping else 1
            for proc in list(running):
                rc = proc.poll()
                if rc is None:
                    continue
                running.remove(proc)
                if rc != 0 and code == 0:
                    code = rc
                    _stop(running, hurry=hurry)
            time.sleep(0.2)
        return code
    finally:
        _stop(procs, grace=0.0)
        for relay in relays:
            relay.join(timeout=5)
        log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen[bytes]], grace: float = 30.0, hurry: Callable[[], bool] = bool) -> None:
    """SIGTERM every process group, wait up to `grace` (less if `hurry()` turns true), then kill what
    is left, whole trees: the launcher runs torchrun in a session of its own, so a process-group kill
    would miss it."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline and not hurry():
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait()


def _kill_tree(pid: int) -> None:
    try:
        import psutil

        children = psutil.Process(pid).children(recursive=True)
    except Exception:  # gone already, or no psutil: the process group is the best we can do
        children = []
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class _Log:
    """The run's log file, written by every relay."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class _Relay(threading.Thread):
    """Copies a child's output to the terminal and to the run's log, as it comes.

    With `quiet_torchrun`, torchrun's ChildFailedError traceback (30 lines that only repeat, badly,
    the one-line error the trainer printed) goes to the log alone."""

    def __init__(self, source: IO[bytes], terminal: IO[str], log: _Log, quiet_torchrun: bool = False) -> None:
        super().__init__(daemon=True)
        self.source, self.terminal, self.log, self.quiet = source, terminal, log, quiet_torchrun
        self.start()

    def run(self) -> None:
        fd = self.source.fileno()
        pending = b""
        held: list[bytes] | None = None  # a traceback, held until it shows whose it is
        rules_left = 0  # "=====" lines left in torchrun's failure summary
        while chunk := os.read(fd, 65536):
            self.log.write(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out: list[bytes] = []
            for raw in lines:
                line = raw + b"\n"
                text = raw.rsplit(b"\r", 1)[-1]
                if not self.quiet:
                    out.append(line)
                elif rules_left:
                    rules_left -= text.startswith(b"=====")
                elif held is not None and text[:1] in (b" ", b"\t"):
                    held.append(line)
                elif held is not None and text.startswith(_CHILD_FAILED):
                    held, rules_left = None, 2
                elif text.startswith(b"Traceback (most recent call last):"):
                    out += held or []
                    held = [line]
                else:
                    out += [*(held or []), line]
                    held = None
            if held is None and not rules_left and b"\r" in pending:  # a progress bar redrawn in place
                cut = pending.rindex(b"\r") + 1
                out.append(pending[:cut])
                pending = pending[cut:]
            self._show(b"".join(out))
        self._show(b"".join([*(held or []), pending]))

    def _show(self, data: bytes) -> None:
        if data:
            self.terminal.write(data.decode(errors="replace"))
            self.terminal.flush()


_CHILD_FAILED = b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError"


def failure_line(p: LocalPlan) -> str | None:
    path = p.work_dir / "termination-log"
    if path.exists():
        text = path.read_text(errors="replace").strip()
        return text or None
    return None


def fetch_dir(uri: str, job: api.FineTuneJob, work_dir: Path) -> Path:
    """A local directory holding `uri` (downloaded when it is in S3)."""
    if not storage.is_remote(uri):
        return Path(uri[7:] if uri.startswith("file://") else uri)
    dest = work_dir / "download" / uri.rstrip("/").rsplit("/", 1)[-1]
    if dest.exists():
        shutil.rmtree(dest)
    return storage.download_dir(uri, dest, storage.StorageOptions.from_spec(job.spec.storage))


def sample_generation(
    model_dir: str | Path, prompt: str, *, tokenizer_dir: str | Path | None = None, max_new_tokens: int = 32
) -> str:
    """Greedy completion of one user turn, formatted by the exported chat template.

    `tokenizer_dir` lets the base model answer through the exported tokenizer, so "before" and
    "after" see the very same prompt tokens.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer_dir = tokenizer_dir or model_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    try:
        generation = GenerationConfig.from_pretrained(tokenizer_dir)
    except OSError:
        generation = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
    generation.max_new_tokens = max_new_tokens
    generation.do_sample = False
    generation.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=generation)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def first_user_prompt(job: api.FineTuneJob) -> str | None:
    """The first user turn of the first training dataset, as the trainer reads it."""
    try:
        from kubetune.trainer.data import first_conversation

        conversation = first_conversation(job.spec)
    except Exception:
        return None
    for turn in conversation or []:
        if turn.get("role") == "user" and turn.get("content"):
            return str(turn["content"])
    return None


def summary_lines(job: api.FineTuneJob, manifest: dict[str, Any]) -> list[str]:
    """Where everything is, from the manifest (the trainer's own record of what it uploaded)."""
    outputs = manifest.get("outputs") or {}
    lines = [f"Done: {job.name} ({job.spec.method.type}); outputs under {job.spec.output.uri}"]
    for label, key in [
        ("merged model", "model"),
        ("adapter", "adapter"),
        ("manifest", "manifest"),
        ("loss plot", "lossPlot"),
        ("data report", "dataReport"),
    ]:
        if outputs.get(key):
            lines.append(f"  {label:<13} {outputs[key]}")
    metrics = manifest.get("metrics") or {}
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and "loss" in k.lower()}
    if numbers:
        lines.append("  metrics       " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(numbers.items())))
    return lines
