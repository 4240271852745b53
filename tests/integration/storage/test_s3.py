"""kubetune.storage against a real S3 server (SeaweedFS) on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kubetune import storage

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
    big.write_bytes(os.urandom(70 * 1024 * 1024))  # above the 64 MiB multipart threshold
    result = storage.upload_file(big, f"{bucket}/big.bin")
    assert result.size == big.stat().st_size
    head = s3_env.client().head_object(Bucket="storage-multipart", Key="big.bin")
    assert "-" in head["ETag"]  # multipart ETags carry the part count
    assert head["Metadata"]["sha256"] == result.sha256


def test_wrong_credentials_and_unreachable_endpoint_are_one_clear_line(s3_env: Any) -> None:
    bucket = s3_env.make_bucket("storage-errors")
    os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong"
    with pytest.raises(storage.StorageError, match=r"access denied .* check the credentials Secret"):
        storage.list_files(f"{bucket}/x/")
    unreachable = storage.StorageOptions(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(storage.StorageError, match="unreachable"):
        storage.read_bytes(f"{bucket}/x", unreachable)
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3_env.secret_key
    with pytest.raises(storage.StorageError, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x")
