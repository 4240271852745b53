"""Object storage behind one small API: `s3://bucket/key` and `file://` URIs or plain paths.

S3 goes through boto3 with a custom endpoint (MinIO, Ceph, SeaweedFS as well as AWS). Credentials
always come from the environment or the ambient chain (IRSA, instance profile): the pods get
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the job's Secret through secretKeyRef, never from a
config file. No client is created at import time.

Every failure is a `StorageError` whose message is one line saying what failed and what to do.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import StorageSpec

__all__ = [
    "StorageError",
    "StorageOptions",
    "UploadedFile",
    "delete_prefix",
    "download",
    "download_dir",
    "exists",
    "is_remote",
    "join",
    "list_files",
    "read_bytes",
    "sha256_file",
    "split_s3",
    "upload_dir",
    "upload_file",
    "write_bytes",
]

_MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MULTIPART_CHUNK = 64 * 1024 * 1024
_WORKERS = 8


class StorageError(RuntimeError):
    """A storage operation failed; str() is one actionable line."""


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

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": self.addressing_style},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=_WORKERS * 2,
        )
        endpoint = self._endpoint()
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def _endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    @property
    def where(self) -> str:
        return self._endpoint() or "AWS S3"


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
# Errors
# --------------------------------------------------------------------------------------------


def _explain(exc: BaseException, action: str, uri: str, opts: StorageOptions) -> StorageError:
    """One line a user can act on, from whatever boto3/botocore/OS raised."""
    from botocore import exceptions as bx

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bx.NoCredentialsError):
        return StorageError(
            f"cannot {action} {uri}: no S3 credentials found; set spec.storage.credentialsSecret "
            "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY locally), or give the pod an IAM identity"
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return StorageError(
            f"cannot {action} {uri}: S3 endpoint {opts.where} is unreachable ({type(exc).__name__}); "
            "check spec.storage.endpoint and the network path from the pod"
        )
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"} or status == 403:
            return StorageError(
                f"cannot {action} {uri}: access denied by {opts.where} ({code or status}); "
                "check the credentials Secret and the bucket policy"
            )
        if code in {"NoSuchBucket"}:
            return StorageError(f"cannot {action} {uri}: bucket does not exist; create it or fix the URI")
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            return StorageError(f"cannot {action} {uri}: not found; check the URI")
        return StorageError(f"cannot {action} {uri}: S3 error {code or status}: {exc}")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"cannot {action} {uri}: no such file or directory")
    if isinstance(exc, PermissionError):
        return StorageError(f"cannot {action} {uri}: permission denied")
    if isinstance(exc, OSError):
        return StorageError(f"cannot {action} {uri}: {exc.strerror or exc}")
    return StorageError(f"cannot {action} {uri}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------


def list_files(uri: str, opts: StorageOptions | None = None) -> list[str]:
    """Every file under a prefix (or the file itself), as URIs/paths of the same kind, sorted."""
    opts = opts or StorageOptions()
    try:
        if not is_remote(uri):
            path = _local_path(uri)
            if path.is_file():
                return [uri]
            if not path.exists():
                return []
            base = uri.rstrip("/")
            return sorted(join(base, str(p.relative_to(path))) for p in path.rglob("*") if p.is_file())
        bucket, key = split_s3(uri)
        client = opts.client()
        found: list[str] = []
        # An exact object first (s3://b/data.jsonl), else everything under the prefix.
        if key and not key.endswith("/"):
            try:
                client.head_object(Bucket=bucket, Key=key)
                return [uri]
            except Exception as exc:  # a 404 here only means "not a single object"
                from botocore.exceptions import ClientError

                if not (isinstance(exc, ClientError) and _status(exc) == 404):
                    raise
            key += "/"
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    found.append(f"s3://{bucket}/{obj['Key']}")
        return sorted(found)
    except Exception as exc:
        raise _explain(exc, "list", uri, opts) from exc


def _status(exc: Any) -> int | None:
    status: int | None = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status


def exists(uri: str, opts: StorageOptions | None = None) -> bool:
    opts = opts or StorageOptions()
    if not is_remote(uri):
        return _local_path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        opts.client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and _status(exc) == 404:
            return False
        raise _explain(exc, "check", uri, opts) from exc


def read_bytes(uri: str, opts: StorageOptions | None = None) -> bytes:
    opts = opts or StorageOptions()
    try:
        if not is_remote(uri):
            return _local_path(uri).read_bytes()
        bucket, key = split_s3(uri)
        body: bytes = opts.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body
    except Exception as exc:
        raise _explain(exc, "read", uri, opts) from exc


def write_bytes(uri: str, data: bytes, opts: StorageOptions | None = None) -> None:
    opts = opts or StorageOptions()
    try:
        if not is_remote(uri):
            path = _local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see half a file
            return
        bucket, key = split_s3(uri)
        opts.client().put_object(Bucket=bucket, Key=key, Body=data)
    except Exception as exc:
        raise _explain(exc, "write", uri, opts) from exc


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=_MULTIPART_THRESHOLD,
        multipart_chunksize=_MULTIPART_CHUNK,
        max_concurrency=_WORKERS,
        use_threads=True,
    )


def download(uri: str, dest: str | Path, opts: StorageOptions | None = None, client: Any = None) -> Path:
    """Copy one file to `dest` (atomically: a partial download never has the final name)."""
    opts = opts or StorageOptions()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    try:
        if not is_remote(uri):
            shutil.copyfile(_local_path(uri), tmp)
        else:
            bucket, key = split_s3(uri)
            (client or opts.client()).download_file(bucket, key, str(tmp), Config=_transfer_config())
        tmp.replace(dest)
        return dest
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise _explain(exc, "download", uri, opts) from exc


def download_dir(uri: str, dest_dir: str | Path, opts: StorageOptions | None = None) -> Path:
    """Copy every file under a prefix into `dest_dir`, keeping relative paths; files in parallel."""
    opts = opts or StorageOptions()
    dest_dir = Path(dest_dir)
    files = list_files(uri, opts)
    if not files:
        raise StorageError(f"cannot download {uri}: nothing found under it; check the URI")
    base = uri.rstrip("/") + "/"
    client = opts.client() if is_remote(uri) else None

    def one(src: str) -> Path:
        rel = src[len(base) :] if src.startswith(base) else src.rsplit("/", 1)[-1]
        return download(src, dest_dir / rel, opts, client)

    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(one, files))
    return dest_dir


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_file(path: str | Path, uri: str, opts: StorageOptions | None = None, client: Any = None) -> UploadedFile:
    """Upload one file (multipart and parallel above 64 MiB) and verify the stored size.

    Integrity in transit is checked by botocore's default flexible checksums (CRC32 per request,
    verified by the server); the file's sha256 is stored as object metadata for later checks.
    """
    opts = opts or StorageOptions()
    path = Path(path)
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
        if not is_remote(uri):
            dest = _local_path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".partial")
            shutil.copyfile(path, tmp)
            tmp.replace(dest)
            stored = dest.stat().st_size
        else:
            bucket, key = split_s3(uri)
            client = client or opts.client()
            client.upload_file(
                str(path), bucket, key, Config=_transfer_config(), ExtraArgs={"Metadata": {"sha256": digest}}
            )
            stored = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        if stored != size:
            raise StorageError(f"cannot upload {path} to {uri}: stored size {stored} != local size {size}")
        return UploadedFile(uri=uri, size=size, sha256=digest)
    except Exception as exc:
        raise _explain(exc, "upload to", uri, opts) from exc


def upload_dir(local_dir: str | Path, uri: str, opts: StorageOptions | None = None) -> list[UploadedFile]:
    """Upload a directory tree under `uri`, files in parallel; returns what was stored, sorted."""
    opts = opts or StorageOptions()
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    client = opts.client() if is_remote(uri) else None

    def one(p: Path) -> UploadedFile:
        return upload_file(p, join(uri, p.relative_to(local_dir).as_posix()), opts, client)

    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        return sorted(pool.map(one, files), key=lambda u: u.uri)


def delete_prefix(uri: str, opts: StorageOptions | None = None) -> None:
    """Delete a file or everything under a prefix."""
    opts = opts or StorageOptions()
    try:
        if not is_remote(uri):
            path = _local_path(uri)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        client = opts.client()
        prefix = key if key.endswith("/") or not key else key + "/"
        keys = [f.split("/", 3)[3] for f in list_files(f"s3://{bucket}/{prefix}", opts)]
        if key and not key.endswith("/") and exists(uri, opts):
            keys.append(key)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:  # a 200 response can still carry per-key failures
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} object(s) under {uri}: s3://{bucket}/{first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                )
    except Exception as exc:
        raise _explain(exc, "delete", uri, opts) from exc
