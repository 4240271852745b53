"""Start-up time of `kubetune --help` and `kubetune validate FILE` (issue 14: < 0.5 s each).

    python bench/bench_startup.py                 # best of 7 subprocess runs each
    python bench/bench_startup.py --against HEAD~5  # also time the same commands at an older commit

Each command runs in a fresh interpreter, as a user's shell starts it. The floor is `python -c pass`
(the interpreter and site alone); the ratio printed is against the eager baseline measured in the
same run: the same command after importing the training stack (torch, transformers), which is what
start-up costs when a subcommand module imports it at the top. With `--against REF` the commands are
also timed in a `git worktree` of REF, so a change can be compared with the code before it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quickstart.yaml"
LIMIT_S = 0.5
CLI = "import sys; from kubetune.cli import main; sys.exit(main(sys.argv[1:]))"
EAGER = "import torch, transformers; " + CLI


def best_of(argv: list[str], repeat: int, pythonpath: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        best = min(best, time.perf_counter() - start)
    return best


def commands(code: str) -> dict[str, list[str]]:
    return {
        "kubetune --help": [sys.executable, "-c", code, "--help"],
        "kubetune validate": [sys.executable, "-c", code, "validate", "-q", str(EXAMPLE)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--against", metavar="REF", help="also time the commands at this git commit")
    args = parser.parse_args()

    floor = best_of([sys.executable, "-c", "pass"], args.repeat, ROOT)
    print(f"floor (python -c pass): {floor:.3f} s")
    old_root: Path | None = None
    tmp = tempfile.TemporaryDirectory()
    if args.against:
        old_root = Path(tmp.name) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_root), args.against], check=True)
    failed = False
    try:
        eager = commands(EAGER)
        for name, argv in commands(CLI).items():
            now = best_of(argv, args.repeat, ROOT)
            base = best_of(eager[name], max(2, args.repeat // 3), ROOT)
            line = f"{name:20s} {now:.3f} s  (floor +{now - floor:.3f} s; "
            line += f"eager stack {base:.3f} s: {base / now:.1f}x faster)"
            if old_root is not None:
                old = best_of(argv, args.repeat, old_root)
                line += f"; at {args.against}: {old:.3f} s ({old / now:.2f}x)"
            ok = now < LIMIT_S
            failed |= not ok
            print(line + ("" if ok else f"  OVER the {LIMIT_S} s goal"))
    finally:
        if old_root is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_root)], check=False)
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
