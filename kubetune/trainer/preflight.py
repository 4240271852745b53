"""Storage checks before the first training step: a run that cannot read its inputs or write its
output fails in seconds with what to fix, not after hours of training.

The output bucket's existence is asked explicitly (some S3 servers create a misspelled bucket on the
first write), then a probe object is written and deleted. S3 datasets and the S3 base model must be
listable and readable. Local data and model paths are checked by the data pipeline and the model
loader, which already name the problem in their own terms.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from kubetune.storage import StorageError, check_readable, check_writable, is_remote

if TYPE_CHECKING:
    from kubetune.trainer.config import RunConfig


def check_output(cfg: RunConfig) -> None:
    """The output exists and takes writes (asked first: a finished run is recognised by its manifest there)."""
    _check("spec.output.uri", lambda: check_writable(cfg.output.root, cfg.storage))


def check_inputs(cfg: RunConfig) -> None:
    """The S3 model and datasets can be listed and read."""
    if is_remote(cfg.spec.model.source):
        _check("spec.model.source", lambda: check_readable(cfg.spec.model.source, cfg.storage))
    reference = cfg.spec.model.reference
    if reference is not None and is_remote(reference):
        _check("spec.model.reference", partial(check_readable, reference, cfg.storage))
    for n, dataset in enumerate(cfg.spec.datasets):
        if is_remote(dataset.source):
            _check(f"spec.datasets[{n}].source", partial(check_readable, dataset.source, cfg.storage))


def _check(field: str, check: Callable[[], None]) -> None:
    try:
        check()
    except StorageError as err:
        raise StorageError(f"{field}: {err.what}", err.todo, err.permanent) from err
