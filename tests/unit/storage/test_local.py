"""kubetune.storage on paths and file:// URIs (the PVC / local-run case)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune import storage


def test_join_puts_exactly_one_slash_between_parts() -> None:
    assert storage.join("s3://b/prefix/", "/model/", "a.bin") == "s3://b/prefix/model/a.bin"
    assert storage.join("/data", "x") == "/data/x"
    assert storage.join("file:///data/", "x") == "file:///data/x"


def test_split_s3_and_remote_detection() -> None:
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    assert storage.is_remote("s3://b/k") and not storage.is_remote("file:///x") and not storage.is_remote("/x")
    with pytest.raises(storage.StorageError):
        storage.split_s3("/not/s3")


def test_upload_list_download_roundtrip_on_local_paths(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    dest_uri = f"file://{tmp_path}/dest"
    uploaded = storage.upload_dir(src, dest_uri)
    assert [u.uri for u in uploaded] == [f"{dest_uri}/a.txt", f"{dest_uri}/sub/b.txt"]
    assert uploaded[0].size == 5 and uploaded[0].sha256 == storage.sha256_file(src / "a.txt")
    assert storage.list_files(dest_uri) == [f"{dest_uri}/a.txt", f"{dest_uri}/sub/b.txt"]
    out = storage.download_dir(dest_uri, tmp_path / "back")
    assert (out / "sub" / "b.txt").read_text() == "beta"
    assert storage.read_bytes(f"{dest_uri}/a.txt") == b"alpha"
    storage.delete_prefix(dest_uri)
    assert storage.list_files(dest_uri) == []


def test_write_bytes_is_atomic_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    target = tmp_path / "x" / "manifest.json"
    storage.write_bytes(str(target), b"{}")
    assert target.read_bytes() == b"{}" and not list(target.parent.glob("*.partial"))
    with pytest.raises(storage.StorageError, match="no such file or directory"):
        storage.read_bytes(str(tmp_path / "missing"))
    with pytest.raises(storage.StorageError, match="nothing found under it"):
        storage.download_dir(str(tmp_path / "empty"), tmp_path / "d")
