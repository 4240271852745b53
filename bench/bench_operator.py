"""Create -> PyTorchJob latency and memory of the operator under bursts of FineTuneJobs.

    python bench/bench_operator.py                      # N = 50, 200, 500
    python bench/bench_operator.py --sizes 50 --json out.json

Setup: the test suite's HTTP Kubernetes API (kmock + compat layer) in this process, the operator as
a real `kubetune operator --namespace default` subprocess talking to it over HTTP. For each N, the
bench creates N FineTuneJobs as fast as 8 client threads can, and timestamps (in the API server)
when each FineTuneJob was stored and when its PyTorchJob was stored. Latency = the difference;
reported as p50/p95/max, with the time until the last PyTorchJob and the operator's RSS after the
round (VmRSS) and its peak (VmHWM). Rounds are cleaned up (jobs deleted, children collected)
before the next one; the operator keeps running, so memory reflects its steady state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.operator.harness import Cluster, OperatorProcess, job_manifest, wait_for  # noqa: E402
from tests.integration.operator.k8s_emulator import RunningApiServer, rbac_attributes  # noqa: E402


class Stamps:
    """When each FineTuneJob, its PyTorchJob and its "Created" Event were first stored, by job name
    (API-server side). The Event is the operator's last write for a new job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, float] = {}
        self.pytorchjobs: dict[str, float] = {}
        self.created_events: dict[str, float] = {}

    def __call__(self, event: str, obj: dict[str, Any]) -> None:
        if event != "ADDED":
            return
        now = time.perf_counter()
        kind, name = obj.get("kind"), obj["metadata"]["name"]
        with self.lock:
            if kind == "FineTuneJob":
                self.jobs.setdefault(name, now)
            elif kind == "PyTorchJob":
                self.pytorchjobs.setdefault(name, now)
            elif "involvedObject" in obj and obj.get("reason") == "Created":  # Kopf posts Events without `kind`
                self.created_events.setdefault((obj.get("involvedObject") or {}).get("name", ""), now)


def operator_requests(server: RunningApiServer, since: int) -> Counter[str]:
    """The operator's API requests from index `since` on, as "verb resource" (discovery left out)."""
    counts: Counter[str] = Counter()
    for request in server.emulator._requests[since:]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("authorization") != f"Bearer {OperatorProcess.TOKEN}":
            continue
        call = rbac_attributes(request.method, request.url.path, dict(request.params))
        if call is not None and call[2] != "watch":
            counts[f"{call[2]} {call[1]}"] += 1
    return counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/<pid>/stat, in clock ticks)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_round(cluster: Cluster, op: OperatorProcess, stamps: Stamps, n: int, prefix: str) -> dict[str, Any]:
    names = [f"{prefix}-{i:04d}" for i in range(n)]
    assert op.proc is not None
    cpu_before, api_cpu_before = cpu_seconds(op.proc.pid), time.process_time()
    first_request = len(cluster.server.emulator._requests)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: cluster.create_job(job_manifest(name)), names))
    created = time.perf_counter()
    wait_for(f"{n} PyTorchJobs", lambda: all(name in stamps.pytorchjobs for name in names), timeout=600, interval=0.2)
    done = time.perf_counter()
    latencies = [stamps.pytorchjobs[name] - stamps.jobs[name] for name in names]
    wait_for(f"{n} Created Events", lambda: all(name in stamps.created_events for name in names), timeout=120)
    requests = operator_requests(cluster.server, first_request)
    memory = rss_kib(op.proc.pid)
    result = {
        "n": n,
        "create_seconds": round(created - started, 2),
        "all_pytorchjobs_seconds": round(done - started, 2),
        "jobs_per_s": round(n / (done - started), 1),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "latency_max_s": round(max(latencies), 3),
        "operator_rss_mib": round(memory["VmRSS"] / 1024, 1),
        "operator_peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "operator_cpu_s": round(cpu_seconds(op.proc.pid) - cpu_before, 2),
        "api_server_and_client_cpu_s": round(time.process_time() - api_cpu_before, 2),
        # Until each job's Created Event: what a new job costs the API server (watch events not counted).
        "operator_requests_per_job": round(sum(requests.values()) / n, 1),
        "operator_requests": dict(sorted(requests.items())),
    }
    return result


def clean_up(cluster: Cluster, n: int, prefix: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(cluster.delete_job, [f"{prefix}-{i:04d}" for i in range(n)]))
    try:
        wait_for("the round's PyTorchJobs to go", lambda: not cluster.pytorchjobs(), timeout=120, interval=0.2)
    except AssertionError:
        left = [pj["metadata"]["name"] for pj in cluster.pytorchjobs()]
        raise AssertionError(f"{len(left)} PyTorchJobs outlived their FineTuneJobs: {left[:10]}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = RunningApiServer(Path(tmp)).start()
        stamps = Stamps()
        server.emulator.observers.append(stamps)
        cluster = Cluster(server)
        cluster.install_crds()
        op = OperatorProcess(server, Path(tmp), extra_env={"KUBETUNE_LOG_LEVEL": "WARNING"}).start()
        assert op.proc is not None
        idle = rss_kib(op.proc.pid)
        print(f"operator idle RSS: {idle['VmRSS'] / 1024:.1f} MiB")
        results = []
        try:
            for i, n in enumerate(args.sizes):
                result = run_round(cluster, op, stamps, n, f"b{i}")
                results.append(result)
                print(json.dumps(result), flush=True)
                clean_up(cluster, n, f"b{i}")
        finally:
            op.stop()
            server.stop()
    header = (
        f"{'N':>5} {'create s':>9} {'all PJ s':>9} {'jobs/s':>7} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
        f"{'RSS MiB':>8} {'peak':>7} {'req/job':>8}"
    )
    print(header)
    for r in results:
        print(
            f"{r['n']:>5} {r['create_seconds']:>9} {r['all_pytorchjobs_seconds']:>9} {r['jobs_per_s']:>7} "
            f"{r['latency_p50_s']:>7} {r['latency_p95_s']:>7} {r['latency_max_s']:>7} {r['operator_rss_mib']:>8} "
            f"{r['operator_peak_rss_mib']:>7} {r['operator_requests_per_job']:>8}"
        )
    if args.json:
        args.json.write_text(json.dumps({"idle_rss_mib": round(idle["VmRSS"] / 1024, 1), "rounds": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
