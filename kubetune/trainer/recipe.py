"""The training recipe, top to bottom: load -> data -> train -> export -> upload.

Every process torchrun starts runs `run(config_path)`. All ranks load, prepare data and train
(the HF/TRL loop, DeepSpeed when asked); rank 0 alone merges, checks and uploads, and writes the
manifest last. A failure anywhere becomes one line, an exit code and a `failed` progress report
(see `failures.py`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubetune.trainer.checkpoints import (
    AlreadyTrained,
    CheckpointSync,
    Preemption,
    StopWhenFinished,
    barrier,
    restore_latest,
    restored_checkpoint,
    run_identity,
)
from kubetune.trainer.collectives import CollectiveTimeouts
from kubetune.trainer.config import RunConfig, load_run_config, parse_size
from kubetune.trainer.export import Probe
from kubetune.trainer.failures import ExitCode, TrainerError, classify, write_failure
from kubetune.trainer.launch import die_with_parent
from kubetune.trainer.manifest import finished_manifest
from kubetune.trainer.preflight import check_inputs, check_output
from kubetune.trainer.progress import ProgressCallback, ProgressSink, progress_event

log = logging.getLogger("kubetune.trainer")


@dataclass
class Trained:
    trainer: Any
    prepared: Any
    tokenizer: Any
    base_dir: Path
    metrics: dict[str, Any]
    probe: Probe


def run(config_path: str) -> int:
    """The whole job in this process. Returns the exit code."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun (it sets this)
        die_with_parent()  # torchrun killed outright must not leave this rank training on its own
    _setup_logging()
    preemption = Preemption()
    preemption.install()
    cfg: RunConfig | None = None
    sink: ProgressSink | None = None
    try:
        cfg = load_run_config(config_path)
        if cfg.dist.is_main:
            # Before reading the manifest, so that an unusable output is named by its spec field.
            check_output(cfg)
        if finished_manifest(cfg.output.manifest, cfg.spec, cfg.storage) is not None:
            # Finished before (perhaps stopped after its manifest): training again would only delete
            # and rewrite the same model, and its inputs need not be there any more.
            log.info("already finished: %s records this spec's result; nothing to do", cfg.output.manifest)
            return 0
        if cfg.dist.is_main:
            check_inputs(cfg)
            sink = ProgressSink(cfg.work_dir / "progress.jsonl", cfg.output.progress, cfg.storage)
            sink.start()
        log.info("kubetune trainer: %s", json.dumps(cfg.summary()))
        timeouts = CollectiveTimeouts(cfg.spec.training.ddp_timeout_seconds)
        trained = train(cfg, sink, preemption, timeouts)
        if cfg.dist.is_main:
            export_and_upload(cfg, trained, sink)
        if cfg.dist.world_size > int(os.environ.get("LOCAL_WORLD_SIZE", cfg.dist.world_size)):
            # Every node stays until rank 0 has exported: a node whose workers left early would have
            # its torchrun leave too, after a few minutes, and take the rendezvous store with it if
            # it hosts it, failing the node still exporting. (One node: one torchrun, nothing to keep.)
            with timeouts.waiting_for_io():
                barrier()
        if cfg.dist.is_local_main:
            _clean_work_dir(cfg)
        return 0
    except BaseException as exc:  # one line, one code, whatever went wrong
        err = classify(exc)
        if err.code is ExitCode.INTERNAL:
            log.exception("unexpected failure")
        if sink is not None:
            sink.close_bar()
        write_failure(err)
        if sink is not None:  # rank 0
            stage = "training" if err.code is ExitCode.PREEMPTED else "failed"
            sink.emit(progress_event(stage, message=err.line), force=True)
        return int(err.code)
    finally:
        if sink is not None:
            sink.close()
        _shutdown_distributed()


# --------------------------------------------------------------------------------------------
# Load, data, train (every rank)
# --------------------------------------------------------------------------------------------


