"""What a storage failure means and whether waiting can fix it.

Permanent failures (wrong credentials, a missing bucket or key, an unwritable or impossible local
path) fail at once with what to fix, in the terms of the backend that failed: a local path gets no
endpoint advice. Transient ones (connection errors, timeouts, 5xx and throttling) are retried with
backoff for `KUBETUNE_STORAGE_RETRY_S` seconds (default 300): an S3 restart or a short network
outage costs a pause, not the job. Only then do they fail, as retryable.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from kubetune.storage import StorageOptions

log = logging.getLogger("kubetune.storage")

RETRY_ENV = "KUBETUNE_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 300.0
_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 10.0

# S3 error codes that say "not now" rather than "never" (AWS, MinIO, Ceph and SeaweedFS spell them so).
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "OperationAborted",
    }
)
_DENIED_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"})

T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage operation failed. str() is one line: what failed; what to do.

    `permanent` says whether trying again can help; `what` and `todo` are the two halves."""

    def __init__(self, what: str, todo: str = "", permanent: bool = True) -> None:
        super().__init__(f"{what}; {todo}" if todo else what)
        self.what = what
        self.todo = todo
        self.permanent = permanent


# A tighter budget for the calls of one thread (see `bounded_retries`); None: the environment's.
_BOUND: ContextVar[float | None] = ContextVar("kubetune_storage_retry_bound", default=None)


@contextmanager
def bounded_retries(seconds: float) -> Iterator[None]:
    """Retry transient failures for at most `seconds` inside the block (and at most the usual budget):
    for callers with a deadline of their own, such as a lease that must be renewed before it expires."""
    token = _BOUND.set(seconds)
    try:
        yield
    finally:
        _BOUND.reset(token)


def retry_seconds(env: Mapping[str, str] | None = None) -> float:
    """How long transient failures of one operation are retried: `KUBETUNE_STORAGE_RETRY_S`, default 300
    (or less inside `bounded_retries`)."""
    bound = _BOUND.get()
    budget = _env_retry_seconds(env)
    return budget if bound is None else min(bound, budget)


def _env_retry_seconds(env: Mapping[str, str] | None) -> float:
    value = (os.environ if env is None else env).get(RETRY_ENV, "").strip()
    if not value:
        return DEFAULT_RETRY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise StorageError(
            f"{RETRY_ENV}={value!r} is not a number of seconds", "set it to e.g. 300, or unset it for the default"
        )
    return seconds


def retrying(call: Callable[[], T], action: str, uri: str, opts: StorageOptions) -> T:
    """`call()`, again after transient failures until the retry budget is spent; failures explained."""
    budget = retry_seconds()
    deadline = time.monotonic() + budget
    delay = _FIRST_DELAY_S
    while True:
        try:
            return call()
        except Exception as exc:
            err = explain(exc, action, uri, opts)
            if not is_transient(exc):  # refused, or not understood: waiting will not change it
                raise err from exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(
                    f"{err.what} (still failing after {budget:g} s of retries, {RETRY_ENV})", err.todo, permanent=False
                ) from exc
            pause = min(left, delay * random.uniform(0.5, 1.0))
            log.warning("%s; retrying in %.1f s (%.0f s of the retry budget left)", err.what, pause, left)
            time.sleep(pause)
            delay = min(delay * 2, _MAX_DELAY_S)


def is_transient(exc: BaseException) -> bool:
    from botocore import exceptions as bx

    if isinstance(exc, _connection_errors()):
        return True  # connection refused/reset, timeouts, a body cut off mid-stream
    if isinstance(exc, bx.ClientError):
        status = _status(exc) or 0
        return status >= 500 or status == 429 or _code(exc) in _TRANSIENT_CODES
    return False


def _connection_errors() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as bx
    from s3transfer.exceptions import RetriesExceededError

    return (bx.HTTPClientError, bx.ConnectionError, RetriesExceededError, ConnectionError, TimeoutError)


def explain(exc: BaseException, action: str, uri: str, opts: StorageOptions) -> StorageError:
    """One line a user can act on, from whatever boto3/botocore/s3transfer/the OS raised."""
    from botocore import exceptions as bx

    if isinstance(exc, StorageError):
        return exc
    where = f"cannot {action} {uri}"
    if isinstance(exc, bx.NoCredentialsError):
        return StorageError(
            f"{where}: no S3 credentials found",
            "set spec.storage.credentialsSecret (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY locally), "
            "or give the pod an IAM identity",
        )
    if is_transient(exc):
        if isinstance(exc, bx.ClientError):
            reason = f"S3 endpoint {opts.where} answered {_code(exc) or _status(exc)}"
        else:
            reason = f"S3 endpoint {opts.where} is unreachable ({type(exc).__name__})"
        return StorageError(
            f"{where}: {reason}", "check spec.storage.endpoint and the network path from the pod", permanent=False
        )
    if isinstance(exc, bx.ClientError):
        code, status = _code(exc), _status(exc)
        if code in _DENIED_CODES or status == 403:
            return StorageError(
                f"{where}: access denied by {opts.where} ({code or status})",
                "check the credentials Secret and the bucket policy",
            )
        if code == "NoSuchBucket":
            return StorageError(f"{where}: bucket does not exist", "create it or fix the URI")
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            return StorageError(f"{where}: not found", "check the URI")
        return StorageError(f"{where}: S3 error {code or status}: {exc}", "check the URI and the S3 server's log")
    if isinstance(exc, OSError):  # after the S3 errors: botocore's timeouts are OSErrors too
        return _explain_local(exc, where)
    return StorageError(f"{where}: {type(exc).__name__}: {exc}", "see the trainer log", permanent=False)


def _explain_local(exc: OSError, where: str) -> StorageError:
    mounted = "check the path and that the volume holding it is mounted"
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{where}: no such file or directory", mounted)
    if isinstance(exc, PermissionError):
        return StorageError(
            f"{where}: permission denied", f"make it writable by the trainer's user (uid {os.getuid()})"
        )
    if isinstance(exc, NotADirectoryError | FileExistsError) or exc.errno in {errno.ENOTDIR, errno.EEXIST}:
        return StorageError(f"{where}: a part of the path is a regular file, not a directory", "choose another path")
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{where}: no space left on the device", "free space or use a larger volume")
    if exc.errno == errno.EROFS:
        return StorageError(f"{where}: read-only file system", "mount the volume read-write or choose another path")
    return StorageError(f"{where}: {exc.strerror or exc}", mounted)


def _status(exc: Any) -> int | None:
    status: int | None = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
