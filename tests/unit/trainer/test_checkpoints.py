from __future__ import annotations

import logging
import shutil

import yaml

from kubetune.api.validation import parse_job
from kubetune.storage import write_bytes
from kubetune.trainer.checkpoints import (
    COMPLETE,
    marker_text,
    prune,
    restore_latest,
    restored_checkpoint,
    run_identity,
    scan,
)

RUN = "run-a"


def _checkpoint(root, step, *, complete=True, run=RUN):
    write_bytes(f"{root}/checkpoint-{step}/adapter_model.safetensors", b"w" * step)
    write_bytes(f"{root}/checkpoint-{step}/trainer_state.json", b"{}")
    if complete:
        write_bytes(f"{root}/checkpoint-{step}/{COMPLETE}", marker_text(step, run))


def test_only_marked_checkpoints_are_complete(tmp_path):
    root = str(tmp_path / "checkpoints")
    _checkpoint(root, 10)
    _checkpoint(root, 20)
    _checkpoint(root, 30, complete=False)  # an upload cut off by preemption
    assert scan(root, None) == ([10, 20], [30])


def test_restore_takes_latest_complete_and_drops_stale_local_state(tmp_path):
    root = str(tmp_path / "checkpoints")
    _checkpoint(root, 10)
    _checkpoint(root, 20)
    _checkpoint(root, 30, complete=False)
    local = tmp_path / "local"
    (local / "checkpoint-40").mkdir(parents=True)  # left by a process that never uploaded it
    restored = restore_latest(root, local, None, RUN)
    assert restored == local / "checkpoint-20"
    assert (restored / "adapter_model.safetensors").read_bytes() == b"w" * 20
    assert sorted(p.name for p in local.iterdir()) == ["checkpoint-20"]
    assert restored_checkpoint(local) == local / "checkpoint-20"  # what every other rank of the node resumes from


def test_fresh_run_has_nothing_to_restore(tmp_path):
    assert restore_latest(str(tmp_path / "none"), tmp_path / "local", None, RUN) is None
    assert restored_checkpoint(tmp_path / "local") is None


def test_prune_keeps_newest_and_removes_dead_uploads(tmp_path):
    root = str(tmp_path / "checkpoints")
    for step in (10, 20, 30):
        _checkpoint(root, step)
    _checkpoint(root, 15, complete=False)
    _checkpoint(root, 40, complete=False)  # may still be uploading: keep it
    assert prune(root, 2, None, RUN) == [10, 15]
    assert scan(root, None) == ([20, 30], [40])


def _trainer_objects(tmp_path, step):
    from types import SimpleNamespace

    from transformers import TrainerControl

    args = SimpleNamespace(output_dir=str(tmp_path / "local"), device="cpu")
    return args, SimpleNamespace(global_step=step), TrainerControl()


def test_on_save_uploads_then_marks_complete_then_prunes(tmp_path):
    from kubetune.trainer.checkpoints import CheckpointSync, Preemption
    from kubetune.trainer.config import Distributed

    remote = str(tmp_path / "remote" / "checkpoints")
    sync = CheckpointSync(remote, keep=2, opts=None, dist=Distributed(), preemption=Preemption(), run_id=RUN)
    for step in (10, 20, 30):
        local = tmp_path / "local" / f"checkpoint-{step}"
        local.mkdir(parents=True)
        (local / "optimizer.pt").write_bytes(b"o" * step)
        sync.on_save(*_trainer_objects(tmp_path, step))
    sync.on_train_end(*_trainer_objects(tmp_path, 30))  # the last upload ends before training returns
    assert scan(remote, None) == ([20, 30], [])
    assert (tmp_path / "remote" / "checkpoints" / "checkpoint-30" / "optimizer.pt").read_bytes() == b"o" * 30


def test_sigterm_saves_and_stops_at_the_next_step(tmp_path):
    import os
    import signal

    from kubetune.trainer.checkpoints import CheckpointSync, Preemption
    from kubetune.trainer.config import Distributed

    preemption = Preemption()
    preemption.install()
    try:
        sync = CheckpointSync(str(tmp_path), keep=1, opts=None, dist=Distributed(), preemption=preemption, run_id=RUN)
        args, state, control = _trainer_objects(tmp_path, 5)
        sync.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)  # the process survives: the handler only sets the flag
        sync.on_step_end(args, state, control)
        assert preemption.requested and control.should_save and control.should_training_stop
    finally:
        preemption.uninstall()