def train(cfg: RunConfig, sink: ProgressSink | None, preemption: Preemption, timeouts: CollectiveTimeouts) -> Trained:
    from transformers import PrinterCallback

    from kubetune.trainer.data import prepare_data
    from kubetune.trainer.model import fetch_model, fetch_reference, load_model, load_reference, load_tokenizer
    from kubetune.trainer.stages import make_trainer

    args = training_arguments(cfg)  # initialises the process group (gloo on CPU, nccl on GPU)
    if args.deepspeed and cfg.dist.world_size > 1:
        import deepspeed

        # ZeRO-3 partitions weights inside from_pretrained; DeepSpeed's own comm must know the world by then.
        deepspeed.init_distributed(dist_backend=_backend(cfg))
    _stage(sink, "preparing", "fetching the base model")
    with args.main_process_first(local=True, desc="model download"):
        base_dir = fetch_model(cfg)
        reference_dir = fetch_reference(cfg)
    tokenizer = load_tokenizer(base_dir, cfg.spec.model.trust_remote_code)

    _stage(sink, "preparing", "preparing data")
    prepared = prepare_data(
        cfg.spec,
        tokenizer,
        cache_dir=cfg.cache_dir / "data",
        cache_uri=cfg.output.cache,
        rank=cfg.dist.rank,
        world_size=cfg.dist.world_size,
        storage=cfg.storage,
    )
    probe = _probe(cfg, prepared.template, tokenizer)  # before apply_to: exactly what tokenization saw
    prepared.template.apply_to(tokenizer)  # training and export share one tokenizer setup
    if sink is not None:
        _publish_data_report(cfg, prepared, sink)

    resume = _restore_checkpoint(cfg)
    if sink is not None and resume is not None:
        sink.continue_history(int(resume.name.split("-")[1]))
    model = load_model(base_dir, cfg)
    ref_model = load_reference(reference_dir, cfg, model) if reference_dir is not None else None
    sync = CheckpointSync(
        cfg.output.checkpoints,
        cfg.spec.training.keep_checkpoints,
        cfg.storage,
        cfg.dist,
        preemption,
        run_identity(cfg.spec),
        timeouts=timeouts,
    )
    progress = ProgressCallback(sink)
    trainer = make_trainer(cfg, model, args, tokenizer, prepared, [progress, sync, StopWhenFinished()], ref_model)
    trainer.remove_callback(PrinterCallback)  # our events replace its raw dict prints
    timeouts.training()  # from here on the ranks wait only for each other's compute
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except AlreadyTrained:
        log.info("%s is the last step: training already finished, exporting it", resume)
        progress.on_train_end(args, trainer.state, trainer.control)
        result = None
    if preemption.requested:
        raise TrainerError(
            ExitCode.PREEMPTED,
            f"stopped by SIGTERM at step {trainer.state.global_step}",
            "a checkpoint was saved; the restarted pod resumes from it",
        )
    metrics = _final_metrics(trainer, result, progress, resume)
    trained = cfg.work_dir / "trained"
    shutil.rmtree(trained, ignore_errors=True)  # the work dir is per node, so no rank races this
    # Collective under ZeRO-3 (weights are gathered), so every rank takes part.
    trainer.save_model(str(trained))
    with timeouts.waiting_for_io():  # rank 0 writes the whole model to disk
        barrier()
    return Trained(trainer, prepared, tokenizer, base_dir, metrics, probe)


def training_arguments(cfg: RunConfig) -> Any:
    from trl import SFTConfig

    from kubetune.trainer.deepspeed import write_config

    t = cfg.spec.training
    eval_every = t.eval_every_steps or t.checkpoint_every_steps
    # transformers 5: warmup_steps below 1 is a ratio of the total steps.
    warmup = t.warmup_steps if t.warmup_steps is not None else (t.warmup_ratio if t.warmup_ratio is not None else 0.03)
    length: dict[str, Any] = {"max_steps": t.max_steps} if t.max_steps else {"num_train_epochs": t.resolved_epochs}
    has_eval = cfg.spec.data.validation_split > 0 or any(d.split == "validation" for d in cfg.spec.datasets)
    return SFTConfig(
        output_dir=str(cfg.work_dir / "checkpoints"),
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=str(t.lr_scheduler),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        use_cpu=cfg.device == "cpu",
        ddp_backend=_backend(cfg),
        ddp_find_unused_parameters=False,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        deepspeed=write_config(t.deepspeed, cfg.work_dir),
        save_strategy="steps",
        save_steps=t.checkpoint_every_steps,
        save_total_limit=t.keep_checkpoints,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_every if has_eval else None,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach our check, not be averaged away
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # keep position_ids for packed rows
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=t.cutoff_len,
        packing=False,  # our data pipeline packs; TRL must not repack
        dataloader_num_workers=t.dataloader_workers,
        disable_tqdm=True,  # our own bar (rank 0)
        report_to=_trackers(cfg),
        # The process group starts with the long timeout: the first collectives wait for the model
        # download and data preparation. Training shortens it (collectives.py).
        ddp_timeout=CollectiveTimeouts(t.ddp_timeout_seconds).waiting_s,
        warmup_steps=warmup,
        **length,
    )


