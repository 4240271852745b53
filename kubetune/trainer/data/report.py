"""The data report: what was read, what was wrong, what was cut, what trains. Written as JSON beside the outputs."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Rows listed by location in the report (counts always cover every row).
MAX_LISTED = 1000
# Rows named in an error message.
MAX_IN_MESSAGE = 10


@dataclass
class RowProblem:
    file: str
    row: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} row {self.row}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "reason": self.reason}


@dataclass
class DatasetReport:
    source: str
    split: str
    format: str  # as requested
    detected: str = ""  # the format(s) used, and how they were recognised
    files: list[dict[str, Any]] = field(default_factory=list)
    rows_read: int = 0
    invalid: int = 0
    formats: list[str] = field(default_factory=list)  # the formats used, each once, in file order

    def add_detected(self, file: str, fmt: str, description: str) -> None:
        """Record the format of one file (`auto` detects it per file, so one prefix may mix formats)."""
        for entry in self.files:
            if entry["uri"] == file:
                entry["format"], entry["detectedFormat"] = fmt, description
        if fmt not in self.formats:
            self.formats.append(fmt)
        if description not in self.detected.split("; "):
            self.detected = f"{self.detected}; {description}" if self.detected else description

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "format": self.format,
            "detectedFormat": self.detected,
            "formats": self.formats,
            "files": self.files,
            "rowsRead": self.rows_read,
            "invalid": self.invalid,
        }


@dataclass
class DataReport:
    datasets: list[DatasetReport] = field(default_factory=list)
    invalid_rows: list[RowProblem] = field(default_factory=list)
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    truncated_rows: list[RowProblem] = field(default_factory=list)
    dropped_rows: list[RowProblem] = field(default_factory=list)
    truncated: int = 0
    dropped_too_long: int = 0
    invalid_policy: str = "fail"
    train_examples: int = 0
    eval_examples: int = 0
    total_tokens: int = 0
    trainable_tokens: int = 0
    template: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    packing: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    cache_key: str | None = None

    # ---- building

    def add_invalid(self, file: str, row: int, reason: str) -> None:
        self.invalid_reasons[_reason_kind(reason)] += 1
        if len(self.invalid_rows) < MAX_LISTED:
            self.invalid_rows.append(RowProblem(file, row, reason))

    @property
    def rows_read(self) -> int:
        return sum(d.rows_read for d in self.datasets)

    @property
    def invalid(self) -> int:
        return sum(d.invalid for d in self.datasets)

    @property
    def dropped(self) -> int:
        """Rows that do not train: invalid (when skipped or only checked) plus those with nothing trainable."""
        return self.invalid + self.dropped_too_long

    def invalid_message(self) -> str:
        """One readable message naming file, row and reason for the first invalid rows."""
        shown = self.invalid_rows[:MAX_IN_MESSAGE]
        lines = [f"{self.invalid} invalid row{'s' if self.invalid != 1 else ''} in the training data:"]
        lines += [f"  {p}" for p in shown]
        rest = self.invalid - len(shown)
        if rest > 0:
            lines.append(f"  ... and {rest} more (all are counted in the data report)")
        lines.append(
            "Fix them, or set spec.data.invalidRows: skip to train without them (they stay listed in the data report)."
        )
        return "\n".join(lines)

    # ---- output

    def summary(self) -> dict[str, Any]:
        """Keys of kubetune.api.v1alpha1.DataReportSummary (for the FineTuneJob status)."""
        return {
            "rowsRead": self.rows_read,
            "invalid": self.invalid,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "totalTokens": self.total_tokens,
            "trainableTokens": self.trainable_tokens,
            # one entry per dataset; a prefix holding files of several formats gives e.g. "alpaca+sharegpt"
            "formats": ["+".join(d.formats) for d in self.datasets],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "datasets": [d.to_dict() for d in self.datasets],
            "template": self.template,
            "options": self.options,
            "invalid": {
                "count": self.invalid,
                "policy": self.invalid_policy,
                "byReason": dict(self.invalid_reasons.most_common()),
                "rows": [p.to_dict() for p in self.invalid_rows],
            },
            "truncated": {"count": self.truncated, "rows": [p.to_dict() for p in self.truncated_rows]},
            "dropped": {
                "count": self.dropped,
                "invalid": self.invalid,
                "noTrainableToken": self.dropped_too_long,
                "rows": [p.to_dict() for p in self.dropped_rows],
            },
            "examples": {"train": self.train_examples, "eval": self.eval_examples},
            "tokens": {"total": self.total_tokens, "trainable": self.trainable_tokens},
            "packing": self.packing,
            "warnings": self.warnings,
            "cacheKey": self.cache_key,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        report = cls(
            datasets=[
                DatasetReport(
                    source=d["source"],
                    split=d["split"],
                    format=d["format"],
                    detected=d["detectedFormat"],
                    files=d["files"],
                    rows_read=d["rowsRead"],
                    invalid=d["invalid"],
                    formats=d["formats"],
                )
                for d in data["datasets"]
            ],
            invalid_rows=[RowProblem(**p) for p in data["invalid"]["rows"]],
            invalid_reasons=Counter(data["invalid"]["byReason"]),
            truncated_rows=[RowProblem(**p) for p in data["truncated"]["rows"]],
            dropped_rows=[RowProblem(**p) for p in data["dropped"]["rows"]],
            truncated=data["truncated"]["count"],
            dropped_too_long=data["dropped"]["noTrainableToken"],
            invalid_policy=data["invalid"]["policy"],
            train_examples=data["examples"]["train"],
            eval_examples=data["examples"]["eval"],
            total_tokens=data["tokens"]["total"],
            trainable_tokens=data["tokens"]["trainable"],
            template=data["template"],
            options=data["options"],
            packing=data["packing"],
            warnings=data["warnings"],
            cache_key=data["cacheKey"],
        )
        return report

    def human(self) -> str:
        """A short text report for the terminal."""
        lines = []
        for d in self.datasets:
            lines.append(f"{d.source}: {d.rows_read} rows, {d.invalid} invalid, format {d.detected}")
            if len(d.formats) > 1:
                lines += [f"  {f['uri']}: {f['detectedFormat']}" for f in d.files if "detectedFormat" in f]
        lines.append(
            f"rows read {self.rows_read}, invalid {self.invalid}, truncated {self.truncated}, "
            f"dropped {self.dropped} (no trainable token: {self.dropped_too_long})"
        )
        share = self.trainable_tokens / self.total_tokens if self.total_tokens else 0.0
        lines.append(
            f"examples {self.train_examples + self.eval_examples}, tokens {self.total_tokens}, "
            f"trainable {self.trainable_tokens} ({share:.1%})"
        )
        if self.invalid_rows:
            lines.append("invalid rows:")
            lines += [f"  {p}" for p in self.invalid_rows[:MAX_IN_MESSAGE]]
            if self.invalid > MAX_IN_MESSAGE:
                lines.append(f"  ... and {self.invalid - MAX_IN_MESSAGE} more")
        for title, rows in (("truncated", self.truncated_rows), ("dropped", self.dropped_rows)):
            if rows:
                lines.append(f"{title} rows:")
                lines += [f"  {p}" for p in rows[:MAX_IN_MESSAGE]]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    """Group reasons for counting: the text before any specifics."""
    for sep in (" (", ": ", " turn ", " 0x"):
        if sep in reason:
            reason = reason.split(sep, 1)[0]
    return reason