def test_checkpoints_of_another_configuration_are_neither_resumed_nor_deleted(tmp_path, caplog):
    root = str(tmp_path / "checkpoints")
    _checkpoint(root, 10, run="other")
    _checkpoint(root, 20, run="other")
    _checkpoint(root, 5, complete=True)  # this run's own, older than the foreign ones
    _checkpoint(root, 30, run="other")
    assert restore_latest(root, tmp_path / "local", None, RUN).name == "checkpoint-5"
    assert prune(root, 1, None, RUN) == []  # keep=1: the foreign ones are not this run's to prune
    assert scan(root, None) == ([5, 10, 20, 30], [])

    with caplog.at_level(logging.WARNING, logger="kubetune.trainer"):
        assert restore_latest(root, tmp_path / "local", None, "run-b") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"checkpoints under {root} belong to a different configuration; starting fresh "
        "(delete them or change output.uri)"
    ]
    assert scan(root, None) == ([5, 10, 20, 30], [])


def test_markers_without_an_identity_are_not_resumed(tmp_path):
    root = str(tmp_path / "checkpoints")
    _checkpoint(root, 10, complete=False)
    write_bytes(f"{root}/checkpoint-10/{COMPLETE}", b"10\n")  # written before markers held an identity
    assert restore_latest(root, tmp_path / "local", None, RUN) is None


def _spec(**training):
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j"},
        "spec": {
            "model": {"source": "/models/m"},
            "datasets": [{"source": "s3://data/x.jsonl"}],
            "output": {"uri": "s3://out/j/"},
            "training": training,
        },
    }
    return parse_job(yaml.safe_load(yaml.safe_dump(doc))).spec


def test_run_identity_ignores_intervals_but_not_what_shapes_training():
    base = run_identity(_spec(maxSteps=100))
    assert run_identity(_spec(maxSteps=100)) == base
    intervals = {"checkpointEverySteps": 7, "keepCheckpoints": 5, "loggingSteps": 3, "evalEverySteps": 9}
    assert run_identity(_spec(maxSteps=100, **intervals)) == base
    assert run_identity(_spec(maxSteps=200)) != base
    assert run_identity(_spec(maxSteps=100, learningRate=0.001)) != base
    # How the run is carried out does not shape it either: a re-created job keeps its checkpoints.
    how = {"ddpTimeoutSeconds": 60, "dataloaderWorkers": 2, "reportTo": ["tensorboard"]}
    assert run_identity(_spec(maxSteps=100, **how)) == base


def test_run_identity_covers_the_stage_and_the_preference_loss():
    def spec(**changes):
        s = _spec(maxSteps=100)
        return s.model_copy(update=changes)

    from kubetune.api.v1alpha1 import PreferenceSpec

    sft, dpo = run_identity(spec()), run_identity(spec(stage="dpo", preference=PreferenceSpec()))
    assert sft != dpo
    assert run_identity(spec(stage="dpo", preference=PreferenceSpec(beta=0.5))) != dpo


class GatedUpload:
    """The real upload, held until the test opens the gate; records how many ran at once."""

    def __init__(self):
        import threading

        self.gate = threading.Event()
        self.started = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, local, uri, opts):
        from kubetune.storage import upload_dir

        with self._lock:
            self.started.append(uri.rsplit("/", 1)[-1])
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.gate.wait()
            return upload_dir(local, uri, opts)
        finally:
            with self._lock:
                self.running -= 1


def _saved(tmp_path, step):
    local = tmp_path / "local" / f"checkpoint-{step}"
    local.mkdir(parents=True)
    (local / "optimizer.pt").write_bytes(b"o" * step)
    return local


def _sync(tmp_path, upload, preemption=None, keep=5):
    from kubetune.trainer.checkpoints import CheckpointSync, Preemption
    from kubetune.trainer.config import Distributed

    remote = str(tmp_path / "remote" / "checkpoints")
    sync = CheckpointSync(
        remote,
        keep=keep,
        opts=None,
        dist=Distributed(),
        preemption=preemption or Preemption(),
        run_id=RUN,
        upload=upload,
    )
    return sync, remote


