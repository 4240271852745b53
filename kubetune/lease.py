"""One writer per output: the leases `kubetune run --local` holds for the whole run.

Two runs writing the same output delete each other's files (each export first clears model/ and
adapter/), and a manifest could then name files that are gone. So a run holds:

- for a path (the output, and the local work dir): an exclusive `flock` on `<dir>/.kubetune-lease`.
  The kernel releases it when the holder dies, however it dies, so a lock that is held belongs to a
  live run and a stale one cannot exist.
- for an s3:// output: an object `<prefix>/.kubetune-lease` naming its holder (host, pid, a random
  id) and an expiry the holder pushes forward every `RENEW_S`. Another run is refused while it has
  not expired; it is taken over once expired, or at once when its holder is a dead process on this
  host. Plain S3 has no compare-and-swap, so two runs starting in the same instant could both write
  it: each reads it back after writing and at every renewal, and a run that finds another holder
  there sets `lost` (its run is then stopped).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from kubetune import storage
from kubetune.storage.errors import bounded_retries

LEASE_NAME = ".kubetune-lease"
TTL_S = 60.0
RENEW_S = 15.0


class LeaseHeld(Exception):
    """Another live run holds the lease; the message names it."""


class Lease(Protocol):
    lost: threading.Event

    def acquire(self) -> None: ...

    def release(self) -> None: ...


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _holder(lease_id: str, started: str, ttl: float) -> dict[str, Any]:
    return {
        "id": lease_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "expires": time.time() + ttl,
    }


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


class PathLock:
    """An exclusive flock on `<directory>/.kubetune-lease`."""

    def __init__(self, directory: Path, what: str) -> None:
        self.path = directory / LEASE_NAME
        self.what = what
        self.lost = threading.Event()  # a kernel lock is never lost while we live
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                try:
                    who = _describe(json.loads(holder))
                except ValueError:
                    who = "holder unknown"
                raise LeaseHeld(
                    f"{self.what} {self.path.parent} is in use by another run ({who}); wait for it to finish or stop it"
                ) from None
            # The previous holder unlinks the file before unlocking it: a lock on an unlinked file
            # guards nothing, so start again on the path's current file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(uuid.uuid4().hex, _now(), 0.0)).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None


class S3Lease:
    """A lease object under an s3:// prefix, renewed by a background thread while held."""

    def __init__(self, prefix: str, opts: storage.StorageOptions, ttl: float = TTL_S, renew: float = RENEW_S) -> None:
        self.uri = storage.join(prefix, LEASE_NAME)
        self.opts = opts
        self.ttl = ttl
        self.renew = renew
        self.id = uuid.uuid4().hex
        self.started = _now()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        current = self._read()
        if current is not None and current.get("id") != self.id and not _stale(current):
            raise LeaseHeld(
                f"output {self.uri.removesuffix('/' + LEASE_NAME)} is in use by another run ({_describe(current)}; "
                f"its lease expires in {max(0, int(float(current.get('expires', 0)) - time.time()))} s unless "
                "renewed); wait for it to finish or stop it"
            )
        self._write()
        mine = self._read()
        if mine is None or mine.get("id") != self.id:
            raise LeaseHeld(f"another run took the lease {self.uri} at the same moment; try again")
        self._thread = threading.Thread(target=self._keep, name="kubetune-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with bounded_retries(self.ttl - self.renew):
            current = self._read()
            if current is not None and current.get("id") == self.id:
                storage.delete_prefix(self.uri, self.opts)

    def _keep(self) -> None:
        while not self._stop.wait(self.renew):
            try:
                # A renewal that waits out the usual storage retry budget (minutes) would outlive
                # the lease: give up in time for the next attempt, before the expiry.
                with bounded_retries(self.ttl - self.renew):
                    current = self._read()
                    if current is None or current.get("id") != self.id:
                        self.lost.set()
                        return
                    self._write()
            except storage.StorageError:
                continue  # a short outage: the expiry leaves room for the next attempts

    def _read(self) -> dict[str, Any] | None:
        if not storage.exists(self.uri, self.opts):
            return None
        try:
            data = json.loads(storage.read_bytes(self.uri, self.opts))
        except (ValueError, storage.StorageError):  # cut off, or deleted since the check
            return None
        return data if isinstance(data, dict) else None

    def _write(self) -> None:
        storage.write_bytes(self.uri, json.dumps(_holder(self.id, self.started, self.ttl)).encode(), self.opts)


def _stale(holder: dict[str, Any]) -> bool:
    if float(holder.get("expires", 0)) < time.time():
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def for_output(uri: str, opts: storage.StorageOptions) -> Lease:
    if storage.is_remote(uri):
        return S3Lease(uri, opts)
    return PathLock(Path(uri.removeprefix("file://")).expanduser(), "output")
