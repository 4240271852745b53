"""Many files to or from S3 through one s3transfer `TransferManager`.

One client whose connection pool matches the manager's request threads carries every file of an
upload or download, so the threads never queue for a connection and big and small files share one
budget of parallel requests. The upload hashes each file (sha256, for the manifest) as the transfer
reads it, and trusts the upload's own answer: the server checks botocore's per-request checksum, so a
200 means it stored the bytes we read. Downloads take sizes and ETags from the listing, so no file
costs an extra HEAD request either way.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kubetune.storage.errors import StorageError, retrying

if TYPE_CHECKING:
    from kubetune.storage import StorageOptions, UploadedFile

MiB = 1024 * 1024
# Request threads (and pooled connections) per transfer and the part size: measured with
# bench/bench_upload.py against SeaweedFS on a 2-core machine, 8 MiB parts on 16 threads beat 16 and
# 32 MiB parts and 4-10 threads. The upload holds at most 10 parts (80 MiB) in memory at a time.
THREADS = 16
PART_SIZE = 8 * MiB
# Files opened at once: enough to keep every thread busy on small files, never thousands of handles.
_OPEN_FILES = 2 * THREADS


def transfer_config() -> Any:
    from s3transfer.manager import TransferConfig

    return TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_request_concurrency=THREADS,
    )


@dataclass(frozen=True)
class RemoteFile:
    bucket: str
    key: str
    size: int
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class _HashingReader:
    """A file as s3transfer reads it, hashed on the way: each byte once, however often it is re-read.

    Botocore may read a body twice (checksum, then send) and retries seek back; only bytes at the
    hashed frontier extend the digest, so the hash is the file's if the reads covered it in order."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._digest = hashlib.sha256()
        self.hashed = 0

    def read(self, amount: int = -1) -> bytes:
        start = self._fh.tell()
        data = self._fh.read(amount)
        end = start + len(data)
        if start <= self.hashed < end:
            self._digest.update(memoryview(data)[self.hashed - start :])
            self.hashed = end
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        """The transfer closes bodies it is done with; the file stays ours until the upload ends."""

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _known(size: int, etag: str | None = None) -> Any:
    from s3transfer.subscribers import BaseSubscriber

    class Known(BaseSubscriber):
        """Tells the transfer what it would otherwise ask S3 (HEAD) or the file system."""

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(size)
            if etag is not None:
                future.meta.provide_object_etag(etag)

    return Known()


@contextmanager
def _manager(opts: StorageOptions) -> Iterator[Any]:
    from s3transfer.manager import TransferManager

    with TransferManager(opts.client(pool=THREADS), transfer_config()) as manager:
        yield manager


def upload_files(files: Sequence[tuple[Path, str]], opts: StorageOptions) -> list[UploadedFile]:
    """Upload (local path, s3 URI) pairs; a transient failure retries only the files not yet stored."""
    from kubetune.storage import UploadedFile, split_s3

    done: dict[str, UploadedFile] = {}

    def attempt() -> None:
        todo = [(path, uri) for path, uri in files if uri not in done]
        opened: list[IO[bytes]] = []
        try:
            with _manager(opts) as manager:
                in_flight: deque[tuple[Any, Path, str, IO[bytes], _HashingReader, int]] = deque()

                def finish() -> None:
                    future, path, uri, fh, reader, size = in_flight.popleft()
                    try:
                        future.result()
                    finally:
                        fh.close()  # the transfer is over, done or failed: nothing reads it now
                    if reader.hashed != size:  # the file changed under us
                        raise StorageError(
                            f"cannot upload {path} to {uri}: read {reader.hashed} of its {size} bytes",
                            "the file changed during the upload; nothing may write the export while it uploads",
                        )
                    done[uri] = UploadedFile(uri=uri, size=size, sha256=reader.hexdigest())

                for path, uri in todo:
                    if len(in_flight) >= _OPEN_FILES:
                        finish()
                    bucket, key = split_s3(uri)
                    fh: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by finish(), or below after a failure
                    opened.append(fh)
                    size = Path(path).stat().st_size
                    reader = _HashingReader(fh)
                    future = manager.upload(reader, bucket, key, subscribers=[_known(size)])
                    in_flight.append((future, path, uri, fh, reader, size))
                while in_flight:
                    finish()
        finally:  # after the manager's exit: a cancelled transfer may read until then
            for fh in opened:
                fh.close()

    if files:
        retrying(attempt, "upload to", _common_prefix([uri for _, uri in files]), opts)
    return sorted(done.values(), key=lambda u: u.uri)


def download_files(files: Sequence[tuple[RemoteFile, Path]], opts: StorageOptions) -> None:
    """Download (remote file, local path) pairs; each appears under its name only once complete."""
    done: set[str] = set()

    def attempt() -> None:
        todo = [(src, dest) for src, dest in files if src.uri not in done]
        with _manager(opts) as manager:
            futures = []
            for src, dest in todo:
                dest.parent.mkdir(parents=True, exist_ok=True)
                # s3transfer writes to a temporary name and renames it when the file is complete.
                future = manager.download(src.bucket, src.key, str(dest), subscribers=[_known(src.size, src.etag)])
                futures.append((src, future))
            for src, future in futures:
                future.result()
                done.add(src.uri)

    if files:
        retrying(attempt, "download", _common_prefix([src.uri for src, _ in files]), opts)


def _common_prefix(uris: list[str]) -> str:
    if len(uris) == 1:
        return uris[0]
    first, last = min(uris), max(uris)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[: first.rfind("/", 0, n + 1) + 1] if n < len(first) else first
