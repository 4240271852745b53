"""Errors of the data pipeline."""

from __future__ import annotations


class DataValidationError(ValueError):
    """The data cannot train as configured; str() names file, row and reason for the first rows."""
