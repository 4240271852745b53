"""Progress events from rank 0: a tqdm bar, progress.jsonl, the FineTuneJob status, a loss curve.

One event is a dict from `kubetune.reporting.progress_event`. The same dicts go
to the local JSON-lines log (mirrored to `<output>/progress.jsonl`, throttled) and, in pods, to the
operator's StatusReporter, which merge-patches `status.progress` of the FineTuneJob.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from kubetune.reporting import format_eta, progress_event
from kubetune.trainer.failures import check_loss

if TYPE_CHECKING:
    from kubetune.storage import StorageOptions

log = logging.getLogger("kubetune.trainer")


__all__ = ["ProgressCallback", "ProgressSink", "format_eta", "progress_event"]


def _reporter() -> Any:
    try:
        from kubetune.reporting import StatusReporter
    except ImportError:
        return None
    return StatusReporter.from_env()


class ProgressSink:
    """Where rank 0's events go. Never raises: progress must not fail a training run."""

    def __init__(
        self, local_path: Path, remote_uri: str | None, opts: StorageOptions | None, upload_every_s: float = 30.0
    ) -> None:
        self.local_path = local_path
        self.remote_uri = remote_uri
        self.opts = opts
        self.upload_every_s = upload_every_s
        self.reporter = _reporter()
        self.history: list[dict[str, Any]] = []
        self.bar: Any = None
        self._earlier: list[dict[str, Any]] = []
        self._last_upload = 0.0
        local_path.parent.mkdir(parents=True, exist_ok=True)

    def open_bar(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)

    def close_bar(self) -> None:
        """Also called on failure, so the error line starts on a line of its own."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def emit(self, event: dict[str, Any], *, force: bool = False) -> None:
        self.history.append(event)
        with self.local_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        if self.reporter is not None:
            self.reporter.report(progress=event, force=force)
        if force or time.monotonic() - self._last_upload >= self.upload_every_s:
            self.flush()

    def stage(self, stage: str, message: str, **fields: Any) -> None:
        self.emit(progress_event(stage, message=message, **fields), force=True)

    def report(self, **kwargs: Any) -> None:
        """Data report or outputs for the FineTuneJob status (pods only)."""
        if self.reporter is not None:
            self.reporter.report(force=True, **kwargs)

    def close(self) -> None:
        """Flush what throttling held back: the last event must reach the status and the output."""
        self.close_bar()
        self.flush()
        if self.reporter is not None:
            self.reporter.close()

    def flush(self) -> None:
        if not self.remote_uri:
            return
        from kubetune.storage import upload_file

        try:
            upload_file(self.local_path, self.remote_uri, self.opts)
            self._last_upload = time.monotonic()
        except Exception as exc:
            log.warning("could not upload progress log: %s", exc)

    def start(self) -> None:
        """Begin a new local log, remembering the output's earlier one (a resumed run continues it)."""
        from kubetune.storage import exists, read_bytes

        self.local_path.unlink(missing_ok=True)
        if not self.remote_uri:
            return
        try:
            if exists(self.remote_uri, self.opts):
                lines = read_bytes(self.remote_uri, self.opts).decode().splitlines()
                self._earlier = [json.loads(line) for line in lines if line.strip()]
        except Exception as exc:
            log.warning("could not read the earlier progress log: %s", exc)

    def continue_history(self, step: int) -> None:
        """After a resume, keep the earlier run's training events up to the checkpoint (for loss.png)."""
        kept = [e for e in self._earlier if e.get("stage") == "training" and e.get("step", step + 1) <= step]
        self.history[:0] = kept
        current = self.local_path.read_text() if self.local_path.exists() else ""
        self.local_path.write_text("".join(json.dumps(e) + "\n" for e in kept) + current)

    def plot_loss(self, path: Path) -> bool:
        """loss.png from the training and eval losses seen so far; for dpo/kto a second panel holds the
        reward margin (and accuracy, dpo) that TRL logs beside the loss."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = self._series("loss")
        evals = self._series("evalLoss")
        margins, accuracies = self._series("rewardMargin"), self._series("rewardAccuracy")
        if not train and not evals:
            return False
        rewards = bool(margins or accuracies)
        fig, axes = plt.subplots(2 if rewards else 1, 1, figsize=(7, 6 if rewards else 4), dpi=100, sharex=True)
        ax = axes[0] if rewards else axes
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss")
        if evals:
            ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        if rewards:
            ax = axes[1]
            if margins:
                ax.plot(*zip(*margins, strict=True), color="tab:green", label="reward margin")
            if accuracies:
                ax.plot(*zip(*accuracies, strict=True), color="tab:purple", label="reward accuracy")
            ax.set_ylabel("reward")
            ax.grid(alpha=0.3)
            ax.legend()
        ax.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return True

    def _series(self, key: str) -> list[tuple[int, float]]:
        return [(e["step"], e[key]) for e in self.history if e.get(key) is not None and "step" in e]


class ProgressCallback(TrainerCallback):
    """Turns Trainer logs into events on rank 0, and stops every rank on a non-finite loss."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink  # None on ranks other than 0
        self._t0 = 0.0
        self._start_step = 0
        self._last = (0.0, 0)  # (time, tokens) at the previous log
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.monotonic()
        self._start_step = state.global_step
        self._last = (self._t0, state.num_input_tokens_seen)
        if self.sink is not None:
            self.sink.open_bar(state.max_steps, state.global_step)
            self.sink.emit(
                progress_event("training", step=state.global_step, total=state.max_steps, message="training"),
                force=True,
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        bar = self.sink.bar if self.sink is not None else None
        if bar is not None:
            bar.update(state.global_step - bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        check_loss(logs.get("loss"), state.global_step)
        self.last_loss = logs.get("loss", self.last_loss)
        self.last_eval_loss = logs.get("eval_loss", self.last_eval_loss)
        if self.sink is None or ("loss" not in logs and "eval_loss" not in logs):
            return
        now = time.monotonic()
        tokens = state.num_input_tokens_seen
        tps = (tokens - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, tokens)
        done = state.global_step - self._start_step
        eta = (now - self._t0) / done * (state.max_steps - state.global_step) if done else None
        event = progress_event(
            "training",
            step=state.global_step,
            total=state.max_steps,
            epoch=round(state.epoch or 0.0, 4),
            loss=logs.get("loss"),
            evalLoss=logs.get("eval_loss"),
            learningRate=logs.get("learning_rate"),
            tokensPerSecond=round(tps, 1) if "loss" in logs else None,
            # Preference training (TRL's DPOTrainer logs these beside the loss).
            rewardMargin=logs.get("rewards/margins"),
            rewardAccuracy=logs.get("rewards/accuracies"),
            rewardChosen=logs.get("rewards/chosen"),
            rewardRejected=logs.get("rewards/rejected"),
            etaSeconds=eta,
            message="training",
        )
        self.sink.emit(event)
        if self.sink.bar is not None:
            self.sink.bar.set_postfix(
                {k: v for k, v in (("loss", event.get("loss")), ("eval", event.get("evalLoss"))) if v is not None}
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.sink is not None:
            self.sink.close_bar()
