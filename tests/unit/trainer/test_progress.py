from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import Progress
from kubetune.trainer.progress import ProgressSink, format_eta, progress_event


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (200, "3m20s"), (3720, "1h02m")])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_event_has_progress_fields():
    event = progress_event("training", step=84, total=200, loss=1.25, etaSeconds=200.0, tokensPerSecond=10.0)
    assert event["display"] == "42% 84/200"
    assert event["percent"] == 42.0
    assert event["eta"] == "3m20s"
    # Every key is a field of the status schema the operator patches.
    parsed = Progress.model_validate(event)
    assert parsed.model_extra == {}
    assert parsed.loss == 1.25


def test_unknown_values_are_left_out():
    event = progress_event("preparing", message="preparing data")
    assert "step" not in event and "percent" not in event and "loss" not in event


def test_sink_writes_json_lines_mirror_and_plot(tmp_path):
    remote = tmp_path / "out" / "progress.jsonl"
    sink = ProgressSink(tmp_path / "work" / "progress.jsonl", str(remote), None, upload_every_s=3600)
    sink.stage("preparing", "preparing data")
    for step in range(1, 4):
        sink.emit(progress_event("training", step=step, total=3, loss=3.0 - step, evalLoss=3.5 - step))
    lines = [json.loads(line) for line in sink.local_path.read_text().splitlines()]
    assert [e["stage"] for e in lines] == ["preparing", "training", "training", "training"]
    # Forced (stage) events are mirrored at once; the rest when the throttle allows.
    assert len(remote.read_text().splitlines()) == 1
    sink.flush()
    assert len(remote.read_text().splitlines()) == 4
    png = tmp_path / "loss.png"
    assert sink.plot_loss(png)
    assert png.read_bytes().startswith(b"\x89PNG")


def test_resumed_run_continues_the_earlier_history(tmp_path):
    remote = tmp_path / "out" / "progress.jsonl"
    first = ProgressSink(tmp_path / "w1" / "progress.jsonl", str(remote), None)
    first.start()
    for step in (10, 20, 30):
        first.emit(progress_event("training", step=step, total=60, loss=5.0 - step / 10))
    first.flush()

    second = ProgressSink(tmp_path / "w2" / "progress.jsonl", str(remote), None)
    second.start()
    second.stage("preparing", "preparing data")  # overwrites the remote copy; the history is in memory
    second.continue_history(20)  # resumed from checkpoint-20: step 30 is trained again
    second.emit(progress_event("training", step=30, total=60, loss=1.5))
    second.flush()
    steps = [e.get("step") for e in (json.loads(line) for line in remote.read_text().splitlines())]
    assert steps == [10, 20, None, 30]
    assert [e["step"] for e in second.history if "loss" in e] == [10, 20, 30]


@pytest.mark.parametrize(
    ("step", "total", "percent", "display"),
    [
        (199, 200, 99.5, "99% 199/200"),
        (1999, 2000, 99.9, "99% 1999/2000"),
        (200, 200, 100.0, "100% 200/200"),
        (0, 7, 0.0, "0% 0/7"),
        (2, 3, 66.6, "66% 2/3"),
    ],
)
def test_percent_is_floored_never_a_premature_100(step, total, percent, display):
    event = progress_event("training", step=step, total=total)
    assert (event["percent"], event["display"]) == (percent, display)


def test_plot_has_a_reward_panel_for_preference_stages(tmp_path):
    from matplotlib.image import imread

    def plot(name, **rewards):
        sink = ProgressSink(tmp_path / name / "progress.jsonl", None, None)
        for step in range(1, 4):
            fields = {k: v * step for k, v in rewards.items()}
            sink.emit(progress_event("training", step=step, total=3, loss=1.0 / step, **fields))
        assert sink.plot_loss(tmp_path / f"{name}.png")
        return imread(tmp_path / f"{name}.png").shape[0]

    sft_height = plot("sft")
    # The margin (and, for dpo, the accuracy) get a panel of their own under the loss.
    assert plot("dpo", rewardMargin=0.5, rewardAccuracy=0.3) > sft_height
    assert plot("kto", rewardMargin=0.5) > sft_height
