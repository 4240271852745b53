"""`kubetune validate`: one clear line per problem, naming the field; exit 1; never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


def _write(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def _with(spec_patch: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    doc = {**BASE, **top}
    doc["spec"] = {**BASE["spec"], **(spec_patch or {})}
    return doc


BAD = [
    ("not-yaml", "spec: [unclosed", "", "not valid YAML at line 1"),
    ("scalar", "just a string", "", "expected a Kubernetes object"),
    ("api-version", _with(apiVersion="kubetune.io/v1"), "apiVersion", "must be kubetune.io/v1alpha1"),
    ("kind", _with(kind="TrainJob"), "kind", "must be FineTuneJob"),
    ("unknown-field", _with({"trainng": {}}), "spec.trainng", "did you mean 'training'?"),
    (
        "unknown-nested",
        _with({"method": {"type": "lora", "lora": {"rnak": 8}}}),
        "spec.method.lora.rnak",
        "did you mean 'rank'?",
    ),
    ("rank-zero", _with({"method": {"type": "lora", "lora": {"rank": 0}}}), "spec.method.lora.rank", "must be > 0"),
    ("wrong-type", _with({"training": {"learningRate": "fast"}}), "spec.training.learningRate", "must be a number"),
    ("bad-enum", _with({"method": {"type": "qlora4"}}), "spec.method.type", "must be one of lora, qlora or full"),
    ("uri-scheme", _with({"output": {"uri": "gs://bucket/out"}}), "spec.output.uri", "unsupported URI scheme 'gs://'"),
    ("nodes-zero", _with({"resources": {"nodes": 0}}), "spec.resources.nodes", "must be >= 1"),
    (
        "qlora-zero3",
        _with({"method": {"type": "qlora"}, "training": {"deepspeed": {"stage": "zero3"}}}),
        "spec",
        "qlora cannot shard a quantized base with deepspeed zero3",
    ),
    (
        "quant-on-lora",
        _with({"method": {"type": "lora", "quantization": {"bits": 4}}}),
        "spec.method",
        "quantization applies only to type: qlora",
    ),
    (
        "missing-output",
        {**BASE, "spec": {k: v for k, v in BASE["spec"].items() if k != "output"}},
        "spec.output",
        "required field is missing",
    ),
    ("no-datasets", _with({"datasets": []}), "spec.datasets", "must have at least 1 item"),
    (
        "epochs-and-steps",
        _with({"training": {"epochs": 1, "maxSteps": 10}}),
        "spec.training",
        "set epochs or maxSteps, not both",
    ),
    (
        "bad-quantity",
        _with({"resources": {"sharedMemory": "lots"}}),
        "spec.resources.sharedMemory",
        "is not a Kubernetes quantity",
    ),
    ("bad-template", _with({"template": "llama-3"}), "spec.template", "did you mean 'llama3'?"),
    ("bad-stage", _with({"stage": "rlhf"}), "spec.stage", "must be one of sft, dpo, kto or pt"),
    (
        "preference-on-sft",
        _with({"preference": {"beta": 0.2}}),
        "spec",
        "preference applies only to stage: dpo",
    ),
    (
        "dpo-packing",
        _with({"stage": "dpo", "training": {"packing": True}}),
        "spec",
        "stage dpo trains on whole pairs and cannot pack them",
    ),
    (
        "pt-packing",
        _with({"stage": "pt", "training": {"packing": False}}),
        "spec",
        "stage pt always joins documents into cutoffLen blocks",
    ),
    (
        "kto-batch-1",
        _with({"stage": "kto", "training": {"perDeviceBatchSize": 1}}),
        "spec",
        "stage kto needs training.perDeviceBatchSize of at least 2",
    ),
    (
        "kto-weights-on-dpo",
        _with({"stage": "dpo", "preference": {"undesirableWeight": 1.5}}),
        "spec",
        "preference.desirableWeight and undesirableWeight apply only to stage: kto",
    ),
    (
        "dpo-loss-on-kto",
        _with({"stage": "kto", "training": {"perDeviceBatchSize": 2}, "preference": {"sftWeight": 0.1}}),
        "spec",
        "preference.loss, labelSmoothing and sftWeight apply only to stage: dpo",
    ),
    (
        "reference-on-sft",
        _with({"model": {"source": "Qwen/Qwen2.5-0.5B", "reference": "Qwen/Qwen2.5-0.5B-Instruct"}}),
        "spec",
        "model.reference applies only to stage: dpo or kto",
    ),
    (
        "bad-reference",
        _with({"stage": "dpo", "model": {"source": "Qwen/Qwen2.5-0.5B", "reference": "gs://bucket/ref/"}}),
        "spec.model.reference",
        "unsupported URI scheme 'gs://'",
    ),
    ("bad-loss", _with({"stage": "dpo", "preference": {"loss": "kto_pair"}}), "spec.preference.loss", "must be one of"),
    (
        "reference-with-orpo",
        _with(
            {
                "stage": "dpo",
                "model": {"source": "Qwen/Qwen2.5-0.5B", "reference": "Qwen/Qwen2.5-0.5B-Instruct"},
                "preference": {"loss": "orpo"},
            }
        ),
        "spec",
        "model.reference does not apply to preference.loss orpo: it is reference-free",
    ),
    (
        "simpo-gamma-on-sigmoid",
        _with({"stage": "dpo", "preference": {"simpoGamma": 1.0}}),
        "spec.preference",
        "simpoGamma applies only to loss: simpo",
    ),
    ("beta-zero", _with({"stage": "dpo", "preference": {"beta": 0}}), "spec.preference.beta", "must be > 0"),
    (
        "smoothing-on-sigmoid",
        _with({"stage": "dpo", "preference": {"labelSmoothing": 0.1}}),
        "spec.preference",
        "labelSmoothing applies only to loss: robust",
    ),
    ("bad-name", {**BASE, "metadata": {"name": "My_Job"}}, "metadata.name", "is not a valid name"),
    # Strict like the API server: no silent coercion of strings to numbers or booleans.
    ("string-number", _with({"resources": {"nodes": "2"}}), "spec.resources.nodes", "must be a whole number"),
    ("string-bool", _with({"training": {"packing": "yes"}}), "spec.training.packing", "must be true or false"),
    (
        "plain-secret",
        _with({"env": [{"name": "HF_TOKEN", "value": "hf_x"}]}),
        "spec.env[0]",
        "looks like a credential: use secretKeyRef",
    ),
    (
        "reserved-env",
        _with({"env": [{"name": "MASTER_PORT", "value": "1"}]}),
        "spec.env[0].name",
        "MASTER_PORT is reserved (set by torchrun and the Kubeflow controller)",
    ),
    (
        "nccl-secret",
        _with({"network": {"nccl": {"env": {"WANDB_API_KEY": "x"}}}}),
        "spec.network.nccl.env",
        "WANDB_API_KEY looks like a credential",
    ),
    *(
        (
            f"nccl-env-{key}",
            _with({"network": {"nccl": {"env": {key: "x"}}}}),
            "spec.network.nccl.env",
            message,
        )
        for key, message in [
            ("KUBETUNE_CONFIG", "KUBETUNE_CONFIG is reserved (set by kubetune)"),
            ("KUBETUNE_JOB_NAME", "KUBETUNE_JOB_NAME is reserved (set by kubetune)"),
            ("MASTER_ADDR", "MASTER_ADDR is reserved (set by torchrun"),
            ("NCCL_DEBUG", "NCCL_DEBUG is reserved (set from spec.network.nccl.debug)"),
            ("NCCL_X=1", "'NCCL_X=1' is not a valid environment variable name"),
        ]
    ),
    *(
        (f"env-{name}", _with({"env": [{"name": name, "value": "x"}]}), "spec.env[0].name", message)
        for name, message in [
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID is reserved (set from spec.storage.credentialsSecret)"),
            ("HF_HOME", "HF_HOME is reserved (set by kubetune to its cache volume)"),
            ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_S3 is reserved (set from spec.storage.endpoint)"),
            ("LD_PRELOAD", "LD_PRELOAD is reserved"),
            ("PYTHONPATH", "PYTHONPATH is reserved"),
            ("PET_NNODES", "PET_NNODES is reserved (set by the Kubeflow controller"),
            ("A=B", "'A=B' is not a valid environment variable name"),
            ("1ST", "'1ST' is not a valid environment variable name"),
        ]
    ),
    ("epochs-huge", _with({"training": {"epochs": 1e12}}), "spec.training.epochs", "must be <= 10000"),
    ("steps-huge", _with({"training": {"maxSteps": 2**63}}), "spec.training.maxSteps", "must be <= 2147483647"),
    ("seed-huge", _with({"training": {"seed": 2**32}}), "spec.training.seed", "must be <= 4294967295"),
    ("lr-null", _with({"training": {"learningRate": None}}), "spec.training.learningRate", "must be a number"),
    ("inf", _with({"training": {"weightDecay": float("inf")}}), "spec.training.weightDecay", "finite number"),
    (
        "annotations-huge",
        {**BASE, "metadata": {"name": "a", "annotations": {"note": "x" * (256 * 1024)}}},
        "metadata.annotations",
        "262148 bytes of annotations; the API server takes at most 262144",
    ),
    (
        "secret-name",
        _with({"storage": {"credentialsSecret": {"name": "My_Secret"}}}),
        "spec.storage.credentialsSecret.name",
        "'My_Secret' is not a valid Secret name",
    ),
    (
        "endpoint",
        _with({"storage": {"endpoint": "minio:9000"}}),
        "spec.storage.endpoint",
        "'minio:9000' is not an http(s):// endpoint URL",
    ),
    (
        "shard-size",
        _with({"output": {"uri": "s3://bucket/x", "shardSize": "5 gigs"}}),
        "spec.output.shardSize",
        "is not a size",
    ),
    (
        "volume-name",
        _with({"volumes": [{"name": "Models", "claimName": "c", "mountPath": "/models"}]}),
        "spec.volumes[0].name",
        "'Models' is not a valid name",
    ),
    (
        "volume-taken",
        _with({"volumes": [{"name": "dshm", "claimName": "c", "mountPath": "/models"}]}),
        "spec.volumes[0].name",
        "'dshm' is taken by kubetune's own volumes",
    ),
    (
        "volume-path",
        _with({"volumes": [{"name": "m", "claimName": "c", "mountPath": "/dev/shm/x"}]}),
        "spec.volumes[0].mountPath",
        "must be an absolute path other than",
    ),
    (
        "volume-dup",
        _with(
            {
                "volumes": [
                    {"name": "a", "claimName": "c", "mountPath": "/models"},
                    {"name": "b", "claimName": "d", "mountPath": "/models/"},
                ]
            }
        ),
        "spec",
        "mountPath must be unique",
    ),
    ("queue-name", _with({"queueName": "team a"}), "spec.queueName", "is not a valid label value"),
]


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        ("HF_TOKEN", True),
        ("WANDB_API_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("DB_PASSWORD", True),
        ("TOKENIZERS_PARALLELISM", False),
        ("MAX_TOKENS", False),
        ("HF_HUB_DISABLE_IMPLICIT_TOKEN", False),
        ("WANDB_PROJECT", False),
        ("NCCL_SOCKET_IFNAME", False),
    ],
)
def test_credential_names_are_told_apart_from_ordinary_ones(name: str, credential: bool) -> None:
    from kubetune.api.v1alpha1 import looks_like_credential

    assert looks_like_credential(name) is credential


@pytest.mark.parametrize(("case", "doc", "path", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_spec_gives_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, doc: Any, path: str, message: str
) -> None:
    file = _write(tmp_path, doc)
    assert main(["validate", "-q", file]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"{file}: {path}: " if path else f"{file}: "), line
    assert message in line
    assert "Traceback" not in line


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _with({"resources": {"nodes": 0}, "training": {"learningRate": -1}})
    assert main(["validate", "-q", _write(tmp_path, doc)]) == 1
    err = capsys.readouterr().err
    assert "spec.resources.nodes" in err and "spec.training.learningRate" in err


def test_multi_document_file_names_the_bad_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = yaml.safe_dump(BASE)
    bad = yaml.safe_dump(_with({"resources": {"nodes": 0}}))
    path = tmp_path / "jobs.yaml"
    path.write_text(good + "---\n" + bad)
    assert main(["validate", str(path)]) == 1
    assert f"{path}#2: spec.resources.nodes" in capsys.readouterr().err


def test_clean_files_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(files)


def test_missing_file_is_a_message_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent/job.yaml"]) == 1
    assert "cannot read file" in capsys.readouterr().err


def test_render_prints_the_objects_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(ROOT / "examples" / "quickstart.yaml")]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "PyTorchJob"]
    assert main(["render", _write(tmp_path, _with({"resources": {"nodes": 0}}))]) == 1
    assert "spec.resources.nodes" in capsys.readouterr().err


def test_yaml_12_floats_and_integer_quantities_are_accepted(tmp_path: Path) -> None:
    text = yaml.safe_dump(_with({"resources": {"cpu": 32, "memory": "64Gi", "gpusPerNode": 0}}))
    text = text.replace("learningRate: 0.003", "learningRate: 3e-3")
    assert "3e-3" in text
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert main(["validate", "-q", str(path)]) == 0
    from kubetune.api.validation import load_job_file

    job = load_job_file(str(path))
    assert job.spec.training.learning_rate == 0.003 and job.spec.resources.cpu == "32"


def test_cluster_flag_refuses_paths_that_would_vanish_with_the_pod(capsys: pytest.CaptureFixture[str]) -> None:
    quickstart = str(ROOT / "examples" / "quickstart.yaml")
    assert main(["validate", "--cluster", quickstart]) == 1
    assert "spec.output.uri: '../runs/quickstart' is a path" in capsys.readouterr().err
    cluster_examples = [str(p) for p in sorted((ROOT / "examples").glob("*.yaml")) if p.name != "quickstart.yaml"]
    assert main(["validate", "--cluster", *cluster_examples]) == 0
