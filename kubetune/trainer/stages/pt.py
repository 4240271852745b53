"""stage pt: continued pre-training. The loop is SFT's; only the data differs (every token of the
cutoffLen text blocks carries loss, see kubetune.trainer.data.text)."""

from __future__ import annotations

from kubetune.trainer.stages.sft import make_trainer

__all__ = ["make_trainer"]
