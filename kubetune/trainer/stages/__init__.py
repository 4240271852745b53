"""The training loop of each spec.stage: a module per stage, each with `make_trainer`.

Everything around the loop (model, data, checkpoints, progress, export, upload) is the same for
every stage (recipe.py); a stage only chooses its TRL trainer and how that trainer reads the data
the pipeline prepared for it (kubetune.trainer.data.kinds).
"""

from __future__ import annotations

import importlib
from typing import Any


def make_trainer(cfg: Any, model: Any, args: Any, tokenizer: Any, prepared: Any, callbacks: list[Any]) -> Any:
    """The TRL trainer for `cfg.spec.stage`, over the prepared (tokenized) data."""
    module = importlib.import_module(f"{__name__}.{cfg.spec.stage}")
    return module.make_trainer(cfg, model, args, tokenizer, prepared, callbacks)


def non_empty(dataset: Any) -> Any:
    return dataset if dataset is not None and len(dataset) > 0 else None
