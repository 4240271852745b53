"""Examples -> token columns (one Arrow table), in forked worker processes where it pays.

Each worker encodes whole batches of examples with the stage's `Kind.encode` (the fast tokenizer's
batch encode) and sends back one Arrow table per batch; nothing else crosses a process boundary.
The examples reach the workers by `fork`, not by pickling, and no `datasets.map` runs: its writer
(Python lists -> Arrow, re-inferring every type) and its IPC between workers took a quarter of the
preparation (see docs/data.md, "Performance").

How many workers: `workers` when given (data.preprocessingWorkers, `kubetune data check -j`), else one
per `ROWS_PER_WORKER` rows, at most 8 and the CPUs this container may use (`cpu_limit`), not the machine's.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Below this many rows per worker, starting one costs more than it saves.
ROWS_PER_WORKER = 4000
# Past this many, workers mostly add memory (each holds a tokenizer and its batches).
MAX_DEFAULT_WORKERS = 8
# Examples per `Kind.encode` call (one batch encode of the tokenizer).
BATCH_ROWS = 1000
CGROUP_ROOT = Path("/sys/fs/cgroup")

# What the forked workers encode; set by `encode` just before forking (lambdas in Kind do not pickle).
_JOB: tuple[list[Any], Any, dict[str, Any]] | None = None


def cpu_limit(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its CPU affinity, capped by the container's CPU quota (a pod's CPU limit).

    The quota is cgroup v2's `cpu.max` or cgroup v1's `cpu.cfs_quota_us`/`cpu.cfs_period_us`, rounded up
    (a 1.5-CPU limit gives 2: the two processes share the quota). `os.cpu_count()` counts the node's CPUs.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    """The CPU quota in CPUs, or None when there is none (or no cgroup file to read)."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def default_workers(rows: int, cgroup_root: Path = CGROUP_ROOT) -> int:
    return max(1, min(cpu_limit(cgroup_root), MAX_DEFAULT_WORKERS, rows // ROWS_PER_WORKER))


def encode(examples: list[Any], kind: Any, workers: int, **options: Any) -> Any:
    """The examples' token columns plus n_full, trainable, status and error, in order, as one pyarrow Table.

    `options` are `Kind.encode`'s keywords (tokenizer, template, cutoff_len, train_on).
    """
    import pyarrow as pa

    global _JOB
    # At most BATCH_ROWS per batch, and at least one batch per worker.
    size = max(1, min(BATCH_ROWS, math.ceil(len(examples) / max(workers, 1))))
    ranges = [(a, min(a + size, len(examples))) for a in range(0, len(examples), size)]
    _JOB = (examples, kind, options)
    try:
        if workers > 1 and len(ranges) > 1:
            with _no_tokenizer_threads_after_fork():
                ctx = multiprocessing.get_context("fork")
                with ctx.Pool(min(workers, len(ranges))) as pool:
                    parts = pool.map(_encode_range, ranges, chunksize=1)
        else:
            parts = [_encode_range(r) for r in ranges]
    finally:
        _JOB = None
    if not parts:
        return _table(kind, {name: [] for name in _columns(kind)})
    return pa.concat_tables(parts)


@contextlib.contextmanager
def _no_tokenizer_threads_after_fork() -> Iterator[None]:
    """Workers tokenize one batch each, single-threaded (the Rust tokenizer would warn and turn its threads
    off in a forked child anyway, on stderr, in the middle of `data check`'s output)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _encode_range(bounds: tuple[int, int]) -> Any:
    assert _JOB is not None
    examples, kind, options = _JOB
    # The examples as the stage's Arrow columns and back: the same normalized rows `Kind.encode` always read.
    batch = kind.columns(examples[bounds[0] : bounds[1]]).to_pydict()
    return _table(kind, kind.encode(batch, **options))


def _columns(kind: Any) -> list[str]:
    return [*kind.token_columns, "n_full", "trainable", "status", "error"]


def _table(kind: Any, out: dict[str, list[Any]]) -> Any:
    import pyarrow as pa

    types = {"n_full": pa.int32(), "trainable": pa.int32(), "status": pa.int8(), "error": pa.string()}
    columns = [pa.array(out[n], type=types[n]) if n in types else _ids(out[n]) for n in _columns(kind)]
    return pa.table(dict(zip(_columns(kind), columns, strict=True)))


def _ids(lists: list[list[int]]) -> Any:
    """A list<int32> Arrow column through numpy: 40% faster than pa.array on the nested Python lists."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int32, count=len(lists)), out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
