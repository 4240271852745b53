"""The full flow against a real S3 server: model and data from S3, train LoRA, merge, check, upload,
then a fresh download must match the manifest and the merged model must match base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kubetune.trainer.manifest import verify_local_copy
from tests.integration.trainer.helpers import job, losses, progress_events, run_trainer, trainer_env, write_job

pytestmark = pytest.mark.integration


def _upload_tree(client, bucket: str, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


def _download_tree(client, bucket: str, prefix: str, dest: Path) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :]
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(dest / rel))
            keys.append(rel)
    return sorted(keys)


def test_lora_from_s3_to_s3(s3_server, tiny_model_dir, chat_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from kubetune.trainer.templates import named_jinja

    client = s3_server.client()
    s3_server.make_bucket("kt-flow")
    _upload_tree(client, "kt-flow", tiny_model_dir, "models/tiny")
    client.upload_file(str(chat_data), "kt-flow", "data/chat.jsonl")
    manifest = job(
        "flow",
        "s3://kt-flow/models/tiny/",
        "s3://kt-flow/data/chat.jsonl",
        "s3://kt-flow/runs/flow/",
        data={"validationSplit": 0.1},
        storage={"addressingStyle": "path"},
        training={"gradientCheckpointing": True},  # the spec's default, on the LoRA path
    )
    run = run_trainer(write_job(tmp_path / "job.yaml", manifest), trainer_env(tmp_path, s3_server.env()))
    assert run.code == 0, run.stderr[-4000:]
    assert not (tmp_path / "termination-log").exists()

    out = tmp_path / "download"
    keys = _download_tree(client, "kt-flow", "runs/flow", out)
    result = json.loads((out / "manifest.json").read_text())
    # A fresh download matches the manifest byte for byte.
    assert verify_local_copy(out, result) == []
    listed = {f["path"] for f in result["files"]}
    assert {
        "model/model.safetensors",
        "model/config.json",
        "model/generation_config.json",
        "model/tokenizer.json",
        "model/chat_template.jinja",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "loss.png",
    } <= listed
    assert result["method"] == "lora" and result["baseModel"]["source"] == "s3://kt-flow/models/tiny/"
    assert result["dataReport"]["rowsRead"] == 64
    assert result["metrics"]["steps"] == 30 and result["metrics"]["evalLoss"] > 0
    assert "data_report.json" in keys and "progress.jsonl" in keys

    # Checkpoints: only the newest keepCheckpoints, each with its COMPLETE marker.
    checkpoints = sorted({k.split("/")[1] for k in keys if k.startswith("checkpoints/")})
    assert checkpoints == ["checkpoint-20", "checkpoint-30"]
    assert all(f"checkpoints/{c}/COMPLETE" in keys for c in checkpoints)

    # Progress: the loss fell, tokens/s and ETA were reported, the last event is done.
    events = progress_events(out / "progress.jsonl")
    train_losses = losses(events)
    assert train_losses[-1] < train_losses[0]
    assert any(e.get("tokensPerSecond", 0) > 0 and "eta" in e for e in events)
    assert any("evalLoss" in e for e in events)
    assert events[-1]["stage"] == "done" and events[-1]["display"] == "100% 30/30"

    # The merged model gives the adapter model's logits; the adapter did change the base.
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    assert tokenizer.chat_template == named_jinja("chatml")
    eos = GenerationConfig.from_pretrained(str(out / "model")).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ([eos] if isinstance(eos, int) else eos)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 plus 4?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(str(out / "model")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        adapter_logits = adapted(input_ids=ids).logits
        merged_logits = merged(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2


@pytest.mark.parametrize("failure", ["wrong-credentials", "unreachable-s3", "missing-model"])
def test_bad_input_fails_with_one_line(failure, s3_server, tiny_model_dir, chat_data, tmp_path):
    s3_server.make_bucket("kt-fail")
    env = s3_server.env()
    model, code, says = str(tiny_model_dir), 3, "access denied"
    if failure == "wrong-credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif failure == "unreachable-s3":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
        env["KUBETUNE_STORAGE_RETRY_S"] = "3"  # retried this long, then retryable (8, the pod's 143)
        code, says = 8, "unreachable"
    else:
        model, code, says = str(tmp_path / "no-such-model"), 4, "no model at"
    manifest = job("fail", model, str(chat_data), f"s3://kt-fail/{failure}/", storage={"addressingStyle": "path"})
    run = run_trainer(write_job(tmp_path / "job.yaml", manifest), trainer_env(tmp_path, env))
    assert run.code == code, run.stderr[-3000:]
    lines = run.error_lines()
    assert len(lines) == 1 and says in lines[0], run.stderr[-3000:]
    assert (tmp_path / "termination-log").read_text().strip() == lines[0]
    listing = s3_server.client().list_objects_v2(Bucket="kt-fail", Prefix=f"{failure}/manifest.json")
    assert listing.get("KeyCount", 0) == 0


def test_nan_loss_stops_without_a_manifest(tiny_model_dir, chat_data, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-model"
    broken.mkdir()
    for path in tiny_model_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    output = tmp_path / "out"
    manifest = job("nan", str(broken), str(chat_data), str(output))
    run = run_trainer(write_job(tmp_path / "job.yaml", manifest), trainer_env(tmp_path))
    assert run.code == 6, run.stderr[-3000:]
    assert "training loss is nan at step 5" in run.error_lines()[0]
    assert not (output / "manifest.json").exists() and not (output / "model").exists()
    events = progress_events(output / "progress.jsonl")
    assert events[-1]["stage"] == "failed" and events[-1]["message"] == run.error_lines()[0]


def test_same_spec_and_seed_give_the_same_model_bit_for_bit(tiny_model_dir, chat_data, tmp_path):
    """training.seed covers the adapter's initialisation (drawn before the Trainer seeds), not only
    shuffling and dropout."""
    from safetensors.torch import load_file

    adapters = []
    for attempt in ("first", "second"):
        output = tmp_path / attempt
        spec = job(
            "seeded",
            str(tiny_model_dir),
            str(chat_data),
            str(output),
            method={"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.1}},
            training={"maxSteps": 3, "checkpointEverySteps": 3},
            output={"uri": str(output), "merge": False},
        )
        run = run_trainer(write_job(tmp_path / f"{attempt}.yaml", spec), trainer_env(tmp_path / attempt))
        assert run.code == 0, run.stderr[-3000:]
        adapters.append(load_file(str(output / "adapter" / "adapter_model.safetensors")))
    first, second = adapters
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
