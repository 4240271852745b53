"""read -> check -> format -> mix -> template -> tokenize -> mask -> truncate -> split -> pack.

`prepare_data` is what the trainer calls; `check_file` is what `kubetune data check` calls. Both use
the same reading, validation and tokenization, so a file that passes the check trains the same way.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubetune import storage as st
from kubetune.api.locations import location_kind
from kubetune.api.v1alpha1 import ColumnMapping, TagMapping
from kubetune.trainer.data import encode as enc
from kubetune.trainer.data import packing as pk
from kubetune.trainer.data.cache import CacheEntry, cache_key, tokenizer_fingerprint
from kubetune.trainer.data.errors import DataValidationError
from kubetune.trainer.data.formats import Mapping, RowError
from kubetune.trainer.data.kinds import SFT, Kind, kind_of, template_name
from kubetune.trainer.data.report import MAX_LISTED, DataReport, DatasetReport, RowProblem
from kubetune.trainer.data.sources import (
    Row,
    SourceError,
    SourceFile,
    fetch,
    hub_rows,
    read_rows,
)
from kubetune.trainer.data.tokenize import DROPPED, FAILED, TRUNCATED, assistant_spans
from kubetune.trainer.templates import ChatTemplate, resolve_template

log = logging.getLogger("kubetune.data")

# Rows sampled to detect a dataset's format.
_DETECT_ROWS = 200
# Default data.maxRowCharacters: 64 per token of cutoffLen, and at least 256 Ki. A token rarely spans more
# than a few characters, so a longer row would mostly be cut away, while tokenizing a row whole takes about
# 200 bytes per character (an 8 MB row took 2.1 GB in `data check`; 256 Ki characters take about 50 MB).
CHARS_PER_TOKEN_LIMIT = 64
MIN_ROW_CHARACTERS = 256 * 1024


def max_row_characters(limit: int | None, cutoff_len: int) -> int:
    """The spec's data.maxRowCharacters, or its default for this cutoffLen."""
    return limit or max(CHARS_PER_TOKEN_LIMIT * cutoff_len, MIN_ROW_CHARACTERS)


@dataclass
class PreparedData:
    # datasets.Dataset: sft input_ids, labels (-100 = no loss), position_ids; dpo prompt/chosen/rejected_ids
    train: Any
    eval: Any | None
    report: DataReport
    template: ChatTemplate


@dataclass
class _Source:
    """One dataset of the spec, fetched: its files (or a hub id) and its options."""

    source: str
    split: str
    format: str
    mapping: Mapping
    max_samples: int | None
    files: list[SourceFile] = field(default_factory=list)
    hub: bool = False

    def identity(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "format": self.format,
            "mapping": self.mapping.__dict__,
            "maxSamples": self.max_samples,
            "files": [[f.uri, f.sha256] for f in self.files] if not self.hub else "hub",
        }

    def rows(self) -> Iterator[Row]:
        if self.hub:
            yield from hub_rows(self.source, self.split, self.max_samples)
            return
        left = self.max_samples
        for f in self.files:
            for row in read_rows(f, left):
                yield row
                if left is not None:
                    left -= 1
            if left is not None and left <= 0:
                return


def _fetch_source(
    source: str,
    split: str,
    fmt: str,
    mapping: Mapping,
    max_samples: int | None,
    opts: st.StorageOptions | None,
    kind: Kind,
) -> _Source:
    src = _Source(source, split, fmt, mapping, max_samples)
    try:
        if location_kind(source) == "hub":
            src.hub = True
        else:
            src.files = fetch(source, opts, kind.suffixes)
    except SourceError as exc:
        raise DataValidationError(str(exc)) from None
    return src


# --------------------------------------------------------------------------------------------
# Reading and checking rows
# --------------------------------------------------------------------------------------------


@dataclass
class _Checked:
    """Valid examples (conversations, or pairs for dpo) of one dataset, with their origins (file, row)."""

    split: str
    convs: list[Any]
    origins: list[tuple[str, int]]


