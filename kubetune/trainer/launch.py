"""`python -m kubetune.trainer.launch <torchrun args...>`: the container's command.

torchrun turns any worker failure into exit 1, so on its own it cannot tell Kubeflow whether a
failure is worth a restart. This wrapper runs torchrun with exactly the arguments it was given, lets
every failing rank leave its own exit code in `$KUBETUNE_EXIT_DIR/rank-<RANK>` (failures.py), and
maps the outcome to the container's exit code, in the convention of Kubeflow's
`restartPolicy: ExitCode` (130, 137, 138, 143 retryable; 1-127 permanent). The rendered PyTorchJob
uses `OnFailure` (Kubeflow v1.9 counts restarts against backoffLimit only for OnFailure/Always), so
the code tells people and the operator what failed rather than steering the restarts:

| outcome | exit |
|---|---|
| success | 0 |
| bad spec or data (2), storage refused (3), model (4), OOM (5), NaN loss (6), export check (7) | that code |
| preempted (SIGTERM), storage unavailable (8), unexpected error (1), worker killed without a code | 143 |
| Ctrl-C on a local run | 130 |

The rendered command asks torchrun for a c10d rendezvous and `--max-restarts`: a worker that dies
of a retryable cause is restarted in place, on every node, from the last complete checkpoint
(`rendezvous_env` says where the nodes meet). A permanent code ends the run at once instead (`_run`).

SIGTERM and SIGINT sent to this process are forwarded to torchrun, which passes them to its workers
(they save a checkpoint at the next step and exit 143). The rendered command passes torchrun
`--shutdown-timeout=270` inside the pod's 300 s termination grace period, so a preempted worker has
time to finish its step and upload the checkpoint before torchrun escalates to SIGKILL.

A process that dies without passing anything on (SIGKILL, a crash) takes its children with it:
torchrun and every worker get SIGKILL from Linux when their parent dies (`parent_death_signal`),
so no training goes on unsupervised, uploading into an output someone else may now own.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from kubetune.trainer.failures import PERMANENT, ExitCode

RETRYABLE = int(ExitCode.PREEMPTED)
NOT_FOUND = 127


_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A `preexec_fn` after which Linux sends `sig` to the child when its parent dies (elsewhere a no-op).

    It survives exec; it is sent when the thread that started the child exits, so start children
    from the main thread."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None

    def arm() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return arm


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """`parent_death_signal` for this process, for children started by code we do not own (torchrun's workers)."""
    parent = os.getppid()
    parent_death_signal(sig)()
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), sig)


def container_exit_code(torchrun_code: int, rank_codes: Sequence[int], interrupted: bool = False) -> int:
    """The container's exit code from torchrun's and the ranks' own codes (in the order they were written).

    The first permanent code wins: peers of the failing rank usually fail after it with connection
    errors, which say nothing about the cause."""
    if torchrun_code == 0:
        return 0
    for code in rank_codes:
        if code in PERMANENT:
            return code
    if interrupted or ExitCode.INTERRUPTED in rank_codes:
        return int(ExitCode.INTERRUPTED)
    return RETRYABLE


def read_rank_codes(exit_dir: Path) -> list[int]:
    """Codes the ranks wrote, oldest first (the first failure is usually the cause)."""
    found: list[tuple[int, int, int]] = []
    for path in exit_dir.glob("rank-*"):
        rank = path.name.removeprefix("rank-")
        try:
            code = int(path.read_text().strip())
            found.append((path.stat().st_mtime_ns, int(rank), code))
        except (OSError, ValueError):
            continue  # a partial or foreign file says nothing reliable
    return [code for _, _, code in sorted(found)]


# torchrun's defaults for a static rendezvous, kept for a single-node pod that gets no address.
DEFAULT_MASTER = ("127.0.0.1", "29500")
# Rendezvous settings (torchrun's --rdzv-conf): a worker pod may start long before the master pod
# has pulled its image, and the c10d defaults (60 s to reach the store, 600 s to form a round) would
# fail that pod and spend a Kubeflow restart on it.
RENDEZVOUS_CONF = "join_timeout=1800,read_timeout=1800"


