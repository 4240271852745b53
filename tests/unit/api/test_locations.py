"""The one rule that says whether a spec value is an s3:// URI, a path or a hub id, and everyone who asks it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubetune import render
from kubetune.api.locations import OUTPUT_PATTERN, SOURCE_PATTERN, local_path, location_kind
from kubetune.api.validation import parse_job

CASES = [
    # value, kind where hub ids are allowed (sources), kind where they are not (outputs)
    ("s3://bucket/data.jsonl", "s3", "s3"),
    ("s3://bucket", "s3", "s3"),  # a bucket without a key is the bucket's root
    ("s3://bucket/", "s3", "s3"),
    ("file:///data/train.jsonl", "path", "path"),
    ("/models/llama", "path", "path"),
    ("./x", "path", "path"),
    ("../x", "path", "path"),
    ("~/x", "path", "path"),
    (".", "path", "path"),
    ("Qwen/Qwen2.5-7B-Instruct", "hub", ValueError),  # x/y that is a hub id
    ("gpt2", "hub", ValueError),
    ("tatsu-lab/alpaca", "hub", ValueError),
    ("data.jsonl", "path", ValueError),  # no hub id ends in a data-file suffix
    ("data/train.JSONL", "path", ValueError),
    ("data/wiki_demo.txt", "path", ValueError),  # plain text, for stage pt
    ("C:\\data\\train.jsonl", ValueError, ValueError),  # a Windows path means nothing in a pod
    ("C:/data/train.jsonl", ValueError, ValueError),
    ("s3://B/upper-case-bucket", ValueError, ValueError),
    ("gs://bucket/x", ValueError, ValueError),
    ("org/name/extra", ValueError, ValueError),
    ("", ValueError, ValueError),
    ("   ", ValueError, ValueError),
]


@pytest.mark.parametrize(("value", "source_kind", "output_kind"), CASES)
def test_location_kind(value: str, source_kind: object, output_kind: object) -> None:
    for allow_hub, expected in ((True, source_kind), (False, output_kind)):
        if expected is ValueError:
            with pytest.raises(ValueError):
                location_kind(value, allow_hub=allow_hub)
        else:
            assert location_kind(value, allow_hub=allow_hub) == expected


@pytest.mark.parametrize(("value", "source_kind", "output_kind"), CASES)
def test_admission_patterns_admit_what_the_rule_admits(value: str, source_kind: object, output_kind: object) -> None:
    """The CRD's regex and the Python rule agree on every case (the regex may not tell path from hub)."""
    if value.strip() != value or not value:
        return  # the API server sees the exact string; blank values fail the CRD's minLength instead
    assert bool(re.match(SOURCE_PATTERN, value)) == (source_kind is not ValueError), value
    assert bool(re.match(OUTPUT_PATTERN, value)) == (output_kind is not ValueError), value


def test_local_path() -> None:
    assert local_path("file:///data/my%20file.jsonl") == Path("/data/my file.jsonl")
    assert local_path("~/x") == Path.home() / "x"
    assert local_path("./x") == Path("x")


def _job(model: str, dataset: str) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j"},
        "spec": {
            "model": {"source": model},
            "datasets": [{"source": dataset}],
            "output": {"uri": "s3://out/j/"},
        },
    }


def test_renderer_asks_the_same_rule() -> None:
    """`data/train.jsonl` is a relative path: in a pod it must lie on a mounted volume, like `./x`."""
    problems = render.cluster_problems(parse_job(_job("Qwen/Qwen2.5-7B", "data/train.jsonl")))
    assert [p.split(":")[0] for p in problems] == ["spec.datasets[0].source"]
    assert render.cluster_problems(parse_job(_job("Qwen/Qwen2.5-7B", "s3://bkt/train.jsonl"))) == []


def test_a_reference_model_path_must_be_mounted_like_the_base() -> None:
    doc = _job("Qwen/Qwen2.5-7B", "s3://bkt/pairs.jsonl")
    doc["spec"] |= {"stage": "dpo", "model": {"source": "Qwen/Qwen2.5-7B", "reference": "/models/sft"}}
    problems = render.cluster_problems(parse_job(doc))
    assert [p.split(":")[0] for p in problems] == ["spec.model.reference"]
    doc["spec"]["model"]["reference"] = "s3://models/sft/model/"
    assert render.cluster_problems(parse_job(doc)) == []