def _check_source(src: _Source, report: DataReport, max_chars: int, kind: Kind) -> _Checked:
    dsr = DatasetReport(source=src.source, split=src.split, format=src.format)
    dsr.files = [{"uri": f.uri, "sha256": f.sha256, "bytes": len(f.data)} for f in src.files]
    report.datasets.append(dsr)
    if src.format != "auto":
        dsr.detected, dsr.formats = src.format, [src.format]
    out = _Checked(src.split, [], [])
    for file, rows in _by_file(src.rows()):
        fmt, mapping = _file_format(src, file, rows, dsr, kind)
        for row in rows:
            dsr.rows_read += 1
            value = row.value
            try:
                if isinstance(value, RowError):
                    raise value
                conv = kind.convert(value, fmt, mapping)
                _check_length(kind.chars(conv), max_chars)
            except RowError as exc:
                dsr.invalid += 1
                report.add_invalid(row.file, row.row, str(exc))
                continue
            out.convs.append(conv)
            out.origins.append((row.file, row.row))
    if not dsr.rows_read and src.format == "auto":
        raise DataValidationError(f"{src.source}: no rows to detect the format from (empty files?)")
    return out


def _check_length(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise RowError(
            f"{chars:,} characters of turns and tools, more than data.maxRowCharacters ({max_chars:,}; by default "
            f"{CHARS_PER_TOKEN_LIMIT} per token of cutoffLen, at least {MIN_ROW_CHARACTERS:,}): refused before "
            "tokenizing, which takes memory in proportion to the row. Shorten or split it, or raise the limit."
        )


def _by_file(rows: Iterable[Row]) -> Iterator[tuple[str, list[Row]]]:
    """Consecutive rows of the same file (a source yields its files one after the other)."""
    for file, group in itertools.groupby(rows, key=lambda r: r.file):
        yield file, list(group)


def _file_format(src: _Source, file: str, rows: list[Row], dsr: DatasetReport, kind: Kind) -> tuple[str, Mapping]:
    """The format of one file: the spec's, or detected from this file's own rows (`auto`).

    Detection is per file because one prefix may hold files of different layouts (an alpaca file beside
    a sharegpt one); the format found for each file is recorded in the report and logged.
    """
    sample = list(itertools.islice((r.value for r in rows if isinstance(r.value, dict)), _DETECT_ROWS))
    kinds = Counter(other for other in map(kind.refuse, sample) if other)
    if kinds and kinds.most_common(1)[0][1] * 2 > len(sample):  # one message for the file, not one per row
        raise DataValidationError(f"{file}: {kinds.most_common(1)[0][0]}")
    if src.format != "auto":
        dsr.add_detected(file, src.format, src.format)
        return src.format, src.mapping
    if not sample:  # no row of the file is an object: each is reported as invalid, whatever the format
        return "alpaca", src.mapping
    try:
        fmt, mapping, description = kind.detect(sample, src.mapping)
    except RowError as exc:
        raise DataValidationError(f"{file}: {exc}") from None
    log.info("%s: detected format %s", file, description)
    dsr.add_detected(file, fmt, description)
    return fmt, mapping


def _mix(parts: list[_Checked], strategy: str) -> tuple[list[Any], list[tuple[str, int]]]:
    if strategy == "interleave":
        order = [
            (p, i) for i in range(max((len(p.convs) for p in parts), default=0)) for p in parts if i < len(p.convs)
        ]
    else:
        order = [(p, i) for p in parts for i in range(len(p.convs))]
    return [p.convs[i] for p, i in order], [p.origins[i] for p, i in order]


# --------------------------------------------------------------------------------------------
# Tokenizing
# --------------------------------------------------------------------------------------------


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataValidationError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; label masking needs character offsets "
            "(load the tokenizer with use_fast=True)"
        )


def _tokenize(
    convs: list[Any],
    tokenizer: Any,
    template: ChatTemplate,
    cutoff_len: int,
    train_on: str,
    num_proc: int | None,
    kind: Kind = SFT,
) -> Any:
    workers = num_proc if num_proc is not None else enc.default_workers(len(convs))
    log.info("tokenizing %d %s (%d processes)", len(convs), kind.noun, max(workers, 1))
    return enc.encode(
        convs, kind, workers, tokenizer=tokenizer, template=template, cutoff_len=cutoff_len, train_on=train_on
    )


