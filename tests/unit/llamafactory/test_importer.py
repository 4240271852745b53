"""`kubetune import llamafactory`: LLaMA-Factory's own example configs, its defaults, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.validation import load_jobs
from kubetune.cli import main

LF = Path(__file__).resolve().parents[2] / "fixtures" / "llamafactory-0.9.5"
DATASET_INFO = LF / "data" / "dataset_info.json"
EXAMPLES = sorted(p for d in ("train_lora", "train_qlora", "train_full") for p in (LF / "examples" / d).glob("*.yaml"))
# What LLaMA-Factory's examples ask for that kubetune does not train, and the reason given.
REFUSED = {
    "qwen3_lora_reward.yaml": "stage: 'rm' is not supported",
    "qwen3vl_lora_dpo.yaml": "dataset: dataset 'rlhf_v': multimodal data is not supported: column 'images'",
    "qwen3vl_lora_sft.yaml": "dataset: dataset 'mllm_demo': multimodal data is not supported: column 'images'",
    "qwen3vl_full_sft.yaml": "dataset: dataset 'mllm_demo': multimodal data is not supported: column 'images'",
}


def run_import(config: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["import", "llamafactory", str(config), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def imported(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    args = ["--dataset-info", str(DATASET_INFO), "--data-uri", "s3://datasets/lf/", "--output-uri", "s3://models/x/"]
    code, out, err = run_import(config, *args, *extra, capsys=capsys)
    assert code == 0, err
    [job] = load_jobs(out, str(config))  # what `kubetune validate` checks
    doc: dict[str, Any] = yaml.safe_load(out)
    assert job.spec.model.source == doc["spec"]["model"]["source"]
    return doc


def test_the_examples_are_here() -> None:
    assert len(EXAMPLES) == 17 and set(REFUSED) <= {p.name for p in EXAMPLES}


# The stage examples (their own test below); the others are sft.
STAGE_EXAMPLES = {"qwen3_lora_dpo.yaml": "dpo", "qwen3_lora_kto.yaml": "kto", "qwen3_lora_pretrain.yaml": "pt"}


@pytest.mark.parametrize(
    "config", [p for p in EXAMPLES if p.name not in REFUSED and p.name not in STAGE_EXAMPLES], ids=lambda p: p.name
)
def test_every_supported_example_imports_and_validates(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = imported(config, capsys)
    lf = yaml.safe_load(config.read_text())
    spec = doc["spec"]
    assert spec["model"]["source"] == lf["model_name_or_path"]
    assert [d["source"] for d in spec["datasets"]] == [
        "s3://datasets/lf/" + json.loads(DATASET_INFO.read_text())[n]["file_name"] for n in lf["dataset"].split(",")
    ]
    assert all(d["format"] == "alpaca" and d["maxSamples"] == lf["max_samples"] for d in spec["datasets"])
    assert spec["template"] == lf["template"]
    assert spec["training"]["learningRate"] == lf.get("learning_rate", 5e-5)  # transformers' default
    assert spec["training"]["lrScheduler"] == lf.get("lr_scheduler_type", "linear")
    assert spec["training"]["cutoffLen"] == lf["cutoff_len"]
    if lf.get("finetuning_type") == "full":
        assert spec["method"]["type"] == "full" and "lora" not in spec["method"]
    else:
        assert spec["method"]["lora"] == {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all"]}
        assert spec["method"]["type"] == ("qlora" if lf.get("quantization_bit") else "lora")
    # and through -o FILE, the same text `kubetune validate` accepts
    out = tmp_path / "job.yaml"
    args = ["--dataset-info", str(DATASET_INFO), "--output-uri", "s3://models/x/", "-o", str(out)]
    assert run_import(config, *args, capsys=capsys)[0] == 0
    assert main(["validate", str(out)]) == 0


@pytest.mark.parametrize("name", sorted(STAGE_EXAMPLES))
def test_dpo_kto_and_pretrain_examples_import_with_their_stage_data_and_settings(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = LF / "examples" / "train_lora" / name
    doc = imported(config, capsys)
    lf = yaml.safe_load(config.read_text())
    spec = doc["spec"]
    info = json.loads(DATASET_INFO.read_text())[lf["dataset"]]
    [dataset] = spec["datasets"]
    assert spec["stage"] == STAGE_EXAMPLES[name] == lf["stage"]
    assert dataset["source"] == "s3://datasets/lf/" + info["file_name"]
    assert dataset["format"] == info.get("formatting", "alpaca")
    # dataset_info columns, camelCase: ranking pairs keep chosen/rejected, KTO its tag column, pt its text.
    expected = {"kto_tag": "ktoTag"}
    assert dataset["columns"] == {expected.get(k, k): v for k, v in info["columns"].items()}
    if name == "qwen3_lora_dpo.yaml":
        assert spec["preference"] == {"beta": lf["pref_beta"], "loss": "sigmoid"}
    if name == "qwen3_lora_kto.yaml":
        assert spec["preference"] == {"beta": lf["pref_beta"]}
        # LLaMA-Factory's batch of 1 x 8 becomes TRL's minimum of 2 x 4: the same effective batch.
        assert lf["per_device_train_batch_size"] * lf["gradient_accumulation_steps"] == 8
        assert (spec["training"]["perDeviceBatchSize"], spec["training"]["gradientAccumulationSteps"]) == (2, 4)
    if name == "qwen3_lora_pretrain.yaml":
        assert "preference" not in spec and "template" not in lf
    out = tmp_path / "job.yaml"
    args = ["--dataset-info", str(DATASET_INFO), "--output-uri", "s3://models/x/", "-o", str(out)]
    assert run_import(config, *args, capsys=capsys)[0] == 0
    assert main(["validate", str(out)]) == 0


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_examples_asking_for_what_kubetune_does_not_train_exit_1_naming_the_key(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset-info", str(DATASET_INFO), "--output-uri", "s3://models/x/"]
    code, out, err = run_import(
        LF / "examples" / ("train_full" if "full" in name else "train_lora") / name, *args, capsys=capsys
    )
    assert code == 1 and out == ""
    assert REFUSED[name] in err


def test_deepspeed_and_qlora_examples(capsys: pytest.CaptureFixture[str]) -> None:
    ds3 = imported(LF / "examples/train_lora/qwen3_lora_sft_ds3.yaml", capsys)["spec"]["training"]
    assert ds3["deepspeed"] == {"stage": "zero3"}
    qlora = imported(LF / "examples/train_qlora/qwen3_lora_sft_bnb_npu.yaml", capsys)["spec"]["method"]
    assert qlora["quantization"] == {"bits": 4, "doubleQuant": False}


def write(tmp_path: Path, text: str, info: dict[str, Any] | None = None) -> list[str]:
    config = tmp_path / "lf.yaml"
    config.write_text(text)
    info_path = tmp_path / "dataset_info.json"
    info_path.write_text(json.dumps(info or {"mine": {"file_name": "mine.jsonl"}}))
    return [str(config), "--dataset-info", str(info_path), "--output-uri", "s3://models/x/"]


MINIMAL = "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\ndo_train: true\ndataset: mine\n"


def test_llamafactory_defaults_are_written_where_ours_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["import", "llamafactory", *write(tmp_path, MINIMAL)])
    out = capsys.readouterr().out
    assert code == 0
    spec = yaml.safe_load(out)["spec"]
    # LLaMA-Factory's finetuning_args (lora_rank 8, lora_alpha = 2 x rank, lora_dropout 0) and
    # transformers' TrainingArguments defaults (lr 5e-5, batch 8, no accumulation, linear, no warm-up,
    # logging and saving every 500 steps); no bf16/fp16 means fp32.
    assert spec["method"] == {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}  # type: lora is the default in both
    training = spec["training"]
    assert training["learningRate"] == 5e-5 and training["perDeviceBatchSize"] == 8
    assert training["gradientAccumulationSteps"] == 1 and training["lrScheduler"] == "linear"
    assert training["warmupSteps"] == 0 and "warmupRatio" not in training
    assert training["loggingSteps"] == 500 and training["checkpointEverySteps"] == 500
    assert training["precision"] == "fp32"
    assert spec["datasets"] == [
        {
            "source": str(tmp_path / "mine.jsonl"),
            "format": "alpaca",
            # LLaMA-Factory's columns for an entry that maps none, and nothing else read.
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
            "onlyMappedColumns": True,
        }
    ]
    assert "learningRate: 5.0e-05  # LLaMA-Factory's default" in out
    assert "alpha: 16  # LLaMA-Factory's default: 2 x rank" in out


def test_given_values_win_and_keys_without_equivalent_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL + (
        "lora_rank: 32\nlora_target: q_proj, v_proj\nwarmup_ratio: 0.1\nbf16: true\nreport_to: wandb\n"
        "ddp_timeout: 9000\nsome_new_key: 1\nmax_steps: 100\nnum_train_epochs: 2.0\ntrain_on_prompt: true\n"
        "save_only_model: true\ntokenized_path: saves/tok\n"
    )
    assert main(["import", "llamafactory", *write(tmp_path, text)]) == 0
    out = capsys.readouterr().out
    spec = yaml.safe_load(out)["spec"]
    assert spec["method"]["lora"] == {"rank": 32, "alpha": 64, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}
    assert spec["training"]["warmupRatio"] == 0.1 and "warmupSteps" not in spec["training"]
    assert spec["training"]["maxSteps"] == 100 and "epochs" not in spec["training"]
    assert spec["training"]["precision"] == "bf16" and spec["data"]["trainOn"] == "all"
    header = out.split("apiVersion:")[0]
    assert "#   save_only_model: true" in header and "#   tokenized_path: saves/tok" in header
    assert spec["training"]["reportTo"] == ["wandb"] and spec["training"]["ddpTimeoutSeconds"] == 9000
    assert "#   some_new_key: 1  (not known to this importer)" in header


def test_datasets_resolve_through_dataset_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = {
        "chat": {
            "file_name": "chat.json",
            "formatting": "sharegpt",
            "num_samples": 50,
            "columns": {"system": "sys", "tools": "tools"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        },
        "hub": {"hf_hub_url": "org/alpaca", "columns": {"prompt": "q", "response": "a"}},
        "held_out": {"file_name": "dev.jsonl"},
    }
    text = MINIMAL.replace("dataset: mine", "dataset: chat, hub\neval_dataset: held_out\nmax_samples: 100")
    args = [*write(tmp_path, text, info), "--data-uri", "s3://bkt/p"]
    assert main(["import", "llamafactory", *args]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["spec"]["datasets"] == [
        {
            "source": "s3://bkt/p/chat.json",
            "format": "sharegpt",
            "columns": {"messages": "conversations", "system": "sys", "tools": "tools"},
            "tags": {"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant"},
            "onlyMappedColumns": True,
            "maxSamples": 50,
        },
        {
            "source": "org/alpaca",
            "format": "alpaca",
            "columns": {"prompt": "q", "response": "a"},  # an `input` column is not read, as in LLaMA-Factory
            "onlyMappedColumns": True,
            "maxSamples": 100,
        },
        {
            "source": "s3://bkt/p/dev.jsonl",
            "format": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
            "onlyMappedColumns": True,
            "maxSamples": 100,
            "split": "validation",
        },
    ]
    assert "maxSamples: 50  # num_samples: LLaMA-Factory draws that many rows at random" in out


@pytest.mark.parametrize(
    ("extra", "info", "message"),
    [
        ("finetuning_type: freeze\n", None, "finetuning_type: 'freeze' is not supported"),
        ("finetuning_type: oft\n", None, "finetuning_type: 'oft' is not supported"),
        ("quantization_bit: 4\nquantization_method: hqq\n", None, "quantization_method: only bnb"),
        ("deepspeed: my_ds.json\n", None, "deepspeed: 'my_ds.json' not found"),
        ("lr_scheduler_type: cosine_with_restarts\n", None, "lr_scheduler_type: 'cosine_with_restarts'"),
        ("template: chatglm3\n", None, "template: 'chatglm3' is not a template kubetune has"),
        ("template: qwen3\nenable_thinking: false\n", None, "enable_thinking: false with the reasoning template"),
        ("use_galore: true\n", None, "use_galore: is not supported"),
        (
            "",
            {"mine": {"file_name": "p.json", "ranking": True}},
            "ranking data trains with stage: dpo (the config has sft)",
        ),
        ("", {"mine": {"file_name": "k.json", "columns": {"kto_tag": "label"}}}, "kto_tag data trains with stage: kto"),
        ("", {"mine": {"file_name": "v.json", "columns": {"videos": "v"}}}, "multimodal data is not supported"),
        ("", {"mine": {"ms_hub_url": "x/y"}}, "needs file_name or hf_hub_url"),
    ],
)
def test_what_kubetune_cannot_train_exits_1_naming_the_key(
    extra: str, info: dict[str, Any] | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "llamafactory", *write(tmp_path, MINIMAL + extra, info)]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_a_relative_output_dir_needs_output_uri(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = write(tmp_path, MINIMAL + "output_dir: saves/x\n")[:3]
    assert main(["import", "llamafactory", *args]) == 1
    assert "output_dir: 'saves/x' is a path relative" in capsys.readouterr().err
    args = write(tmp_path, MINIMAL + "output_dir: /mnt/out/x\n")[:3]
    assert main(["import", "llamafactory", *args]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["output"] == {"uri": "/mnt/out/x"}


def test_a_duplicate_key_is_refused_by_the_one_yaml_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["import", "llamafactory", *write(tmp_path, MINIMAL + "learning_rate: 1e-4\nlearning_rate: 2e-4\n")]) == 1
    )
    assert "duplicate key 'learning_rate'" in capsys.readouterr().err


def test_resources_come_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "llamafactory", *write(tmp_path, MINIMAL), "--nodes", "2", "--gpus-per-node", "8"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["resources"] == {"nodes": 2, "gpusPerNode": 8}


def test_a_value_out_of_our_ranges_is_reported_by_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "llamafactory", *write(tmp_path, MINIMAL + "learning_rate: 2.0\n")]) == 1
    assert "spec.training.learningRate" in capsys.readouterr().err


def test_a_key_whose_meaning_differs_is_commented_on_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL + "packing: true\ncutoff_len: 1024\ndeepspeed: examples/deepspeed/ds_z2_offload_config.json\n"
    assert main(["import", "llamafactory", *write(tmp_path, text)]) == 0
    out = capsys.readouterr().out
    assert "packing: true  # packed examples never attend to each other" in out
    assert "cutoffLen: 1024  # truncation keeps or drops whole turns" in out
    assert "stage: zero2  # the DeepSpeed config is generated" in out
    assert yaml.safe_load(out)["spec"]["training"]["deepspeed"] == {"stage": "zero2", "offload": "cpu"}


def test_a_deepspeed_json_that_is_found_travels_in_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    own = {"zero_optimization": {"stage": 3, "sub_group_size": 1e9}, "train_micro_batch_size_per_gpu": "auto"}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "ds_z3_config.json").write_text(json.dumps(own))
    args = write(tmp_path, MINIMAL + "deepspeed: ds/ds_z3_config.json\n")
    assert main(["import", "llamafactory", *args]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["spec"]["training"]["deepspeed"] == {"config": own}
    assert "# from ds/ds_z3_config.json, used as is" in out


def test_trackers_workers_and_timeout_map_to_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        MINIMAL + "report_to: [tensorboard, swanlab]\nddp_timeout: 180000000\n"
        "dataloader_num_workers: 4\npreprocessing_num_workers: 16\n"
    )
    assert main(["import", "llamafactory", *write(tmp_path, text)]) == 0
    out = capsys.readouterr().out
    spec = yaml.safe_load(out)["spec"]
    assert spec["training"]["reportTo"] == ["tensorboard"]
    assert spec["training"]["ddpTimeoutSeconds"] == 180000000
    assert spec["training"]["dataloaderWorkers"] == 4
    assert spec["data"]["preprocessingWorkers"] == 16
    assert "swanlab  (kubetune reports to tensorboard, wandb, mlflow)" in out
    assert main(["import", "llamafactory", *write(tmp_path, MINIMAL + "report_to: none\n")]) == 0
    assert "reportTo" not in yaml.safe_load(capsys.readouterr().out)["spec"].get("training", {})


@pytest.mark.parametrize(
    ("stage", "extra", "message"),
    [
        ("ppo", "", "stage: 'ppo' is not supported: kubetune trains sft, dpo, kto, pt"),
        (
            "dpo",
            "pref_loss: kto_pair\n",
            "pref_loss: 'kto_pair' is not supported: stage dpo trains sigmoid, hinge, ipo, orpo, simpo",
        ),
    ],
)
def test_stages_and_preference_losses_kubetune_does_not_train_exit_1_naming_the_key(
    stage: str, extra: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = {"mine": {"file_name": "p.json", "ranking": True}}
    config = MINIMAL.replace("stage: sft", f"stage: {stage}") + extra
    assert main(["import", "llamafactory", *write(tmp_path, config, info)]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_preference_settings_map_to_the_stage_that_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dpo = MINIMAL.replace("stage: sft", "stage: dpo") + "pref_beta: 0.2\npref_loss: ipo\npref_ftx: 0.5\n"
    info = {"mine": {"file_name": "p.json", "ranking": True}}
    assert main(["import", "llamafactory", *write(tmp_path, dpo, info)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["preference"] == {
        "beta": 0.2,
        "loss": "ipo",
        "sftWeight": 0.5,
    }
    kto = (
        MINIMAL.replace("stage: sft", "stage: kto")
        + "pref_loss: sigmoid\nkto_chosen_weight: 1.5\nkto_rejected_weight: 0.5\nper_device_train_batch_size: 4\n"
    )
    info = {"mine": {"file_name": "k.json", "formatting": "sharegpt", "columns": {"kto_tag": "label"}}}
    assert main(["import", "llamafactory", *write(tmp_path, kto, info)]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)["spec"]
    # pref_loss is not read by LLaMA-Factory's KTO, nor written for it.
    assert spec["preference"] == {"desirableWeight": 1.5, "undesirableWeight": 0.5}
    assert spec["training"]["perDeviceBatchSize"] == 4
    assert spec["datasets"][0]["columns"] == {"ktoTag": "label", "messages": "conversations"}
