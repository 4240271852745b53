"""Read dataset rows from a path, file:// or s3:// URI (a file or every data file under a prefix) or a hub id.

Rows keep where they came from (file and 1-based row number: the line number for JSONL, the record
number otherwise) so every problem can be reported where the user can find it. Rows that cannot be
decoded are yielded as `RowError`s rather than failing the file, so one bad line costs one row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubetune import storage
from kubetune.api.locations import DATA_SUFFIXES, TEXT_SUFFIX  # .txt: data only for stage pt
from kubetune.trainer.data.formats import RowError, loads, loads_at, too_deep

log = logging.getLogger("kubetune.data")

# Windows tools (Notepad, Excel's "CSV UTF-8") start files with a byte order mark; it is not part of row 1.
_ENCODING = "utf-8-sig"
# LLaMA-Factory keeps its dataset registry beside the data; it is not data.
_NOT_DATA = {"dataset_info.json"}


class SourceError(ValueError):
    """A dataset source cannot be read at all (not a row problem)."""


@dataclass
class SourceFile:
    uri: str
    data: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


@dataclass
class Row:
    file: str
    row: int
    value: dict[str, Any] | RowError


def list_data_files(
    source: str, opts: storage.StorageOptions | None, suffixes: tuple[str, ...] = DATA_SUFFIXES
) -> list[str]:
    """The data files of a source, in a stable (sorted) order; other files under a prefix are skipped."""
    try:
        found = storage.list_files(source, opts)
    except storage.StorageError as exc:
        raise SourceError(str(exc)) from None
    files = [f for f in found if _is_data_file(f, suffixes)]
    if not files:
        expected = f"expected {', '.join(suffixes)}"
        if found:
            raise SourceError(f"no data files under {source} ({len(found)} other files); {expected}")
        # S3 has no empty directories: a prefix named with its trailing slash is taken as meant to be one.
        if source.endswith("/") or (not storage.is_remote(source) and storage.exists(source, opts)):
            raise SourceError(f"no data files under {source} (it is empty); {expected}")
        raise SourceError(f"dataset source {source} not found (no such file or prefix)")
    skipped = len(found) - len(files)
    if skipped:
        log.info("%s: reading %d data files, skipping %d other files", source, len(files), skipped)
    return files


def _is_data_file(uri: str, suffixes: tuple[str, ...]) -> bool:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name.lower().endswith(suffixes) and not name.startswith((".", "_")) and name not in _NOT_DATA


def fetch(
    source: str, opts: storage.StorageOptions | None, suffixes: tuple[str, ...] = DATA_SUFFIXES
) -> list[SourceFile]:
    """Every data file of a local/S3 source, read into memory (hashed for the cache key)."""
    out = []
    for uri in list_data_files(source, opts, suffixes):
        try:
            out.append(SourceFile(uri, storage.read_bytes(uri, opts)))
        except storage.StorageError as exc:
            raise SourceError(str(exc)) from None
    return out


def read_rows(src: SourceFile, limit: int | None = None) -> Iterator[Row]:
    name = src.uri.lower()
    if name.endswith(".jsonl"):
        rows = _jsonl(src)
    elif name.endswith(".json"):
        rows = _json(src)
    elif name.endswith(".csv"):
        rows = _csv(src)
    elif name.endswith(".parquet"):
        rows = _parquet(src)
    elif name.endswith(".txt"):
        rows = _txt(src)
    else:
        raise SourceError(f"{src.uri}: unsupported file type; use {', '.join((*DATA_SUFFIXES, TEXT_SUFFIX))}")
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row


def _utf8_problem(exc: UnicodeDecodeError) -> RowError:
    return RowError(f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")


def _jsonl(src: SourceFile) -> Iterator[Row]:
    for lineno, raw in enumerate(src.data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        yield Row(src.uri, lineno, _decode_json_line(raw, first=lineno == 1))


def _decode_json_line(raw: bytes, *, first: bool) -> dict[str, Any] | RowError:
    try:
        # Only the file's first line may carry the byte order mark; elsewhere it is a stray character.
        text = raw.decode(_ENCODING if first else "utf-8")
    except UnicodeDecodeError as exc:
        return _utf8_problem(exc)
    try:
        value = loads(text)
    except RowError as exc:
        return exc
    except ValueError as exc:
        return RowError(f"not valid JSON: {exc}")
    if not isinstance(value, dict):
        return RowError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _json(src: SourceFile) -> Iterator[Row]:
    # surrogateescape keeps the file parseable when a few bytes are not UTF-8; the rows holding them are
    # found afterwards and reported one by one.
    strict = True
    try:
        text = src.data.decode(_ENCODING)
    except UnicodeDecodeError:
        text, strict = src.data.decode(_ENCODING, errors="surrogateescape"), False
    items: Iterable[Any]
    try:
        items = loads(text)
    except (RowError, json.JSONDecodeError) as exc:
        if text.lstrip().startswith("{") and (isinstance(exc, RowError) or exc.msg == "Extra data"):
            log.warning("%s holds one JSON object per line; reading it as JSONL", src.uri)
            yield from _jsonl(src)
            return
        if isinstance(exc, json.JSONDecodeError):
            raise SourceError(
                f"{src.uri} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        items = _array_items(src.uri, text)  # a row with a key twice or nested too deeply: find it, read the rest
    if not isinstance(items, (list, Iterator)):
        raise SourceError(f"{src.uri}: a .json dataset must be an array of rows, got {type(items).__name__}")
    for n, item in enumerate(items, start=1):
        yield Row(src.uri, n, item if strict or isinstance(item, RowError) else _check_utf8(item))


# A JSON string, or one bracket: enough to find where a value ends without decoding it.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_BETWEEN_ITEMS = re.compile(r"\s*,?\s*")


def _array_items(uri: str, text: str) -> Iterator[Any]:
    """The items of a JSON array one by one, an item that `loads` refuses as a RowError in its place.

    Only used when reading the whole array at once failed for such an item, so its cost (a decode
    per item) is paid by broken files alone.
    """
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise SourceError(f"{uri}: a .json dataset must be an array of rows")
    pos += 1
    while True:
        pos = _BETWEEN_ITEMS.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return
        item: Any
        try:
            item, pos = loads_at(text, pos)
        except RowError as exc:
            item, pos = exc, _value_end(uri, text, pos)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{uri} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        yield item


def _value_end(uri: str, text: str, pos: int) -> int:
    """Where the object or array starting at `pos` ends, by counting brackets outside strings."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text, pos):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
        if depth == 0:
            return match.end()
    raise SourceError(f"{uri} is not valid JSON: an array or object opened at offset {pos} is never closed")