def _account(encoded: Any, origins: list[tuple[str, int]], report: DataReport) -> np.ndarray:
    """Record truncated/dropped/failed examples; return the indices of the examples that train."""
    status = np.asarray(encoded.column("status").to_numpy(), dtype=np.int8)
    errors = encoded.column("error").to_pylist() if np.any(status >= DROPPED) else []
    for idx in np.nonzero(status == TRUNCATED)[0].tolist():
        report.truncated += 1
        if len(report.truncated_rows) < MAX_LISTED:
            n_full = int(encoded.column("n_full")[idx].as_py())
            file, row = origins[idx]
            report.truncated_rows.append(RowProblem(file, row, f"{n_full} tokens, cut to cutoffLen"))
    for idx in np.nonzero(status == DROPPED)[0].tolist():
        report.dropped_too_long += 1
        if len(report.dropped_rows) < MAX_LISTED:
            report.dropped_rows.append(RowProblem(*origins[idx], errors[idx]))
    for idx in np.nonzero(status == FAILED)[0].tolist():
        file, row = origins[idx]
        for dsr in report.datasets:
            if any(f["uri"] == file for f in dsr.files) or file == f"hub:{dsr.source}":
                dsr.invalid += 1
                break
        report.add_invalid(file, row, errors[idx])
    keep: np.ndarray = np.nonzero(status <= TRUNCATED)[0]
    return keep


# --------------------------------------------------------------------------------------------
# prepare_data
# --------------------------------------------------------------------------------------------


def prepare_data(
    spec: Any,
    tokenizer: Any,
    *,
    cache_dir: Path,
    cache_uri: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    storage: st.StorageOptions | None = None,
    num_proc: int | None = None,
) -> PreparedData:
    """Tokenized train/eval datasets for a FineTuneJob spec, built once by rank 0 and loaded by everyone."""
    opts = storage if storage is not None else st.StorageOptions.from_spec(spec.storage)
    _require_fast(tokenizer)
    kind = kind_of(spec)
    template = resolve_template(template_name(spec.template, kind, tokenizer), tokenizer)
    sources = [
        _fetch_source(d.source, d.split, d.format, Mapping.of(d), d.max_samples, opts, kind) for d in spec.datasets
    ]
    training = spec.training
    key = cache_key(
        {
            "datasets": [s.identity() for s in sources],
            # How many processes tokenize does not change the result.
            "data": spec.data.model_dump(mode="json", exclude={"preprocessing_workers"}),
            "template": [template.name, template.jinja, template.stop_tokens],
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "stage": kind.stage,
            "cutoffLen": training.cutoff_len,
            "packing": training.packing,
            "seed": training.seed,
            "batch": training.per_device_batch_size,
        }
    )
    entry = CacheEntry(key, Path(cache_dir), cache_uri, opts)
    if rank != 0:
        log.info("rank %d/%d: waiting for rank 0 to publish tokenized data %s", rank, world_size, key)
        entry.wait(rank)
        return _load(entry.local, template)
    if entry.find():
        log.info("reusing tokenized data %s", entry.local)
        return _load(entry.local, template)
    entry.clear_failed()
    try:
        workers = num_proc if num_proc is not None else spec.data.preprocessing_workers
        report, train, eval_ = _build(spec, tokenizer, template, sources, workers, kind)
    except DataValidationError as exc:
        entry.mark_failed(str(exc))
        raise
    report.cache_key = key
    staged = entry.staging()
    train.save_to_disk(str(staged / "train"))
    if eval_ is not None:
        eval_.save_to_disk(str(staged / "eval"))
    report.write(staged / "report.json")
    entry.commit(staged)
    log.info("tokenized data published at %s%s", entry.local, f" and {entry.remote}" if entry.remote else "")
    return _load(entry.local, template)


def _load(path: Path, template: ChatTemplate) -> PreparedData:
    import datasets

    report = DataReport.from_dict(json.loads((path / "report.json").read_text(encoding="utf-8")))
    eval_ = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return PreparedData(datasets.load_from_disk(str(path / "train")), eval_, report, template)


def _options(spec: Any) -> dict[str, Any]:
    t = spec.training
    return {
        "mix": spec.data.mix,
        "validationSplit": spec.data.validation_split,
        "trainOn": spec.data.train_on,
        "maxRowCharacters": max_row_characters(spec.data.max_row_characters, t.cutoff_len),
        "cutoffLen": t.cutoff_len,
        "packing": t.packing,
        "seed": t.seed,
        "perDeviceBatchSize": t.per_device_batch_size,
    }