def test_upload_runs_behind_training_and_complete_is_written_only_after_it(tmp_path):
    upload = GatedUpload()
    sync, remote = _sync(tmp_path, upload)
    local = _saved(tmp_path, 10)
    sync.on_save(*_trainer_objects(tmp_path, 10))  # returns with the upload held: training goes on
    shutil.rmtree(local)  # the HF Trainer rotating its local checkpoints does not cut the upload
    sync.on_step_end(*_trainer_objects(tmp_path, 11))
    assert scan(remote, None) == ([], [])  # nothing uploaded yet, and no marker
    upload.gate.set()
    sync._in_flight.wait()
    assert scan(remote, None) == ([], [10])  # uploaded, marker not yet: it waits for a step boundary
    sync.on_step_end(*_trainer_objects(tmp_path, 12))
    assert scan(remote, None) == ([10], [])
    assert (tmp_path / "remote" / "checkpoints" / "checkpoint-10" / "optimizer.pt").read_bytes() == b"o" * 10
    assert not (tmp_path / "local" / ".uploading" / "checkpoint-10").exists()  # the hard links are gone


def test_at_most_one_upload_in_flight(tmp_path):
    import threading

    upload = GatedUpload()
    sync, remote = _sync(tmp_path, upload)
    _saved(tmp_path, 10)
    _saved(tmp_path, 20)
    sync.on_save(*_trainer_objects(tmp_path, 10))
    second = threading.Thread(target=sync.on_save, args=_trainer_objects(tmp_path, 20))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # the next save waits for the upload in flight
    assert upload.started == ["checkpoint-10"]
    upload.gate.set()
    second.join()
    sync.on_train_end(*_trainer_objects(tmp_path, 20))
    assert upload.started == ["checkpoint-10", "checkpoint-20"]
    assert upload.most_at_once == 1
    assert scan(remote, None) == ([10, 20], [])  # 10 was marked complete before 20 started


def test_preemption_waits_for_the_upload_in_flight(tmp_path):
    import threading

    from kubetune.trainer.checkpoints import Preemption

    upload = GatedUpload()
    preemption = Preemption(upload_wait_s=60)
    sync, remote = _sync(tmp_path, upload, preemption)
    _saved(tmp_path, 10)
    sync.on_save(*_trainer_objects(tmp_path, 10))
    preemption.requested = True  # as SIGTERM sets it
    threading.Timer(0.3, upload.gate.set).start()
    sync.on_train_end(*_trainer_objects(tmp_path, 10))
    assert upload.gate.is_set()
    assert scan(remote, None) == ([10], [])  # uploaded and marked before the process exits


def test_preemption_gives_up_on_an_upload_when_the_grace_period_runs_out(tmp_path, caplog):
    import time

    from kubetune.trainer.checkpoints import Preemption

    upload = GatedUpload()
    preemption = Preemption(upload_wait_s=0.3)
    sync, remote = _sync(tmp_path, upload, preemption)
    _saved(tmp_path, 10)
    sync.on_save(*_trainer_objects(tmp_path, 10))
    preemption.requested = True
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kubetune.trainer"):
        sync.on_train_end(*_trainer_objects(tmp_path, 10))
    assert 0.25 < time.monotonic() - start < 5
    assert "checkpoint 10 was still uploading when the grace period ran out" in caplog.text
    upload.gate.set()
    sync._in_flight.wait()
    assert scan(remote, None) == ([], [10])  # never marked: resuming skips it


def test_a_failed_background_upload_fails_training(tmp_path):
    import pytest

    from kubetune.storage import StorageError

    def refused(local, uri, opts):
        raise StorageError("access denied")

    sync, remote = _sync(tmp_path, refused)
    _saved(tmp_path, 10)
    sync.on_save(*_trainer_objects(tmp_path, 10))
    sync._in_flight._done.wait()
    with pytest.raises(StorageError, match="access denied"):
        sync.on_step_end(*_trainer_objects(tmp_path, 11))
    assert scan(remote, None) == ([], [])
