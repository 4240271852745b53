#!/usr/bin/env python3
"""Write docs/llamafactory.md's key table from kubetune/llamafactory/keys.py (the importer's table).

tests/unit/llamafactory/test_docs.py fails while the table is stale.

Usage: python scripts/sync-llamafactory-docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "docs" / "llamafactory.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale, write nothing")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from kubetune.llamafactory.keys import docs_with_table

    text = TARGET.read_text(encoding="utf-8")
    fresh = docs_with_table(text)
    if args.check:
        if fresh != text:
            print(f"{TARGET} is stale: run python scripts/sync-llamafactory-docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(fresh, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
