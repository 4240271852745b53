"""Object storage behind one small API: `s3://bucket/key` and `file://` URIs or plain paths.

S3 goes through boto3 with a custom endpoint (MinIO, Ceph, SeaweedFS as well as AWS). Credentials
always come from the environment or the ambient chain (IRSA, instance profile): the pods get
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the job's Secret through secretKeyRef, never from a
config file. No client is created at import time.

Every failure is a `StorageError` whose message is one line saying what failed and what to do,
and which says whether it is permanent; transient S3 failures are retried first (errors.py). Many
files move through one s3transfer manager (transfer.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from kubetune.storage.errors import RETRY_ENV, StorageError, retry_seconds, retrying
from kubetune.storage.transfer import RemoteFile, download_files, upload_files

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import StorageSpec

__all__ = [
    "RETRY_ENV",
    "StorageError",
    "StorageOptions",
    "UploadedFile",
    "check_readable",
    "check_writable",
    "delete_prefix",
    "download",
    "download_dir",
    "exists",
    "is_remote",
    "join",
    "list_files",
    "read_bytes",
    "retry_seconds",
    "sha256_file",
    "split_s3",
    "upload_dir",
    "upload_file",
    "write_bytes",
]

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StorageOptions:
    """How to reach S3. Unset fields fall back to the AWS_* environment and the ambient chain."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"

    @classmethod
    def from_spec(cls, spec: StorageSpec | None) -> StorageOptions:
        if spec is None:
            return cls()
        return cls(endpoint_url=spec.endpoint, region=spec.region, addressing_style=spec.addressing_style)

    def client(self, pool: int = 10) -> Any:
        """A new client whose connection pool holds `pool` connections (one per thread that uses it)."""
        import boto3
        from botocore.config import Config

        endpoint = self._endpoint()
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": self.addressing_style},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=pool,
            # Over plain http SigV4 signs each request body's sha256, which the server checks: the
            # CRC32 that botocore adds by default would be a second pass over every byte for the same
            # guarantee. Over https the body is not signed, and the CRC32 is what protects it: keep it.
            request_checksum_calculation="when_required" if _plain_http(endpoint) else "when_supported",
        )
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def _endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    @property
    def where(self) -> str:
        return self._endpoint() or "AWS S3"


def _plain_http(endpoint: str | None) -> bool:
    return endpoint is not None and endpoint.lower().startswith("http://")


@dataclass(frozen=True)
class UploadedFile:
    uri: str
    size: int
    sha256: str


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(unquote(uri[7:]))
    return Path(uri).expanduser()


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') of an s3:// URI."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """Append path parts with exactly one '/' between them (works for s3://, file:// and paths)."""
    out = uri
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        out = out.rstrip("/") + "/" + part if out else part
    return out


# --------------------------------------------------------------------------------------------
# Operations (each retried on transient S3 failures, see errors.py)
# --------------------------------------------------------------------------------------------


def list_files(uri: str, opts: StorageOptions | None = None) -> list[str]:
    """Every file under a prefix (or the file itself), as URIs/paths of the same kind, sorted."""
    opts = opts or StorageOptions()
    if is_remote(uri):
        return [f.uri for f in _list_remote(uri, opts)]

    def local() -> list[str]:
        path = _local_path(uri)
        if path.is_file():
            return [uri]
        if not path.exists():
            return []
        base = uri.rstrip("/")
        return sorted(join(base, str(p.relative_to(path))) for p in path.rglob("*") if p.is_file())

    return retrying(local, "list", uri, opts)


