"""Which storage failures are permanent, how long transient ones are retried, and the upload's hash."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from kubetune import storage
from kubetune.storage.errors import retrying
from kubetune.storage.transfer import _HashingReader


def test_retry_budget_comes_from_the_environment() -> None:
    assert storage.retry_seconds({}) == 300
    assert storage.retry_seconds({storage.RETRY_ENV: "45"}) == 45
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(storage.StorageError, match=storage.RETRY_ENV):
            storage.retry_seconds({storage.RETRY_ENV: bad})


def test_local_refusals_are_permanent_with_local_advice(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    cases = {
        str(tmp_path / "a-file" / "run" / "x"): "a part of the path is a regular file",
        "/sys/kubetune-output/x": "permission denied",  # sysfs refuses new entries, even to root
    }
    for uri, says in cases.items():
        with pytest.raises(storage.StorageError) as info:
            storage.check_writable(os.path.dirname(uri))
        assert says in str(info.value) and info.value.permanent
        assert "endpoint" not in str(info.value) and "Secret" not in str(info.value)
    with pytest.raises(storage.StorageError, match="no such file or directory") as missing:
        storage.read_bytes(str(tmp_path / "missing"))
    assert missing.value.permanent


def test_transient_failures_are_retried_until_they_pass() -> None:
    from botocore.exceptions import EndpointConnectionError

    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return "stored"

    assert retrying(flaky, "write", "s3://b/k", storage.StorageOptions()) == "stored"
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.5  # it backed off between tries


def test_a_refusal_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    monkeypatch.setenv(storage.RETRY_ENV, "600")
    calls = []

    def denied() -> None:
        calls.append(1)
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")

    with pytest.raises(storage.StorageError, match="access denied") as info:
        retrying(denied, "read", "s3://b/k", storage.StorageOptions())
    assert calls == [1] and info.value.permanent


@pytest.mark.parametrize(("code", "status"), [("SlowDown", 503), ("InternalError", 500), ("TooManyRequests", 429)])
def test_5xx_and_throttling_are_transient(code: str, status: int) -> None:
    from botocore.exceptions import ClientError

    from kubetune.storage.errors import explain, is_transient

    exc = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    assert is_transient(exc)
    assert not explain(exc, "write", "s3://b/k", storage.StorageOptions()).permanent


def test_hashing_reader_hashes_each_byte_once_however_often_it_is_read() -> None:
    data = os.urandom(100_000)
    reader = _HashingReader(io.BytesIO(data))
    assert reader.read(10_000) == data[:10_000]
    reader.seek(0)  # botocore reads a body for its checksum, then again to send it
    reader.read(30_000)
    reader.seek(5_000)  # a retry re-reads from the part's start
    reader.read(50_000)
    while reader.read(7_000):
        pass
    assert reader.hashed == len(data)
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()


def test_the_crc32_checksum_is_added_only_where_sigv4_does_not_sign_the_body() -> None:
    """Over http SigV4 already signs each body's sha256: a CRC32 would be a second pass over every byte."""
    from kubetune.storage import StorageOptions

    plain = StorageOptions(endpoint_url="http://127.0.0.1:9000").client()
    tls = StorageOptions(endpoint_url="https://s3.example.com").client()
    assert plain.meta.config.request_checksum_calculation == "when_required"
    assert tls.meta.config.request_checksum_calculation == "when_supported"


def test_bounded_retries_tighten_the_budget_only_inside_the_block() -> None:
    from kubetune.storage.errors import RETRY_ENV, bounded_retries, retry_seconds

    env = {RETRY_ENV: "300"}
    with bounded_retries(45):
        assert retry_seconds(env) == 45
        assert retry_seconds({RETRY_ENV: "10"}) == 10  # never longer than the usual budget
    assert retry_seconds(env) == 300
