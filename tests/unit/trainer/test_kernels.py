"""spec.training.kernels: what auto picks, refusals that name the field, and the same loss as the plain path."""

from __future__ import annotations

import importlib.util

import pytest

from kubetune.api.v1alpha1 import KernelsSpec
from kubetune.trainer.failures import ExitCode, TrainerError
from kubetune.trainer.model import Kernels, liger_families, resolve_kernels

CUDA = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()
FLASH = importlib.util.find_spec("flash_attn") is not None
LIGER = importlib.util.find_spec("liger_kernel") is not None


def test_plain_kernels_on_cpu():
    assert resolve_kernels(KernelsSpec(), "cpu", "llama") == Kernels(attention="sdpa", liger=False)
    assert resolve_kernels(KernelsSpec(attention="eager", liger="off"), "cpu", "llama") == Kernels("eager", False)
    assert resolve_kernels(KernelsSpec(attention="sdpa"), "cuda", "llama").attention == "sdpa"


@pytest.mark.skipif(FLASH, reason="flash-attn is installed here: the refusal for its absence cannot be shown")
def test_auto_attention_on_a_gpu_without_flash_attn_is_sdpa_and_asking_for_it_fails_naming_the_field():
    assert resolve_kernels(KernelsSpec(), "cuda", "llama").attention == "sdpa"
    with pytest.raises(TrainerError) as err:
        resolve_kernels(KernelsSpec(attention="flash_attention_2"), "cuda", "llama")
    assert err.value.code is ExitCode.CONFIG
    assert "spec.training.kernels.attention: flash_attention_2 cannot run here (flash-attn is not installed)" in str(
        err.value
    )


def test_flash_attention_without_a_gpu_fails_naming_the_field():
    with pytest.raises(TrainerError, match=r"spec\.training\.kernels\.attention: flash_attention_2 cannot run here"):
        resolve_kernels(KernelsSpec(attention="flash_attention_2"), "cpu", "llama")


def test_liger_on_where_it_cannot_run_fails_naming_the_field():
    with pytest.raises(TrainerError, match=r"spec\.training\.kernels\.liger: on cannot run here") as err:
        resolve_kernels(KernelsSpec(liger="on"), "cpu", "llama")
    assert err.value.code is ExitCode.CONFIG
    assert resolve_kernels(KernelsSpec(liger="auto"), "cpu", "llama").liger is False


@pytest.mark.skipif(not LIGER, reason="liger-kernel is not installed: its family table cannot be read")
def test_liger_auto_follows_the_family_table():
    assert "llama" in liger_families()
    assert resolve_kernels(KernelsSpec(), "cuda", "llama").liger is True
    assert resolve_kernels(KernelsSpec(), "cuda", "no-such-family").liger is False
    with pytest.raises(TrainerError, match="does not support the model family 'no-such-family'"):
        resolve_kernels(KernelsSpec(liger="on"), "cuda", "no-such-family")


def _loss(model_dir, attention, device="cpu", dtype=None, liger=False):
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.model import apply_liger

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention, dtype=dtype or torch.float32)
    if liger:
        apply_liger(model)
    model.to(device)
    torch.manual_seed(1)
    ids = torch.randint(3, 400, (2, 48), device=device)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # a padded row: the masks must agree across kernels too
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def test_sdpa_gives_the_same_loss_as_eager(tiny_model_dir):
    assert _loss(tiny_model_dir, "sdpa") == pytest.approx(_loss(tiny_model_dir, "eager"), rel=1e-5)


@pytest.mark.skipif(not (CUDA and FLASH), reason="flash_attention_2 needs a CUDA GPU and flash-attn")
def test_flash_attention_2_gives_the_same_loss_as_sdpa(tiny_model_dir):
    import torch

    bf16 = torch.bfloat16
    flash = _loss(tiny_model_dir, "flash_attention_2", "cuda", bf16)
    assert flash == pytest.approx(_loss(tiny_model_dir, "sdpa", "cuda", bf16), rel=2e-2)


@pytest.mark.skipif(not (CUDA and LIGER), reason="Liger's Triton kernels need a CUDA GPU and liger-kernel")
def test_liger_gives_the_same_loss_as_the_plain_path(tiny_model_dir):
    assert _loss(tiny_model_dir, "sdpa", "cuda", liger=True) == pytest.approx(
        _loss(tiny_model_dir, "sdpa", "cuda"), rel=1e-3
    )


def _run_config(tmp_path, model_dir, kernels):
    import yaml

    from kubetune.trainer.config import Accelerator, load_run_config

    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "k"},
        "spec": {
            "model": {"source": str(model_dir)},
            "datasets": [{"source": str(tmp_path / "d.jsonl")}],
            "output": {"uri": str(tmp_path / "out")},
            "method": {"type": "full"},
            "training": {"kernels": kernels, "precision": "fp32"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return load_run_config(
        str(path), {"KUBETUNE_CACHE_DIR": str(tmp_path / "cache")}, Accelerator(cuda=False, bf16=False)
    )


def test_load_model_uses_the_kernels_of_the_spec(tiny_model_dir, tmp_path):
    from kubetune.trainer.model import load_model

    model = load_model(tiny_model_dir, _run_config(tmp_path, tiny_model_dir, {"attention": "eager"}))
    assert model.config._attn_implementation == "eager"
    with pytest.raises(TrainerError, match=r"spec\.training\.kernels\.liger"):
        load_model(tiny_model_dir, _run_config(tmp_path, tiny_model_dir, {"liger": "on"}))
