"""The trainer's data pipeline: read, check, template, tokenize once, mask, pack (see docs/data.md)."""

from __future__ import annotations

from kubetune.trainer.data.collator import DataCollator
from kubetune.trainer.data.errors import DataValidationError
from kubetune.trainer.data.pipeline import PreparedData, check_file, first_conversation, prepare_data
from kubetune.trainer.data.report import DataReport

__all__ = [
    "DataCollator",
    "DataReport",
    "DataValidationError",
    "PreparedData",
    "check_file",
    "first_conversation",
    "prepare_data",
]
