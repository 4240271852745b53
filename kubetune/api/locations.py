"""Where a model, dataset or output lives: an s3:// URI, a path, or a hub id. One rule, used everywhere.

The API validator, the renderer's "is this path mounted?" check, `kubetune run --local`, the data
reader and the model loader all ask `location_kind`; none of them looks at the string on its own.
The rule is purely syntactic (it never looks at the filesystem), so the operator, a laptop and a
pod always agree on what a spec means:

- `s3://bucket[/key]`                         -> s3
- `file://...`, `/...`, `./...`, `../...`, `~...`, `.`, `..` -> path
- where hub ids are allowed: a bare name with a data-file suffix (`train.jsonl`, `data/wiki.txt`)
  -> path (no hub id ends so); any other `org/name` or `name` -> hub
- where they are not (an output), a relative path must start with `./`
- anything else (another scheme, a Windows path, spaces) is refused with a message saying why.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

LocationKind = Literal["s3", "path", "hub"]

# Files the data reader understands (plain text only for stage pt); a hub-id-shaped name ending in
# any of them is a relative path.
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
TEXT_SUFFIX = ".txt"

# The admission patterns (the CRD's `pattern`) say the same as `location_kind`, in regex form.
BUCKET_RE = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_URI_RE = rf"s3://{BUCKET_RE}(/.*)?"
PATH_RE = r"file://.+|[/.~].*"
HUB_ID_RE = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
SOURCE_PATTERN = f"^({S3_URI_RE}|{PATH_RE}|{HUB_ID_RE})$"
OUTPUT_PATTERN = f"^({S3_URI_RE}|{PATH_RE})$"

_BUCKET = re.compile(f"^{BUCKET_RE}$")
_HUB_ID = re.compile(f"^{HUB_ID_RE}$")
_PATH_PREFIXES = ("/", "./", "../", "~")


def location_kind(value: str, *, allow_hub: bool = True, what: str = "location") -> LocationKind:
    """'s3', 'path' or 'hub' for `value`; ValueError (naming `what`) when it is none of them."""
    v = value.strip()
    if not v:
        raise ValueError(f"{what} must not be empty")
    if "://" in v:
        scheme = v.split("://", 1)[0].lower()
        if scheme == "s3":
            if not _BUCKET.match(v[5:].split("/", 1)[0]):
                raise ValueError(f"'{v}' has no valid bucket name after s3://")
            return "s3"
        if scheme == "file":
            if not v[7:]:
                raise ValueError(f"'{v}' has no path after file://")
            return "path"
        hint = " (use s3:// for MinIO/Ceph/GCS-interop/SeaweedFS too)" if scheme in {"s3a", "gs", "minio"} else ""
        raise ValueError(f"unsupported URI scheme '{scheme}://' in '{v}': use s3://, file:// or a path{hint}")
    if v.startswith(_PATH_PREFIXES) or v in {".", ".."}:
        return "path"
    if allow_hub and _HUB_ID.match(v):
        return "path" if v.lower().endswith((*DATA_SUFFIXES, TEXT_SUFFIX)) else "hub"
    if allow_hub:
        raise ValueError(f"'{v}' is neither a hub id (org/name), an s3:// URI, nor a path")
    raise ValueError(f"'{v}' is neither an s3:// URI nor a path (start local paths with / or ./)")


def local_path(value: str) -> Path:
    """The filesystem path of a 'path' location (`file://` stripped and unquoted, `~` expanded)."""
    if value.startswith("file://"):
        return Path(unquote(value[7:]))
    return Path(value).expanduser()