def _build(
    spec: Any,
    tokenizer: Any,
    template: ChatTemplate,
    sources: list[_Source],
    num_proc: int | None,
    kind: Kind,
) -> tuple[DataReport, Any, Any | None]:
    data, training = spec.data, spec.training
    report = DataReport(invalid_policy=data.invalid_rows, options=_options(spec))
    report.template = _template_info(template, tokenizer, report)
    max_chars = max_row_characters(data.max_row_characters, training.cutoff_len)
    checked = [_check_source(s, report, max_chars, kind) for s in sources]
    _fail_if_invalid(report, data.invalid_rows)

    train_convs, train_origins = _mix([c for c in checked if c.split == "train"], data.mix)
    eval_convs, eval_origins = _mix([c for c in checked if c.split == "validation"], data.mix)
    cutoff, train_on = training.cutoff_len, data.train_on
    train = _tokenize(train_convs, tokenizer, template, cutoff, train_on, num_proc, kind)
    keep_train = _account(train, train_origins, report)
    eval_ = None
    keep_eval = np.zeros(0, dtype=np.int64)
    if eval_convs:
        eval_ = _tokenize(eval_convs, tokenizer, template, cutoff, train_on, num_proc, kind)
        keep_eval = _account(eval_, eval_origins, report)
    _fail_if_invalid(report, data.invalid_rows)  # template failures found while tokenizing

    train_table = _kept_table(train, keep_train, kind)
    eval_table = _kept_table(eval_, keep_eval, kind) if eval_ is not None else None
    if data.validation_split > 0 and train_table.num_rows > 1:
        train_table, held_out = _hold_out(train_table, data.validation_split, training.seed)
        eval_table = held_out if eval_table is None else _concat(eval_table, held_out)
    if train_table.num_rows == 0:
        raise DataValidationError(
            f"no training example left: {report.rows_read} rows read, {report.invalid} invalid, "
            f"{report.dropped_too_long} without a trainable token within cutoffLen {cutoff}"
        )
    _count_tokens(report, [t for t in (train_table, eval_table) if t is not None], kind)
    report.train_examples = train_table.num_rows
    report.eval_examples = eval_table.num_rows if eval_table is not None else 0
    if not kind.packs:
        if kind.finish is not None:
            train_table = kind.finish(train_table, cutoff)
            eval_table = kind.finish(eval_table, cutoff) if eval_table is not None else None
        return report, _dataset(train_table, kind), _dataset(eval_table, kind) if eval_table is not None else None
    lengths = np.diff(pk.list_array(train_table.column("input_ids")).offsets.to_numpy())
    if training.packing:
        train_table = pk.pack(train_table, cutoff)
        eval_table = pk.pack(eval_table, cutoff) if eval_table is not None else None
    else:
        train_table = pk.with_position_ids(train_table)
        eval_table = pk.with_position_ids(eval_table) if eval_table is not None else None
    report.packing = _packing_stats(lengths, training)
    return report, _dataset(train_table, kind), _dataset(eval_table, kind) if eval_table is not None else None


def _fail_if_invalid(report: DataReport, policy: str) -> None:
    if report.invalid and policy == "fail":
        raise DataValidationError(report.invalid_message())
    if report.invalid:
        log.warning("skipping %d invalid rows (invalidRows: skip); they are listed in the data report", report.invalid)


def _kept_table(encoded: Any, keep: np.ndarray, kind: Kind) -> Any:
    import pyarrow as pa

    table = encoded.select([*kind.token_columns, "trainable"])
    if len(keep) == table.num_rows:  # the usual case: every example trains, and take() would copy them all
        return table
    return table.take(pa.array(keep, type=pa.int64()))


