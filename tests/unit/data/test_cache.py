"""The tokenize-once cache shared by several writers (pods on one volume, `kubetune run --local --nodes 2`)."""

from __future__ import annotations

from pathlib import Path

from kubetune.trainer.data.cache import CacheEntry


def test_writers_with_the_same_pid_never_share_or_clear_a_staging_directory(tmp_path: Path) -> None:
    # Two pods sharing a cache volume each have their own pid namespace, so their writers can have the
    # same pid; two entries in one process are exactly that situation.
    node0, node1 = (CacheEntry("k", tmp_path, None, None) for _ in range(2))
    staged0 = node0.staging()
    (staged0 / "report.json").write_text("node0")
    staged1 = node1.staging()
    assert staged1 != staged0
    assert (staged0 / "report.json").read_text() == "node0"  # node1 did not clear node0's work in progress
    (staged1 / "report.json").write_text("node1")

    node0.commit(staged0)
    node1.commit(staged1)  # the entry is already there: same key, same content, nothing to do
    assert node0.local_complete() and (node0.local / "report.json").read_text() == "node0"
    assert [p.name for p in tmp_path.iterdir()] == ["data-k"]  # no staging directory left behind
    assert oct(node0.local.stat().st_mode & 0o777) == oct(0o755)