def _check_utf8(row: Any) -> Any:
    """The row itself, or RowError if any of its strings holds bytes that were not UTF-8."""
    try:
        bad = _first_bad_string(row)
    except RecursionError:
        return too_deep()
    if bad is not None:
        return RowError(f"not valid UTF-8 (in text starting {bad[:30]!r})")
    return row


def _first_bad_string(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", errors="replace").decode("utf-8")
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        bad = _first_bad_string(item)
        if bad is not None:
            return bad
    return None


def _txt(src: SourceFile) -> Iterator[Row]:
    """One document per non-empty line (LLaMA-Factory's text files), as a row with a `text` column."""
    for lineno, raw in enumerate(src.data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode(_ENCODING if lineno == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            yield Row(src.uri, lineno, _utf8_problem(exc))
            continue
        yield Row(src.uri, lineno, {"text": text})


def _csv(src: SourceFile) -> Iterator[Row]:
    text = src.data.decode(_ENCODING, errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for n, record in enumerate(reader, start=1):
        if None in record:
            yield Row(
                src.uri,
                n,
                RowError(
                    f"has {len(record[None]) + len(reader.fieldnames or [])} fields, the header "
                    f"has {len(reader.fieldnames or [])}"
                ),
            )
            continue
        yield Row(src.uri, n, _check_utf8(dict(record)))


def _parquet(src: SourceFile) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(src.data))
    except Exception as exc:
        raise SourceError(f"{src.uri} is not a readable parquet file: {exc}") from None
    for n, row in enumerate(table.to_pylist(), start=1):
        yield Row(src.uri, n, row)


def hub_rows(source: str, split: str, limit: int | None) -> Iterator[Row]:
    """Rows of a Hugging Face hub dataset (only where a hub is reachable)."""
    import datasets

    hub_split = "train" if split == "train" else "validation"
    try:
        ds = datasets.load_dataset(source, split=hub_split)
    except Exception as exc:
        raise SourceError(
            f"cannot load hub dataset '{source}' (split {hub_split}): {type(exc).__name__}: {exc}. "
            "Without a reachable hub, copy the data to s3:// or a path."
        ) from None
    for n, row in enumerate(ds, start=1):
        if limit is not None and n > limit:
            return
        yield Row(f"hub:{source}", n, dict(row))
