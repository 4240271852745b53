"""One writer per local output or work dir: a lock held by a live run refuses the next one."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.lease import LEASE_NAME, LeaseHeld, PathLock

HOLDER = """
import sys
from pathlib import Path
from kubetune.lease import PathLock
PathLock(Path(sys.argv[1]), "output").acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_live_holder_is_named_and_a_dead_one_holds_nothing(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "out")
    with pytest.raises(LeaseHeld, match=rf"output {tmp_path / 'out'} is in use by another run \(pid {holder.pid} on "):
        PathLock(tmp_path / "out", "output").acquire()
    holder.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the lock
    holder.wait()
    lock = PathLock(tmp_path / "out", "output")
    lock.acquire()
    lock.release()
    assert not (tmp_path / "out" / LEASE_NAME).exists()  # nothing left in the output


def test_one_holder_at_a_time_in_one_process_too(tmp_path: Path) -> None:
    first, second = PathLock(tmp_path, "work dir"), PathLock(tmp_path, "work dir")
    first.acquire()
    with pytest.raises(LeaseHeld, match=r"work dir .* is in use by another run"):
        second.acquire()
    first.release()
    second.acquire()  # the released file was unlinked; the new holder locks a fresh one
    with pytest.raises(LeaseHeld):
        first.acquire()
    second.release()
