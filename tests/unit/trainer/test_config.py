from __future__ import annotations

import os

import pytest
import yaml

from kubetune.trainer.config import Accelerator, Distributed, load_run_config, parse_size, resolve_precision
from kubetune.trainer.failures import TrainerError
from kubetune.trainer.model import fetch_model, lora_config

# What the assertions below expect, whatever GPUs the machine running the tests has.
CPU = Accelerator(cuda=False, bf16=False)


@pytest.mark.parametrize(
    ("text", "size"), [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5 GB", 1_500_000_000)]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("requested", "cuda", "bf16", "runs"),
    [
        ("bf16", False, False, "fp32"),
        ("fp16", False, False, "fp32"),
        ("fp32", False, False, "fp32"),
        ("bf16", True, True, "bf16"),
        ("bf16", True, False, "fp16"),
        ("fp16", True, True, "fp16"),
    ],
)
def test_precision_that_runs(requested, cuda, bf16, runs):
    assert resolve_precision(requested, cuda=cuda, bf16_supported=bf16) == runs


def test_distributed_from_torchrun_env():
    d = Distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (d.rank, d.world_size, d.local_rank, d.is_main, d.is_local_main) == (3, 4, 1, False, False)
    assert Distributed.from_env({}).is_main  # no torchrun: a single process


def _job_file(tmp_path, **spec):
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "model": {"source": str(tmp_path / "model")},
            "datasets": [{"source": "s3://data/x.jsonl"}],
            "output": {"uri": "s3://out/runs/demo/"},
            **spec,
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_run_config_layout_and_env(tmp_path):
    env = {
        "KUBETUNE_CACHE_DIR": str(tmp_path / "cache"),
        "KUBETUNE_JOB_NAME": "demo-x",
        "KUBETUNE_JOB_NAMESPACE": "team",
        "GROUP_RANK": "1",
        "RANK": "1",
        "WORLD_SIZE": "2",
    }
    cfg = load_run_config(_job_file(tmp_path), env, CPU)
    assert cfg.work_dir.parent.parent == tmp_path / "cache" / "runs" and cfg.work_dir.name == "node-1"
    assert cfg.work_dir.parent.name.startswith("team-demo-x-")
    assert cfg.output.checkpoints == "s3://out/runs/demo/checkpoints"
    assert cfg.output.manifest == "s3://out/runs/demo/manifest.json"
    assert cfg.output.model == "s3://out/runs/demo/model"
    assert cfg.dist.world_size == 2 and not cfg.dist.is_main
    assert cfg.precision == "fp32"  # the spec's default bf16, on a CPU-only machine
    assert cfg.merges


@pytest.mark.parametrize(
    ("accelerator", "precision", "device"),
    [
        (Accelerator(cuda=True, bf16=True), "bf16", "cuda"),
        (Accelerator(cuda=True, bf16=False), "fp16", "cuda"),
        (Accelerator(cuda=False, bf16=False), "fp32", "cpu"),
    ],
)
def test_precision_and_device_follow_the_accelerator(tmp_path, accelerator, precision, device):
    cfg = load_run_config(_job_file(tmp_path), {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}, accelerator)
    assert (cfg.precision, cfg.device) == (precision, device)


def test_missing_local_model_is_a_model_error(tmp_path):
    cfg = load_run_config(_job_file(tmp_path), {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")})
    with pytest.raises(TrainerError, match="no model at") as info:
        fetch_model(cfg)
    assert info.value.code == 4


@pytest.mark.parametrize(
    ("targets", "expected"), [(["all"], "all-linear"), (["q_proj", "v_proj"], {"q_proj", "v_proj"})]
)
def test_lora_targets(tmp_path, targets, expected):
    method = {"type": "lora", "lora": {"rank": 4, "alpha": 8, "targetModules": targets, "useRslora": True}}
    cfg = load_run_config(_job_file(tmp_path, method=method), {"KUBETUNE_CACHE_DIR": str(tmp_path)})
    config = lora_config(cfg)
    assert config.target_modules == expected
    assert (config.r, config.lora_alpha, config.use_rslora) == (4, 8, True)


@pytest.mark.parametrize(
    ("training", "warmup", "length"),
    [
        ({}, 0.03, {"num_train_epochs": 3.0}),
        ({"warmupRatio": 0.1, "maxSteps": 50}, 0.1, {"max_steps": 50}),
        ({"warmupSteps": 7, "epochs": 1.5}, 7, {"num_train_epochs": 1.5}),
    ],
)
def test_training_arguments_follow_the_spec(tmp_path, training, warmup, length):
    from kubetune.trainer.recipe import training_arguments

    spec = {
        "training": {"checkpointEverySteps": 25, "keepCheckpoints": 3, **training},
        "data": {"validationSplit": 0.1},
    }
    cfg = load_run_config(_job_file(tmp_path, **spec), {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}, CPU)
    args = training_arguments(cfg)
    assert args.warmup_steps == warmup
    for key, value in length.items():
        assert getattr(args, key) == value
    assert (args.save_steps, args.save_total_limit) == (25, 3)
    assert args.eval_strategy == "steps" and args.eval_steps == 25  # eval at each checkpoint by default
    assert args.logging_nan_inf_filter is False  # NaN losses must reach the check
    assert args.use_cpu and not args.bf16 and args.deepspeed is None
    assert args.output_dir == str(cfg.work_dir / "checkpoints")


def test_work_dir_is_unique_per_output_uri(tmp_path):
    """Two jobs with the same name but different outputs never share local checkpoints or exports."""
    env = {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    first = load_run_config(_job_file(tmp_path, output={"uri": "s3://out/a/"}), env)
    second = load_run_config(_job_file(tmp_path, output={"uri": "s3://out/b/"}), env)
    again = load_run_config(_job_file(tmp_path, output={"uri": "s3://out/a"}), env)
    assert first.job.name == second.job.name
    assert first.work_dir != second.work_dir
    assert again.work_dir == first.work_dir  # a restarted pod finds its own directory


def test_ddp_timeout_is_generous_while_preparing_short_in_training_and_configurable(tmp_path):
    from kubetune.api.v1alpha1 import TrainingSpec
    from kubetune.trainer.collectives import CollectiveTimeouts
    from kubetune.trainer.recipe import training_arguments

    env = {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    default = load_run_config(_job_file(tmp_path), env)
    # The process group starts with the long timeout: its first collectives wait for the model download.
    assert training_arguments(default).ddp_timeout == 4 * 3600
    assert CollectiveTimeouts(default.spec.training.ddp_timeout_seconds).training_s == 30 * 60
    cfg = load_run_config(_job_file(tmp_path, training={"ddpTimeoutSeconds": 600}), env)
    assert training_arguments(cfg).ddp_timeout == 4 * 3600
    assert CollectiveTimeouts(cfg.spec.training.ddp_timeout_seconds).training_s == 600
    # LLaMA-Factory's examples set 180000000: that is the longer wait everywhere.
    patient = load_run_config(_job_file(tmp_path, training={"ddpTimeoutSeconds": 180000000}), env)
    assert training_arguments(patient).ddp_timeout == 180000000
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        TrainingSpec.model_validate({"ddpTimeoutSeconds": 0})


def test_dataloader_workers_reach_the_trainer(tmp_path):
    from kubetune.trainer.recipe import training_arguments

    env = {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    assert training_arguments(load_run_config(_job_file(tmp_path), env)).dataloader_num_workers == 0
    cfg = load_run_config(_job_file(tmp_path, training={"dataloaderWorkers": 4}), env)
    assert training_arguments(cfg).dataloader_num_workers == 4


def test_report_to_tensorboard_writes_under_the_work_dir(tmp_path, monkeypatch):
    from kubetune.trainer.recipe import tensorboard_dir, training_arguments

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "elsewhere")  # restored after the test: the recipe sets it
    env = {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}
    assert training_arguments(load_run_config(_job_file(tmp_path), env)).report_to == []
    cfg = load_run_config(_job_file(tmp_path, training={"reportTo": ["tensorboard"]}), env)
    assert training_arguments(cfg).report_to == ["tensorboard"]
    assert tensorboard_dir(cfg).parent == cfg.work_dir
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tensorboard_dir(cfg))
    assert cfg.output.tensorboard == "s3://out/runs/demo/tensorboard"


def test_report_to_a_tracker_the_image_lacks_is_a_config_error(tmp_path):
    import importlib.util

    from kubetune.trainer.recipe import training_arguments

    assert importlib.util.find_spec("mlflow") is None  # the test environment, like the image, has no mlflow
    cfg = load_run_config(_job_file(tmp_path, training={"reportTo": ["mlflow"]}), {"KUBETUNE_CACHE_DIR": str(tmp_path)})
    with pytest.raises(TrainerError, match="reportTo: mlflow needs the Python package mlflow") as info:
        training_arguments(cfg)
    assert info.value.code == 2
