"""The data pipeline against a real S3 server: reading files and prefixes, and tokenize-once across processes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kubetune import storage
from kubetune.trainer.data import prepare_data
from tests.unit.data.helpers import make_spec

pytestmark = pytest.mark.integration

# Runs prepare_data in a separate process, as another rank or a restarted pod would.
WORKER = textwrap.dedent(
    """
    import hashlib, json, logging, sys
    from pathlib import Path
    from transformers import AutoTokenizer
    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.trainer.data import prepare_data

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    args = json.loads(sys.argv[1])
    spec = FineTuneJobSpec.model_validate(args["spec"])
    tokenizer = AutoTokenizer.from_pretrained(args["model"])
    prepared = prepare_data(spec, tokenizer, cache_dir=Path(args["cache_dir"]), cache_uri=args["cache_uri"],
                            rank=args["rank"], world_size=2)
    ids = hashlib.sha256(json.dumps(list(prepared.train["input_ids"])).encode()).hexdigest()
    print(json.dumps({"key": prepared.report.cache_key, "ids": ids, "rows": len(prepared.train)}))
    """
)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def start_worker(tmp_path: Path, name: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    # One file per worker: rewriting a shared one truncates it under a worker that is still starting
    # to read it, which then runs an empty script and exits 0 with no output.
    script = tmp_path / f"worker-{name}.py"
    script.write_text(WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        cwd=str(tmp_path),
    )


def finish(proc: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def test_s3_files_and_prefixes_and_the_cache_shared_through_s3(
    s3_env: Any, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bucket = s3_env.make_bucket("data-pipeline")
    # names sort differently from upload order: reading must follow name order
    storage.write_bytes(
        f"{bucket}/sets/chat/part-2.jsonl",
        jsonl([{"messages": [{"role": "user", "content": "second"}, {"role": "assistant", "content": "two"}]}]),
    )
    storage.write_bytes(
        f"{bucket}/sets/chat/part-1.jsonl",
        jsonl([{"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"}]}]),
    )
    storage.write_bytes(
        f"{bucket}/sets/alpaca.json",
        json.dumps([{"instruction": "What is the capital of France?", "output": "Paris."}]).encode(),
    )
    spec = make_spec(
        [{"source": f"{bucket}/sets/chat/"}, {"source": f"{bucket}/sets/alpaca.json"}],
        storage={"endpoint": s3_env.endpoint_url},
        training={"packing": True, "cutoffLen": 256},
    )
    cache_uri = f"{bucket}/out/cache/"
    args = {
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "model": str(tiny_model_dir),
        "cache_uri": cache_uri,
    }

    # rank 1 starts first and waits for rank 0 (this process) to publish the tokenized data
    rank1 = start_worker(tmp_path, "rank1", {**args, "cache_dir": str(tmp_path / "node1"), "rank": 1})
    assert rank1.stderr is not None
    seen = []
    for line in rank1.stderr:  # rank 0 starts only once rank 1 is polling
        seen.append(line)
        if "waiting for rank 0" in line:
            break
    assert any("waiting for rank 0" in line for line in seen), "".join(seen)[-3000:]
    with caplog.at_level(logging.INFO, logger="kubetune.data"):
        prepared = prepare_data(spec, tokenizer, cache_dir=tmp_path / "node0", cache_uri=cache_uri)
    assert "tokenizing 3 conversations" in caplog.text
    report = prepared.report.to_dict()
    assert [d["detectedFormat"].split(" ")[0] for d in report["datasets"]] == ["openai", "alpaca"]
    files = [f["uri"] for f in report["datasets"][0]["files"]]
    assert files == [f"{bucket}/sets/chat/part-1.jsonl", f"{bucket}/sets/chat/part-2.jsonl"]
    assert report["summary"]["rowsRead"] == 3 and len(prepared.train) == 1  # 3 short examples, one packed row
    text = tokenizer.decode(prepared.train[0]["input_ids"])
    assert all(word in text for word in ("first", "second", "Paris"))
    key = prepared.report.cache_key
    assert storage.exists(f"{cache_uri}data-{key}/_COMPLETE")

    ids = hashlib.sha256(json.dumps(list(prepared.train["input_ids"])).encode()).hexdigest()
    other, err = finish(rank1)
    assert other == {"key": key, "ids": ids, "rows": 1}
    assert "tokenizing" not in err

    # a restarted pod (rank 0, empty local disk) finds the published cache instead of tokenizing again
    restarted, err = finish(start_worker(tmp_path, "restart", {**args, "cache_dir": str(tmp_path / "new"), "rank": 0}))
    assert restarted == other
    assert "reusing tokenized data" in err and "tokenizing" not in err


def test_data_check_cli_on_s3_names_the_bad_rows(s3_env: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket("data-check")
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "gpt", "value": "I speak first"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "Hi"}]},
    ]
    storage.write_bytes(f"{bucket}/sg.jsonl", jsonl(rows))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.cli",
            "data",
            "check",
            f"{bucket}/sg.jsonl",
            "--model",
            str(tiny_model_dir),
            "--report",
            str(tmp_path / "report.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert out.returncode == 1, out.stderr
    assert "format sharegpt" in out.stdout
    assert f"{bucket}/sg.jsonl row 2: roles out of order" in out.stdout
    assert f"{bucket}/sg.jsonl row 4: conversation has no assistant turn" in out.stdout
    assert "[[Hello!<|im_end|>\n]]" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["row"] for r in report["invalid"]["rows"]] == [2, 4]


def test_two_local_nodes_sharing_one_cache_dir_publish_one_entry(
    s3_env: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # `kubetune run --local --nodes 2`: both nodes' processes use one KUBETUNE_CACHE_DIR. Rank 0 builds while
    # node 1's first rank polls and may install the S3 copy into the same directory; a second rank-0 writer
    # (a restarted pod racing the old one) builds the same entry at the same moment.
    bucket = s3_env.make_bucket("shared-cache")
    alpaca = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(20)]
    storage.write_bytes(f"{bucket}/mixed/a.jsonl", jsonl(alpaca))
    storage.write_bytes(
        f"{bucket}/mixed/b.jsonl",
        jsonl(
            [
                {"conversations": [{"from": "human", "value": f"H{i}"}, {"from": "gpt", "value": f"G{i}"}]}
                for i in range(20)
            ]
        ),
    )
    spec = make_spec([{"source": f"{bucket}/mixed/"}], storage={"endpoint": s3_env.endpoint_url})
    shared = tmp_path / "shared-cache"
    args = {
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "model": str(tiny_model_dir),
        "cache_uri": f"{bucket}/out/cache/",
        "cache_dir": str(shared),
    }
    procs = [start_worker(tmp_path, f"w{n}-rank{rank}", {**args, "rank": rank}) for n, rank in enumerate((1, 0, 0))]
    results = [finish(p)[0] for p in procs]
    assert results[0] == results[1] == results[2] and results[0]["rows"] == 40
    assert [p.name for p in shared.iterdir()] == [f"data-{results[0]['key']}"]  # no staging left behind
    assert (shared / f"data-{results[0]['key']}" / "_COMPLETE").is_file()


def test_an_s3_prefix_with_no_data_files_is_named_as_such(s3_env: Any) -> None:
    from kubetune.trainer.data.sources import SourceError, list_data_files

    bucket = s3_env.make_bucket("empty-prefix")
    opts = storage.StorageOptions(endpoint_url=s3_env.endpoint_url)
    with pytest.raises(SourceError, match=rf"no data files under {bucket}/nothing/ \(it is empty\)"):
        list_data_files(f"{bucket}/nothing/", opts)
    with pytest.raises(SourceError, match=rf"dataset source {bucket}/missing.jsonl not found"):
        list_data_files(f"{bucket}/missing.jsonl", opts)