# The packages the Trainer's integration for each tracker imports (any one of them).
TRACKER_PACKAGES = {"tensorboard": "tensorboardX tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _trackers(cfg: RunConfig) -> list[str] | str:
    """`report_to` for the Trainer; TensorBoard writes where upload_outputs finds its event files."""
    trackers = [str(r) for r in cfg.spec.training.report_to]
    for name in trackers:
        package = TRACKER_PACKAGES[name]
        if not any(importlib.util.find_spec(p) for p in package.split()):
            raise TrainerError(
                ExitCode.CONFIG,
                f"training.reportTo: {name} needs the Python package {package.split()[0]}, which this image lacks",
                f"use an image with it installed (spec.image), or remove {name} from reportTo",
            )
    if "tensorboard" in trackers:
        # The Trainer's TensorBoard callback takes its directory from this variable only.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(cfg))
    return trackers or "none"


def tensorboard_dir(cfg: RunConfig) -> Path:
    return cfg.work_dir / "tensorboard"


def _backend(cfg: RunConfig) -> str | None:
    if cfg.dist.world_size == 1:
        return None  # a single process needs no process group
    return "nccl" if cfg.device == "cuda" else "gloo"


def _restore_checkpoint(cfg: RunConfig) -> Path | None:
    """One process per node downloads the newest complete checkpoint; every rank then resumes from it."""
    local = cfg.work_dir / "checkpoints"
    if cfg.dist.is_local_main:
        restore_latest(cfg.output.checkpoints, local, cfg.storage, run_identity(cfg.spec))
    barrier()
    return restored_checkpoint(local)


def _final_metrics(trainer: Any, result: Any, progress: ProgressCallback, resume: Path | None) -> dict[str, Any]:
    """`result` is None when the resumed checkpoint was already the last step (nothing trained now)."""
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "trainLoss": progress.last_loss if progress.last_loss is not None else (logged[-1] if logged else None),
        "meanTrainLoss": result.training_loss if result is not None else None,
        "tokensSeen": trainer.state.num_input_tokens_seen,
        "runtimeSeconds": round(result.metrics.get("train_runtime", 0.0), 2) if result is not None else 0.0,
        "resumedFrom": resume.name if resume else None,
    }
    if trainer.eval_dataset is not None:
        metrics["evalLoss"] = trainer.evaluate()["eval_loss"]
    return metrics


def _publish_data_report(cfg: RunConfig, prepared: Any, sink: ProgressSink) -> None:
    from kubetune.storage import write_bytes

    report = prepared.report.to_dict()
    write_bytes(cfg.output.data_report, (json.dumps(report, indent=2) + "\n").encode(), cfg.storage)
    sink.report(data_report={**prepared.report.summary(), "uri": cfg.output.data_report})


# --------------------------------------------------------------------------------------------
# Export and upload (rank 0)
# --------------------------------------------------------------------------------------------


def export_and_upload(cfg: RunConfig, trained: Trained, sink: ProgressSink | None) -> None:
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from kubetune.storage import delete_prefix
    from kubetune.trainer.manifest import build_manifest, result_identity, write_manifest

    # Reloading for the checks must be a plain load on this process, not a ZeRO-3 partitioned one.
    unset_hf_deepspeed_config()
    # A manifest from an earlier attempt must never vouch for the files about to be replaced.
    delete_prefix(cfg.output.manifest, cfg.storage)

    _stage(sink, "exporting", "merging and checking the model")
    exported = export_model(cfg, trained)
    sample = check_export(cfg, trained, exported)

    _stage(sink, "uploading", "uploading model, adapter and reports")
    uploaded, outputs = upload_outputs(cfg, exported, sink)
    manifest = build_manifest(
        root=cfg.output.root,
        files=uploaded,
        job={"name": cfg.job.name, "namespace": cfg.job.namespace, "uid": cfg.job.metadata.uid},
        identity=result_identity(cfg.spec),
        base_model={"source": cfg.spec.model.source, "revision": cfg.spec.model.revision},
        method=cfg.method,
        template=str(cfg.spec.template),
        outputs=outputs,
        metrics={**trained.metrics, "exportSample": sample},
        data_report=trained.prepared.report.summary(),
    )
    write_manifest(cfg.output.manifest, manifest, cfg.storage)  # last: the completion marker

    if sink is not None:
        sink.report(outputs=outputs)
        total = trained.metrics["steps"]
        sink.stage(
            "done",
            f"model ready at {outputs.get('model', outputs.get('adapter'))}",
            step=total,
            total=total,
            loss=trained.metrics.get("trainLoss"),
            evalLoss=trained.metrics.get("evalLoss"),
        )
    log.info("done: manifest at %s", cfg.output.manifest)