def _hold_out(table: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    import pyarrow as pa

    n = table.num_rows
    n_eval = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    held, kept = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    return table.take(pa.array(kept)), table.take(pa.array(held))


def _concat(a: Any, b: Any) -> Any:
    import pyarrow as pa

    return pa.concat_tables([a, b])


def _count_tokens(report: DataReport, tables: Iterable[Any], kind: Kind) -> None:
    for table in tables:
        for name in kind.token_columns:
            if name.endswith("_ids"):
                report.total_tokens += len(pk.list_array(table.column(name)).flatten())
        report.trainable_tokens += int(np.asarray(table.column("trainable").to_numpy()).sum())


def _packing_stats(lengths: np.ndarray, training: Any) -> dict[str, Any]:
    bs, seed, cutoff = training.per_device_batch_size, training.seed, training.cutoff_len
    stats: dict[str, Any] = {
        "enabled": training.packing,
        "examples": len(lengths),
        "unpacked": {
            "rows": len(lengths),
            "padToLongest": round(pk.padding_fraction(lengths, bs, seed), 4),
            "padToCutoff": round(pk.padding_fraction(lengths, 1, seed, pad_to=cutoff), 4),
        },
    }
    if not training.packing:  # the bins are the costly part, and only packing needs them
        return stats
    bins = pk.best_fit_decreasing(lengths, cutoff)
    packed_lengths = np.array([int(lengths[b].sum()) for b in bins], dtype=np.int64)
    stats["packed"] = {
        "rows": len(packed_lengths),
        "padToLongest": round(pk.padding_fraction(packed_lengths, bs, seed), 4),
        "padToCutoff": round(pk.padding_fraction(packed_lengths, 1, seed, pad_to=cutoff), 4),
    }
    return stats


def _dataset(table: Any, kind: Kind) -> Any:
    import datasets

    columns = [*kind.token_columns, *(["position_ids"] if "position_ids" in table.column_names else [])]
    return datasets.Dataset(table.select(columns))


def _template_info(template: ChatTemplate, tokenizer: Any, report: DataReport) -> dict[str, Any]:
    unknown = template.unknown_stop_tokens(tokenizer)
    if unknown:
        report.warnings.append(
            f"template '{template.name}' ends turns with {', '.join(unknown)}, which is not one token of this "
            "tokenizer: generation cannot stop on it. Use the model's own template (auto) or its family's one."
        )
    sample = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    text, spans = assistant_spans(template, sample, None, dict(tokenizer.special_tokens_map), "assistant")
    answer = text[spans[0][0] : spans[0][1]].rstrip()
    # An efficient_eos template's stop is a label after the answer (tokenize), not text in it.
    stops = not template.efficient_eos and template.stop_tokens
    if stops and not any(answer.endswith(s) for s in template.stop_tokens):
        report.warnings.append(
            f"template '{template.name}' does not end an assistant turn with {template.stop_tokens[0]}: "
            "the model will not learn to stop"
        )
    return {"name": template.name, "stopTokens": template.stop_tokens}


def first_conversation(spec: Any, storage: st.StorageOptions | None = None) -> list[dict[str, str]] | None:
    """The first valid conversation of the first training dataset, as the trainer reads it (or None)."""
    opts = storage if storage is not None else st.StorageOptions.from_spec(spec.storage)
    kind = kind_of(spec)
    for d in spec.datasets:
        if d.split != "train":
            continue
        src = _fetch_source(d.source, d.split, d.format, Mapping.of(d), _DETECT_ROWS, opts, kind)
        max_chars = max_row_characters(spec.data.max_row_characters, spec.training.cutoff_len)
        checked = _check_source(src, DataReport(), max_chars, kind)
        return kind.messages(checked.convs[0]) if checked.convs else None
    return None


# --------------------------------------------------------------------------------------------
# check_file (kubetune data check)
# --------------------------------------------------------------------------------------------


def check_file(
    uri: str,
    tokenizer: Any,
    template: ChatTemplate,
    *,
    format: str = "auto",
    columns: ColumnMapping | None = None,
    tags: TagMapping | None = None,
    cutoff_len: int = 2048,
    train_on: str = "assistant",
    max_row_chars: int | None = None,
    storage: st.StorageOptions | None = None,
    num_proc: int | None = None,
    kind: Kind = SFT,
    only_mapped_columns: bool = False,
) -> tuple[DataReport, str]:
    """Every check `prepare_data` makes, on one file or prefix, without failing on invalid rows.

    Returns the report and a preview: the first valid example rendered, tokenized, with its label mask.
    """
    _require_fast(tokenizer)
    mapping = Mapping.from_spec(columns, tags, only_mapped_columns)
    src = _fetch_source(uri, "train", format, mapping, None, storage, kind)
    max_chars = max_row_characters(max_row_chars, cutoff_len)
    options = {"cutoffLen": cutoff_len, "trainOn": train_on, "maxRowCharacters": max_chars}
    report = DataReport(invalid_policy="check", options=options)
    report.template = _template_info(template, tokenizer, report)
    checked = _check_source(src, report, max_chars, kind)
    preview = "no valid row to preview"
    if checked.convs:
        encoded = _tokenize(checked.convs, tokenizer, template, cutoff_len, train_on, num_proc, kind)
        keep = _account(encoded, checked.origins, report)
        table = _kept_table(encoded, keep, kind)
        _count_tokens(report, [table], kind)
        report.train_examples = table.num_rows
        if len(keep):
            first = int(keep[0])
            encoded_row = {name: table.column(name)[0].as_py() for name in kind.token_columns}
            preview = kind.preview(
                tokenizer, template, checked.convs[first], encoded_row, checked.origins[first], train_on
            )
    return report, preview
