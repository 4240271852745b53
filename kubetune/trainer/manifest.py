"""manifest.json: what was produced, with sizes and sha256, written LAST.

Its presence is the completion marker: the operator and a vLLM deployment wait for it, and no
partial export ever gets one (it is only written after every upload was verified). It records the
result identity (`result_identity`): a manifest of the same identity means the job already
finished, so a rerun (or a pod restarted after the manifest was written) only reports it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.conditions import now_rfc3339
from kubetune.api.v1alpha1 import API_VERSION

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.storage import StorageOptions, UploadedFile

MANIFEST_KIND = "FineTuneManifest"


def result_identity(spec: FineTuneJobSpec) -> str:
    """What decides the result: the run identity (everything that shapes training) and the export
    settings (merge, shard size). The output location is not part of it: the manifest lives there."""
    from kubetune.trainer.checkpoints import run_identity

    export = json.dumps(spec.output.model_dump(mode="json", exclude={"uri"}), sort_keys=True)
    return hashlib.sha256(f"{run_identity(spec)} {export}".encode()).hexdigest()[:16]


def build_manifest(
    *,
    root: str,
    files: list[UploadedFile],
    job: dict[str, Any],
    identity: str,
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
        "run": identity,
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
    """Write the manifest, but only if every file it names is still stored beside it.

    The files are the ones this run uploaded; one that is gone was deleted by another writer of the
    same output (a lease keeps `kubetune run` from that), and a manifest must never vouch for it."""
    from kubetune.storage import list_files, write_bytes
    from kubetune.trainer.failures import ExitCode, TrainerError

    root = uri.rstrip("/").rsplit("/", 1)[0]
    stored = {f.removeprefix(root + "/") for f in list_files(root + "/", opts)}
    missing = [f["path"] for f in manifest["files"] if f["path"] not in stored]
    if missing:
        raise TrainerError(
            ExitCode.STORAGE,
            f"{len(missing)} uploaded file(s) vanished from {root} before the manifest was written "
            f"(first: {missing[0]}); no manifest written",
            "another run is writing the same output.uri: run one job per output",
        )
    write_bytes(uri, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode(), opts)


def finished_manifest(uri: str, spec: FineTuneJobSpec, opts: StorageOptions) -> dict[str, Any] | None:
    """The manifest at `uri` if it records this spec's result (the job already finished), else None."""
    from kubetune.storage import exists

    if not exists(uri, opts):
        return None
    try:
        manifest = read_manifest(uri, opts)
    except ValueError:  # cut off or foreign: it vouches for nothing
        return None
    return manifest if manifest.get("run") == result_identity(spec) else None


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