def export_model(cfg: RunConfig, trained: Trained) -> dict[str, Path]:
    """Local export directories: {"model": merged/full weights, "adapter": the adapter alone}."""
    from kubetune.trainer import export

    out = cfg.work_dir / "export"
    shutil.rmtree(out, ignore_errors=True)
    trained_dir, base_dir, tok = cfg.work_dir / "trained", trained.base_dir, trained.tokenizer
    stop_ids = trained.prepared.template.stop_token_ids(tok)
    trust = cfg.spec.model.trust_remote_code
    shard_bytes = parse_size(cfg.spec.output.shard_size)
    exported: dict[str, Path] = {}
    if cfg.method != "full":
        adapter_dir = exported["adapter"] = out / "adapter"
        shutil.copytree(trained_dir, adapter_dir, ignore=shutil.ignore_patterns("training_args.bin"))
        export.stabilize_adapter_config(adapter_dir)
        tok.save_pretrained(str(adapter_dir))
        export.write_generation_config(base_dir, adapter_dir, tok, stop_ids)
    if cfg.merges:
        model_dir = exported["model"] = out / "model"
        if cfg.method == "full":
            export.resave_weights(trained_dir, model_dir, shard_bytes, export.base_dtype(base_dir))
        elif export.streamable(exported["adapter"]):
            export.stream_merge(base_dir, exported["adapter"], model_dir, shard_bytes)
        else:
            export.peft_merge(base_dir, exported["adapter"], model_dir, shard_bytes, trust)
        export.finish_model_dir(base_dir, model_dir, tok, stop_ids, trust)
        _save_resolved_config(cfg, model_dir)
    return exported


def check_export(cfg: RunConfig, trained: Trained, exported: dict[str, Path]) -> str:
    """Reload what will be uploaded (the merged model, else base + adapter) and check it."""
    from kubetune.trainer.export import verify_export

    merged = "model" in exported
    sample = verify_export(
        exported["model"] if merged else exported["adapter"],
        trained.probe,
        base_dir=None if merged else trained.base_dir,
        trust=cfg.spec.model.trust_remote_code,
    )
    log.info("export check passed; greedy sample: %r", sample)
    return sample


def upload_outputs(
    cfg: RunConfig, exported: dict[str, Path], sink: ProgressSink | None
) -> tuple[list[Any], dict[str, str]]:
    """Upload model/, adapter/ and loss.png; returns what was stored and the outputs for the status."""
    from kubetune.storage import delete_prefix, upload_dir, upload_file

    uploaded = []
    outputs: dict[str, str] = {}
    for key, uri in (("model", cfg.output.model), ("adapter", cfg.output.adapter)):
        if key in exported:
            delete_prefix(uri, cfg.storage)  # no file of an older export may survive next to this one
            uploaded += upload_dir(exported[key], uri, cfg.storage)
            outputs[key] = uri
    if sink is not None and sink.plot_loss(cfg.work_dir / "loss.png"):
        uploaded.append(upload_file(cfg.work_dir / "loss.png", cfg.output.loss_plot, cfg.storage))
        outputs["lossPlot"] = cfg.output.loss_plot
    events = tensorboard_dir(cfg)
    if events.is_dir() and any(events.iterdir()):
        # Event files of earlier attempts stay: each attempt writes files of its own name.
        uploaded += upload_dir(events, cfg.output.tensorboard, cfg.storage)
        outputs["tensorboard"] = cfg.output.tensorboard
    outputs.update(checkpoints=cfg.output.checkpoints, dataReport=cfg.output.data_report, manifest=cfg.output.manifest)
    return uploaded, outputs


# Used when the training data yields no conversation to check the export with.
PROBE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


def _probe(cfg: RunConfig, template: Any, tokenizer: Any) -> Probe:
    """A training conversation and the ids the data pipeline's own tokenization gives it."""
    from kubetune.trainer.data.tokenize import encode_batch

    messages = _training_conversation(cfg) or PROBE_MESSAGES
    batch: dict[str, list[Any]] = {"messages": [messages], "tools": [None]}
    # The text alone: the eos an efficient_eos template appends is a label, not text its chat template renders.
    text_only = replace(template, efficient_eos=False)
    encoded = encode_batch(batch, tokenizer=tokenizer, template=text_only, cutoff_len=1 << 30, train_on="all")
    return Probe(messages=messages, input_ids=[int(i) for i in encoded["input_ids"][0]])


def _training_conversation(cfg: RunConfig) -> list[dict[str, Any]] | None:
    from kubetune.trainer.data import first_conversation

    try:
        return first_conversation(cfg.spec, cfg.storage)
    except Exception as exc:  # the check still runs, on the built-in conversation
        log.warning("could not read a training conversation for the export check: %s", exc)
        return None


def _save_resolved_config(cfg: RunConfig, model_dir: Path) -> None:
    import yaml

    text = yaml.safe_dump(cfg.job.to_manifest(), sort_keys=False)
    (model_dir / "kubetune_finetunejob.yaml").write_text(text)


# --------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------


def _clean_work_dir(cfg: RunConfig) -> None:
    """Everything that matters is in the output now; node-local caches outlive jobs, so free the disk."""
    for name in ("checkpoints", "trained", "export", "tensorboard"):
        shutil.rmtree(cfg.work_dir / name, ignore_errors=True)


def _stage(sink: ProgressSink | None, stage: str, message: str) -> None:
    log.info("%s: %s", stage, message)
    if sink is not None:
        sink.stage(stage, message)


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