def _list_remote(uri: str, opts: StorageOptions) -> list[RemoteFile]:
    bucket, key = split_s3(uri)

    def listing() -> list[RemoteFile]:
        client = opts.client()
        prefix = key
        # An exact object first (s3://b/data.jsonl), else everything under the prefix.
        if key and not key.endswith("/"):
            head = _head(client, bucket, key)
            if head is not None:
                return [RemoteFile(bucket, key, int(head["ContentLength"]), head["ETag"])]
            prefix += "/"
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    found.append(RemoteFile(bucket, obj["Key"], int(obj["Size"]), obj["ETag"]))
        return sorted(found, key=lambda f: f.key)

    return retrying(listing, "list", uri, opts)


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata, or None when there is no such key (a bucket that is missing raises)."""
    from botocore.exceptions import ClientError

    try:
        head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
        return head
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise
    # HEAD answers a bare 404 for both: tell a missing bucket from a missing key
    _require_bucket(client, bucket, f"cannot read s3://{bucket}/{key}")
    return None


def _require_bucket(client: Any, bucket: str, where: str) -> None:
    """Raise a StorageError naming the bucket when it does not exist (HeadBucket answers 404)."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            raise StorageError(f"{where}: bucket {bucket} does not exist", "create it or fix the URI") from None
        raise


def exists(uri: str, opts: StorageOptions | None = None) -> bool:
    opts = opts or StorageOptions()
    if not is_remote(uri):
        return _local_path(uri).exists()
    bucket, key = split_s3(uri)
    return retrying(lambda: _head(opts.client(), bucket, key) is not None, "check", uri, opts)


def read_bytes(uri: str, opts: StorageOptions | None = None) -> bytes:
    opts = opts or StorageOptions()

    def read() -> bytes:
        if not is_remote(uri):
            return _local_path(uri).read_bytes()
        bucket, key = split_s3(uri)
        body: bytes = opts.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    return retrying(read, "read", uri, opts)


def write_bytes(uri: str, data: bytes, opts: StorageOptions | None = None) -> None:
    opts = opts or StorageOptions()

    def write() -> None:
        if not is_remote(uri):
            path = _local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see half a file
            return
        bucket, key = split_s3(uri)
        opts.client().put_object(Bucket=bucket, Key=key, Body=data)

    retrying(write, "write", uri, opts)


def download(uri: str, dest: str | Path, opts: StorageOptions | None = None) -> Path:
    """Copy one file to `dest` (atomically: a partial download never has the final name)."""
    opts = opts or StorageOptions()
    dest = Path(dest)
    if is_remote(uri):
        files = _list_remote(uri, opts)
        if [f.uri for f in files] != [uri]:
            raise StorageError(f"cannot download {uri}: not found", "check the URI")
        download_files([(files[0], dest)], opts)
        return dest
    retrying(lambda: _copy_local(_local_path(uri), dest), "download", uri, opts)
    return dest


def download_dir(uri: str, dest_dir: str | Path, opts: StorageOptions | None = None) -> Path:
    """Copy every file under a prefix into `dest_dir`, keeping relative paths."""
    opts = opts or StorageOptions()
    dest_dir = Path(dest_dir)
    base = uri.rstrip("/") + "/"

    def local_name(src: str) -> Path:
        return dest_dir / (src[len(base) :] if src.startswith(base) else src.rsplit("/", 1)[-1])

    if is_remote(uri):
        remote = _list_remote(uri, opts)
        _found_something(remote, uri)
        download_files([(f, local_name(f.uri)) for f in remote], opts)
        return dest_dir
    files = list_files(uri, opts)
    _found_something(files, uri)
    for src in files:
        retrying(partial(_copy_local, _local_path(src), local_name(src)), "download", src, opts)
    return dest_dir


