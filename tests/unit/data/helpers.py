"""Helpers shared by the data pipeline tests."""

from __future__ import annotations

from typing import Any


def make_spec(datasets: list[dict[str, Any]], **sections: Any) -> Any:
    """A FineTuneJobSpec with the given datasets and extra sections (camelCase, as in YAML)."""
    from kubetune.api.v1alpha1 import FineTuneJobSpec

    doc = {"model": {"source": "/models/tiny"}, "datasets": datasets, "output": {"uri": "/tmp/out"}, **sections}
    return FineTuneJobSpec.model_validate(doc)
