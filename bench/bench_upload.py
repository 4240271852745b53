"""Upload throughput of `kubetune.storage.upload_dir` against a plain s3transfer `TransferManager`
uploading the same files, in the same run, on a local S3 server (SeaweedFS on 127.0.0.1).

    python bench/bench_upload.py                  # 384 MiB model-like folder, best of 3
    python bench/bench_upload.py --mib 919 --repeat 5

The folder looks like an export: a few large safetensors shards and small JSON/tokenizer files.
Ours also computes every file's sha256 (for the manifest) while uploading; the baseline only
uploads (its default TransferConfig, one client). The issue's measurement was 919 MiB, where the
old per-file transfers reached 0.83-0.87x the baseline's throughput; the target is >= 1.0x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def make_folder(root: Path, total_mib: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    small = {
        "config.json": 2_000,
        "generation_config.json": 300,
        "tokenizer.json": 3 * MiB,
        "tokenizer_config.json": 5_000,
        "special_tokens_map.json": 600,
        "model.safetensors.index.json": 30_000,
    }
    for name, size in small.items():
        (root / name).write_bytes(os.urandom(size))
    shards = max(1, total_mib // 128)
    shard_bytes = (total_mib * MiB - sum(small.values())) // shards
    for n in range(shards):
        (root / f"model-{n + 1:05d}-of-{shards:05d}.safetensors").write_bytes(os.urandom(shard_bytes))
    return sorted(p for p in root.rglob("*") if p.is_file())


def upload_ours(root: Path, uri: str) -> None:
    from kubetune.storage import StorageOptions, upload_dir

    upload_dir(root, uri, StorageOptions())


def upload_plain(root: Path, bucket: str, prefix: str, server: Any) -> None:
    from s3transfer.manager import TransferConfig, TransferManager

    with TransferManager(server.client(), TransferConfig()) as manager:
        futures = [
            manager.upload(str(p), bucket, f"{prefix}/{p.relative_to(root).as_posix()}")
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
        for future in futures:
            future.result()


def cpu_seconds() -> float:
    """This process's CPU time, all threads: what the client side costs (the server's is not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=384, help="folder size in MiB (the issue measured 919)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from kubetune.devtools.s3server import S3Server

    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp, S3Server() as server:
        os.environ.update(server.env())
        files = make_folder(Path(tmp) / "model", args.mib)
        size = sum(p.stat().st_size for p in files)
        server.make_bucket("bench")
        client = server.client()
        best: dict[str, float] = {"ours": float("inf"), "plain": float("inf")}
        cpu: dict[str, float] = {"ours": float("inf"), "plain": float("inf")}
        for n in range(args.repeat):
            for name in ("plain", "ours") if n % 2 == 0 else ("ours", "plain"):  # alternate: no order bias
                prefix = f"{name}-{n}"
                started, cpu_started = time.perf_counter(), cpu_seconds()
                if name == "ours":
                    upload_ours(Path(tmp) / "model", f"s3://bench/{prefix}/")
                else:
                    upload_plain(Path(tmp) / "model", "bench", prefix, server)
                elapsed, used = time.perf_counter() - started, cpu_seconds() - cpu_started
                best[name] = min(best[name], elapsed)
                cpu[name] = min(cpu[name], used)
                print(
                    f"run {n + 1} {name:5s}: {elapsed:6.2f} s  {size / MiB / elapsed:7.1f} MiB/s  CPU {used:5.2f} s",
                    flush=True,
                )
                for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket="bench", Delete={"Objects": keys, "Quiet": True})
        result = {
            "bytes": size,
            "files": len(files),
            "repeat": args.repeat,
            "ours_s": round(best["ours"], 3),
            "plain_s": round(best["plain"], 3),
            "ours_mib_s": round(size / MiB / best["ours"], 1),
            "plain_mib_s": round(size / MiB / best["plain"], 1),
            "ratio": round(best["plain"] / best["ours"], 3),
            "ours_cpu_s": round(cpu["ours"], 3),
            "plain_cpu_s": round(cpu["plain"], 3),
        }
        print(
            f"{size / MiB:.0f} MiB in {len(files)} files, best of {args.repeat}: ours {result['ours_mib_s']} MiB/s, "
            f"plain TransferManager {result['plain_mib_s']} MiB/s, ratio {result['ratio']:.2f}x; client CPU "
            f"{result['ours_cpu_s']} s vs {result['plain_cpu_s']} s (ours also hashes every byte)"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
