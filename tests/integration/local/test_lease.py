"""One writer per s3:// output: a lease object, refused while live, taken over once stale."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from kubetune import storage
from kubetune.lease import LEASE_NAME, LeaseHeld, S3Lease

pytestmark = pytest.mark.integration


def _write_holder(uri: str, **holder: Any) -> None:
    base = {"id": "someone-else", "host": "other-host", "pid": 1, "started": "2026-01-01T00:00:00Z"}
    storage.write_bytes(storage.join(uri, LEASE_NAME), json.dumps({**base, **holder}).encode())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lease_refuses_others_until_released(s3_env: Any) -> None:
    out = s3_env.make_bucket("lease-held") + "/runs/a/"
    opts = storage.StorageOptions()
    first = S3Lease(out, opts)
    first.acquire()
    with pytest.raises(LeaseHeld, match=r"output s3://lease-held/runs/a is in use by another run \(pid \d+ on "):
        S3Lease(out, opts).acquire()
    first.release()
    assert not storage.exists(storage.join(out, LEASE_NAME))
    second = S3Lease(out, opts)
    second.acquire()
    second.release()


@pytest.mark.parametrize(
    ("holder", "taken"),
    [
        ({"expires": time.time() + 3600}, False),  # live, on another host: we cannot tell, we wait
        ({"expires": time.time() - 1}, True),  # expired: its holder stopped renewing
        ({"host": socket.gethostname(), "pid": "dead", "expires": time.time() + 3600}, True),
    ],
    ids=["live", "expired", "dead-process-here"],
)
def test_only_a_stale_lease_is_taken_over(s3_env: Any, holder: dict[str, Any], taken: bool) -> None:
    out = s3_env.make_bucket("lease-stale") + "/runs/" + ("taken" if taken else "kept") + str(time.monotonic_ns())
    if holder.get("pid") == "dead":
        holder["pid"] = _dead_pid()
    _write_holder(out, **holder)
    lease = S3Lease(out, storage.StorageOptions())
    if not taken:
        with pytest.raises(LeaseHeld, match="expires in"):
            lease.acquire()
        return
    lease.acquire()
    assert json.loads(storage.read_bytes(storage.join(out, LEASE_NAME)))["id"] == lease.id
    lease.release()


def test_a_holder_whose_lease_was_taken_over_knows_it(s3_env: Any) -> None:
    out = s3_env.make_bucket("lease-lost") + "/runs/a/"
    lease = S3Lease(out, storage.StorageOptions(), ttl=60, renew=0.1)
    lease.acquire()
    _write_holder(out, expires=time.time() + 3600)  # what a run that judged ours stale would write
    assert lease.lost.wait(timeout=30)
    lease.release()  # leaves the new holder's lease alone
    assert json.loads(storage.read_bytes(storage.join(out, LEASE_NAME)))["id"] == "someone-else"
