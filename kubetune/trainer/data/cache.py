"""Tokenize once: a content-keyed cache that rank 0 writes and every other rank and restart loads.

Layout of one entry, `data-<key>/`: `train/` and `eval/` (datasets `save_to_disk`), `report.json`
(which also names the chat template used), and `_COMPLETE`, written last. Locally the entry is built
under a temporary name and renamed into place, so a reader never sees half of it; remotely
`_COMPLETE` is uploaded after everything else. Waiting ranks poll for `_COMPLETE` with plain file/S3 checks, not a torch
collective, so a long tokenization never hits an NCCL timeout. If rank 0 finds the data invalid it
writes `_FAILED` with the message, and the waiting ranks fail with the same message at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune import storage

log = logging.getLogger("kubetune.data")

COMPLETE = "_COMPLETE"
FAILED = "_FAILED"
# Bump when the cached layout or the tokenization rules change, so old entries are not reused.
FORMAT_VERSION = "kubetune-data-5"
DEFAULT_WAIT_SECONDS = 4 * 3600


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True).encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_name(key: str) -> str:
    return f"data-{key}"


class CacheEntry:
    """One cache entry: a local directory and, optionally, its remote copy."""

    def __init__(self, key: str, cache_dir: Path, cache_uri: str | None, opts: storage.StorageOptions | None):
        self.key = key
        self.local = Path(cache_dir) / entry_name(key)
        self.remote = storage.join(cache_uri, entry_name(key)) if cache_uri else None
        self.opts = opts

    # ---- state

    def local_complete(self) -> bool:
        return (self.local / COMPLETE).is_file()

    def remote_complete(self) -> bool:
        return self.remote is not None and storage.exists(storage.join(self.remote, COMPLETE), self.opts)

    def failure(self) -> str | None:
        """The message rank 0 left when the data was invalid, if any."""
        local = self.local.parent / f"{entry_name(self.key)}{FAILED}"
        if local.is_file():
            return local.read_text(encoding="utf-8")
        if self.remote is not None:
            uri = storage.join(self.remote, FAILED)
            if storage.exists(uri, self.opts):
                return storage.read_bytes(uri, self.opts).decode("utf-8")
        return None

    # ---- rank 0

    def find(self) -> bool:
        """Make the entry available locally if it exists here or remotely (a restart, another node)."""
        if self.local_complete():
            return True
        if self.remote_complete():
            self._download()
            return True
        return False

    def staging(self) -> Path:
        """A fresh directory beside the entry, unique to this call.

        Not named after the pid: pods sharing a cache volume each have their own PID namespace, so two
        writers can have the same pid, and one must never clear or fill the other's staging.
        """
        self.local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry_name(self.key)}.", suffix=".partial", dir=self.local.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the installed entry from other users of a shared cache
        return tmp

    def commit(self, staged: Path) -> None:
        """Publish a staged entry: upload (if remote) with the marker last, then rename into place."""
        marker = json.dumps({"key": self.key, "created": time.time()})
        if self.remote is not None:
            storage.delete_prefix(storage.join(self.remote, FAILED), self.opts)  # from an earlier failed attempt
            storage.upload_dir(staged, self.remote, self.opts)
            storage.write_bytes(storage.join(self.remote, COMPLETE), marker.encode(), self.opts)
        (staged / COMPLETE).write_text(marker, encoding="utf-8")
        self._install(staged)

    def mark_failed(self, message: str) -> None:
        local = self.local.parent / f"{entry_name(self.key)}{FAILED}"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(message, encoding="utf-8")
        if self.remote is not None:
            storage.write_bytes(storage.join(self.remote, FAILED), message.encode(), self.opts)

    def clear_failed(self) -> None:
        (self.local.parent / f"{entry_name(self.key)}{FAILED}").unlink(missing_ok=True)

    # ---- other ranks

    def wait(self, rank: int, timeout: float | None = None) -> None:
        """Poll until rank 0 has published the entry (or failed); raise a clear error after the timeout."""
        if timeout is None:
            timeout = float(os.environ.get("KUBETUNE_DATA_WAIT_SECONDS", DEFAULT_WAIT_SECONDS))
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            if self.find():
                return
            message = self.failure()
            if message is not None:
                from kubetune.trainer.data.errors import DataValidationError

                raise DataValidationError(message)
            if time.monotonic() > deadline:
                where = self.remote or str(self.local)
                raise TimeoutError(
                    f"rank {rank} waited {timeout:.0f}s for the tokenized data at {where}, which rank 0 writes; "
                    "check rank 0's log. Across nodes the cache must be shared: pass cache_uri (the job's output "
                    "URI) or a shared cache directory. KUBETUNE_DATA_WAIT_SECONDS changes the wait."
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    # ---- internals

    def _download(self) -> None:
        assert self.remote is not None
        staged = self.staging()
        storage.download_dir(self.remote, staged, self.opts)
        self._install(staged)

    def _install(self, staged: Path) -> None:
        if self.local.exists() and not self.local_complete():
            shutil.rmtree(self.local, ignore_errors=True)  # left by a crash mid-install
        try:
            staged.rename(self.local)
        except OSError:
            # another process on this node installed the same entry first; same key, same content
            if not self.local_complete():
                raise
            shutil.rmtree(staged, ignore_errors=True)