def rendezvous_env(env: dict[str, str], args: Sequence[str]) -> dict[str, str]:
    """torchrun's rendezvous settings from the controller's environment.

    Kubeflow Trainer v2 sets PET_MASTER_ADDR/PORT; Kubeflow Training Operator v1 (and `kubetune run
    --local`) set MASTER_ADDR/PORT instead. When torchrun's `args` ask for a c10d rendezvous (the
    rendered command does: render/pod.py `torchrun_args`), its endpoint is the master's address, and
    node 0, the pod behind that address, hosts the rendezvous store. Values already set in the
    environment win."""
    out = dict(env)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var in env and f"PET_{var}" not in env:
            out[f"PET_{var}"] = env[var]
    if _option(args, "--rdzv-backend", env.get("PET_RDZV_BACKEND", "static")) != "c10d":
        return out  # static: torchrun meets at PET_MASTER_ADDR/PORT itself
    addr = out.get("PET_MASTER_ADDR") or DEFAULT_MASTER[0]
    port = out.get("PET_MASTER_PORT") or DEFAULT_MASTER[1]
    out.setdefault("PET_RDZV_ENDPOINT", f"{addr}:{port}")
    # Explicit rather than guessed from the hostname: every local "node" is 127.0.0.1.
    is_host = int(out.get("PET_NODE_RANK", "0") or "0") == 0
    out.setdefault("PET_RDZV_CONF", f"{RENDEZVOUS_CONF},is_host={str(is_host).lower()}")
    # A fresh store for each round's process group, hosted by that round's rank 0 worker. With the
    # rendezvous store shared instead (torch's default), workers find each other under a key of
    # their node's restart count, which differs between nodes when one agent restarted for a failure
    # and another for the new round: those workers read the dead round's addresses and fail again.
    out.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return out


def _option(args: Sequence[str], name: str, default: str) -> str:
    """The value torchrun will see for option `name` (`--name=v` or `--name v`; `_` spellings too)."""
    value = default
    spellings = {name, name.replace("-", "_").replace("__", "--")}
    for i, arg in enumerate(args):
        if arg in ("-m", "--module") or not arg.startswith("-"):
            break  # the rest belongs to the training script
        key, eq, rest = arg.partition("=")
        if key in spellings:
            value = rest if eq else (args[i + 1] if i + 1 < len(args) else value)
    return value


def torchrun_path() -> str | None:
    beside = Path(sys.executable).with_name("torchrun")
    return str(beside) if beside.exists() else shutil.which("torchrun")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    torchrun = torchrun_path()
    if torchrun is None:
        print("kubetune: error: torchrun not found: install torch in the trainer image", file=sys.stderr, flush=True)
        return NOT_FOUND
    exit_dir = Path(tempfile.mkdtemp(prefix="kubetune-exit-"))
    try:
        env = {**rendezvous_env(dict(os.environ), args), "KUBETUNE_EXIT_DIR": str(exit_dir)}
        torchrun_code, interrupted = _run(torchrun, args, env, exit_dir)
        code = container_exit_code(torchrun_code, read_rank_codes(exit_dir), interrupted)
    finally:
        shutil.rmtree(exit_dir, ignore_errors=True)
    if code != torchrun_code:
        print(
            f"kubetune launch: torchrun exited {torchrun_code}; container exit code {code}", file=sys.stderr, flush=True
        )
    return code


def max_restarts(args: Sequence[str]) -> int:
    """torchrun's --max-restarts (or --max_restarts) in these arguments; its default is 0."""
    for i, arg in enumerate(args):
        if arg in ("-m", "--module"):
            break  # the training module's own arguments follow
        name, eq, value = arg.partition("=")
        if name in ("--max-restarts", "--max_restarts"):
            return int(value if eq else args[i + 1])
    return 0


# How often the launcher looks for a rank's permanent failure while torchrun runs.
POLL_S = 1.0


def _run(torchrun: str, args: list[str], env: dict[str, str], exit_dir: Path) -> tuple[int, bool]:
    """Run torchrun to the end, forwarding SIGTERM/SIGINT. Returns (its exit code, whether Ctrl-C came).

    torchrun restarts failed workers (`--max-restarts`), which helps with a lost peer but only
    repeats a bad spec, an OOM or a NaN loss: once a rank reports a permanent code, torchrun is
    stopped and the pod fails with that code at once. SIGKILL, not SIGTERM: there is no checkpoint
    worth saving after a permanent failure, its workers die with it (`die_with_parent`), and
    torchrun answers SIGTERM with a traceback of its own that would bury the rank's one-line error."""
    # Its own session: a terminal's Ctrl-C reaches torchrun once, through us, not twice.
    child = subprocess.Popen(
        [torchrun, *args], env=env, start_new_session=True, preexec_fn=parent_death_signal(signal.SIGKILL)
    )
    received: list[int] = []
    # Without in-place restarts torchrun ends on the first failure by itself, with its own report.
    restarts = max_restarts(args)

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stopped = False
        while True:
            try:
                code = child.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if restarts and not stopped and any(c in PERMANENT for c in read_rank_codes(exit_dir)):
                stopped = True
                child.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # we are failing ourselves: never leave training running unsupervised
            child.kill()
            child.wait()
    return code, signal.SIGINT in received and signal.SIGTERM not in received


if __name__ == "__main__":
    sys.exit(main())