def _found_something(files: list[Any], uri: str) -> None:
    if not files:
        raise StorageError(f"cannot download {uri}: nothing found under it", "check the URI")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_COPY_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_local(src: Path, dest: Path) -> str:
    """Copy through a temporary name (readers never see half a file); returns the sha256 of what was copied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(_COPY_CHUNK), b""):
                digest.update(chunk)
                fout.write(chunk)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def upload_file(path: str | Path, uri: str, opts: StorageOptions | None = None) -> UploadedFile:
    """Upload one file (multipart and parallel when large); returns its size and sha256."""
    return _upload([(Path(path), uri)], uri, opts or StorageOptions())[0]


def upload_dir(local_dir: str | Path, uri: str, opts: StorageOptions | None = None) -> list[UploadedFile]:
    """Upload a directory tree under `uri`, all files through one transfer; returns what was stored, sorted."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    return _upload([(p, join(uri, p.relative_to(local_dir).as_posix())) for p in files], uri, opts or StorageOptions())


def _upload(files: list[tuple[Path, str]], uri: str, opts: StorageOptions) -> list[UploadedFile]:
    if is_remote(uri):
        return upload_files(files, opts)

    def copy(path: Path, dest: str) -> UploadedFile:
        size = path.stat().st_size
        return UploadedFile(uri=dest, size=size, sha256=_copy_local(path, _local_path(dest)))

    return sorted((retrying(partial(copy, p, dest), "upload to", dest, opts) for p, dest in files), key=lambda u: u.uri)


def delete_prefix(uri: str, opts: StorageOptions | None = None) -> None:
    """Delete a file or everything under a prefix."""
    opts = opts or StorageOptions()
    if not is_remote(uri):

        def local() -> None:
            path = _local_path(uri)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

        retrying(local, "delete", uri, opts)
        return
    bucket, key = split_s3(uri)
    prefix = key if key.endswith("/") or not key else key + "/"
    keys = [f.key for f in _list_remote(f"s3://{bucket}/{prefix}", opts)]
    if key and not key.endswith("/") and exists(uri, opts):
        keys.append(key)

    def delete(batch: list[str]) -> None:
        response = opts.client().delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
        )
        errors = response.get("Errors") or []
        if errors:  # a 200 response can still carry per-key failures
            first = errors[0]
            raise StorageError(
                f"cannot delete {len(errors)} object(s) under {uri}: s3://{bucket}/{first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}".rstrip(),
                "check the credentials' delete permission and the bucket policy",
            )

    for start in range(0, len(keys), 1000):
        retrying(partial(delete, keys[start : start + 1000]), "delete", uri, opts)


# --------------------------------------------------------------------------------------------
# Pre-flight checks: fail before training, not after it
# --------------------------------------------------------------------------------------------


def check_writable(uri: str, opts: StorageOptions | None = None) -> None:
    """The bucket exists (asked explicitly: some servers create a misspelled one on the first write)
    and a probe object can be written and deleted under `uri`; or, for a path, the directory can be
    created and written."""
    opts = opts or StorageOptions()
    probe = join(uri, f".kubetune-write-check-{uuid.uuid4().hex}")
    if not is_remote(uri):

        def local() -> None:
            path = _local_path(probe)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            path.unlink()

        retrying(local, "write to", uri, opts)
        return
    bucket, key = split_s3(probe)

    def remote() -> None:
        client = opts.client()
        _require_bucket(client, bucket, f"cannot write to {uri}")
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)

    retrying(remote, "write to", uri, opts)


def check_readable(uri: str, opts: StorageOptions | None = None) -> None:
    """Something is under `uri` and its first file can be read (listing and reading are separate rights)."""
    opts = opts or StorageOptions()
    if not is_remote(uri):
        files = list_files(uri, opts)
        if not files:
            raise StorageError(f"cannot read {uri}: no such file or directory", "check the path and its volume")
        retrying(lambda: _local_path(files[0]).open("rb").close(), "read", files[0], opts)
        return
    remote = _list_remote(uri, opts)
    if not remote:
        raise StorageError(f"cannot read {uri}: nothing found under it", "check the URI")
    first = remote[0]
    retrying(
        lambda: opts.client().get_object(Bucket=first.bucket, Key=first.key, Range="bytes=0-0")["Body"].read(),
        "read",
        first.uri,
        opts,
    )
