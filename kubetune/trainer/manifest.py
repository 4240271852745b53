"""manifest.json: what was produced, with sizes and sha256, written LAST.

Its presence is the completion marker: the operator and a vLLM deployment wait for it, and no
partial export ever gets one (it is only written after every upload was verified).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.conditions import now_rfc3339
from kubetune.api.v1alpha1 import API_VERSION

if TYPE_CHECKING:
    from kubetune.storage import StorageOptions, UploadedFile

MANIFEST_KIND = "FineTuneManifest"


def build_manifest(
    *,
    root: str,
    files: list[UploadedFile],
    job: dict[str, Any],
    base_model: dict[str, Any],
    method: str,
    template: str,
    outputs: dict[str, str],
    metrics: dict[str, Any],
    data_report: dict[str, Any] | None,
) -> dict[str, Any]:
    prefix = root.rstrip("/") + "/"
    return {
        "apiVersion": API_VERSION,
        "kind": MANIFEST_KIND,
        "createdAt": now_rfc3339(),
        "job": job,
        "baseModel": base_model,
        "method": method,
        "template": template,
        "outputs": outputs,
        "metrics": metrics,
        "dataReport": data_report,
        "files": [
            {"path": f.uri.removeprefix(prefix), "size": f.size, "sha256": f.sha256}
            for f in sorted(files, key=lambda f: f.uri)
        ],
    }


def write_manifest(uri: str, manifest: dict[str, Any], opts: StorageOptions) -> None:
    from kubetune.storage import write_bytes

    write_bytes(uri, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode(), opts)


def read_manifest(uri: str, opts: StorageOptions) -> dict[str, Any]:
    from kubetune.storage import read_bytes

    data: dict[str, Any] = json.loads(read_bytes(uri, opts))
    return data


def verify_local_copy(local_root: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems found comparing a downloaded output tree with its manifest (empty = it matches)."""
    from kubetune.storage import sha256_file

    problems = []
    for entry in manifest["files"]:
        path = local_root / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']}: size {path.stat().st_size} != {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 mismatch")
    return problems
