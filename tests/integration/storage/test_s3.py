"""kubetune.storage against a real S3 server (SeaweedFS) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune import storage
from kubetune.devtools.s3server import S3Server
from kubetune.trainer.failures import ExitCode, classify
from kubetune.trainer.launch import container_exit_code

pytestmark = pytest.mark.integration


def test_roundtrip_listing_and_prefix_semantics(s3_env: Any, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket("storage-roundtrip")
    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "w.safetensors").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "config.json").write_text("{}")
    uploaded = storage.upload_dir(src, f"{bucket}/run/")
    assert [u.uri for u in uploaded] == [f"{bucket}/run/config.json", f"{bucket}/run/model/w.safetensors"]
    # A prefix without the trailing slash lists the same files; a key lists itself.
    assert storage.list_files(f"{bucket}/run") == storage.list_files(f"{bucket}/run/")
    assert storage.list_files(f"{bucket}/run/config.json") == [f"{bucket}/run/config.json"]
    # "run" must not match "run2": prefixes end at a path boundary.
    storage.write_bytes(f"{bucket}/run2/x", b"x")
    assert all("/run2/" not in u for u in storage.list_files(f"{bucket}/run"))
    back = storage.download_dir(f"{bucket}/run/", tmp_path / "back")
    assert storage.sha256_file(back / "model" / "w.safetensors") == uploaded[1].sha256
    assert storage.exists(f"{bucket}/run/config.json") and not storage.exists(f"{bucket}/run/nope")
    storage.delete_prefix(f"{bucket}/run/")
    assert storage.list_files(f"{bucket}/run/") == []


def test_multipart_upload_of_a_large_file(s3_env: Any, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket("storage-multipart")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(70 * 1024 * 1024))  # several parts
    result = storage.upload_file(big, f"{bucket}/big.bin")
    assert result.size == big.stat().st_size
    head = s3_env.client().head_object(Bucket="storage-multipart", Key="big.bin")
    assert "-" in head["ETag"]  # multipart ETags carry the part count
    assert head["ContentLength"] == result.size
    # The sha256 hashed while uploading is the stored object's (the manifest relies on it).
    stored = s3_env.client().get_object(Bucket="storage-multipart", Key="big.bin")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == result.sha256 == storage.sha256_file(big)


def test_wrong_credentials_and_unreachable_endpoint_are_one_clear_line(
    s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.make_bucket("storage-errors")
    monkeypatch.setenv(storage.RETRY_ENV, "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(storage.StorageError, match=r"access denied .* check the credentials Secret"):
        storage.list_files(f"{bucket}/x/")
    unreachable = storage.StorageOptions(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(storage.StorageError, match="unreachable"):
        storage.read_bytes(f"{bucket}/x", unreachable)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    with pytest.raises(storage.StorageError, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x")


def _container_code(exc: BaseException) -> int:
    """The exit code a pod failing with `exc` ends with (what decides a retry)."""
    return container_exit_code(1, [int(classify(exc).code)])


def test_refusals_are_permanent_and_fail_at_once(s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong credentials and a missing bucket are not retried: retrying cannot fix them."""
    bucket = s3_env.make_bucket("storage-refused")
    monkeypatch.setenv(storage.RETRY_ENV, "600")  # a retry would hang the test, not pass it
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(storage.StorageError) as denied:
        storage.read_bytes(f"{bucket}/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    with pytest.raises(storage.StorageError) as missing:
        storage.list_files("s3://no-such-data-bucket/train/")
    for info in (denied, missing):
        assert info.value.permanent
        assert _container_code(info.value) == ExitCode.STORAGE  # the pod fails for good, saying why
        assert "fix the rows" not in classify(info.value).line


def test_outage_past_the_retry_budget_fails_as_retryable(s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.RETRY_ENV, "2")
    unreachable = storage.StorageOptions(endpoint_url="http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"unreachable .* after 2 s of retries") as info:
        storage.write_bytes("s3://bucket/x", b"x", unreachable)
    assert time.monotonic() - started >= 2  # it waited for the endpoint to come back
    assert not info.value.permanent
    assert classify(info.value).code is ExitCode.STORAGE_UNAVAILABLE
    assert _container_code(info.value) == ExitCode.PREEMPTED  # 143: Kubernetes restarts the pod


def test_preflight_finds_a_missing_output_bucket_without_creating_it(s3_env: Any) -> None:
    """Some servers create a bucket on the first write to it; the check must ask, not write."""
    with pytest.raises(storage.StorageError, match="bucket no-such-output does not exist") as info:
        storage.check_writable("s3://no-such-output/runs/a/")
    assert info.value.permanent
    names = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert "no-such-output" not in names
    bucket = s3_env.make_bucket("storage-preflight")
    storage.check_writable(f"{bucket}/runs/a/")
    assert storage.list_files(f"{bucket}/runs/a/") == []  # the probe is gone
    with pytest.raises(storage.StorageError, match="nothing found under it"):
        storage.check_readable(f"{bucket}/models/none/")
    storage.write_bytes(f"{bucket}/models/m/config.json", b"{}")
    storage.check_readable(f"{bucket}/models/m/")


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A server of this test's own, which it may take down."""
    server = S3Server().start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.stop()


class _Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            self.seen.set()


def test_an_8s_outage_costs_a_pause_not_the_job(own_s3: S3Server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(storage.RETRY_ENV, "90")
    bucket = own_s3.make_bucket("outage")
    src = tmp_path / "ckpt"
    src.mkdir()
    for n in range(4):
        (src / f"shard-{n}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    retries = _Retries()
    logging.getLogger("kubetune.storage").addHandler(retries)
    results: list[Any] = []

    def work() -> None:  # what a checkpoint sync does: upload, list, read back
        try:
            uploaded = storage.upload_dir(src, f"{bucket}/ckpt/")
            back = storage.download_dir(f"{bucket}/ckpt/", tmp_path / "back")
            results.append((uploaded, back))
        except Exception as exc:
            results.append(exc)

    try:
        own_s3.stop(keep_data=True)
        down = time.monotonic()
        worker = threading.Thread(target=work)
        worker.start()
        assert retries.seen.wait(30), "the upload never retried"
        time.sleep(max(0.0, 8 - (time.monotonic() - down)))  # the outage lasts 8 s
        own_s3.start()
        worker.join(120)
    finally:
        logging.getLogger("kubetune.storage").removeHandler(retries)
    assert not worker.is_alive()
    assert len(results) == 1 and not isinstance(results[0], Exception), results
    uploaded, back = results[0]
    assert [u.sha256 for u in uploaded] == [storage.sha256_file(back / f"shard-{n}.bin") for n in range(4)]
    assert [u.sha256 for u in uploaded] == [storage.sha256_file(src / f"shard-{n}.bin") for n in range(4)]
