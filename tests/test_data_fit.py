"""The data stage through real fits: the blocks cache, unpacked documents, and streaming."""

import json
import os

import pytest

from helpers import DEFAULT_CONFIG, TINY, run_cli, sets

FAST = [*TINY, "--set", "evaluate.before_training=false", "--set", "generate.max_new_tokens=4"]


@pytest.mark.slow
def test_rerun_reuses_cached_blocks_and_a_change_rebuilds(tmp_path):
    out = str(tmp_path / "out")
    args = ["fit", "--config", DEFAULT_CONFIG, *FAST, "--max-steps", "2", "--output-dir", out]
    first = run_cli(args)
    assert first.exit_code == 0, first.output
    assert "reusing the blocks cached" not in first.stdout and "tokenizing training" in first.output
    assert "; perplexity not measured -> " in first.output  # evaluate.before_training: false
    again = run_cli([*args, "--overwrite"])
    assert "data: reusing the blocks cached in" in again.stdout and "tokenizing" not in again.output
    assert json.load(open(os.path.join(out, "results.json")))["data"]["train_blocks"] > 0
    changed = run_cli([*args, "--set", "data.block_size=64", "--overwrite"])
    assert changed.exit_code == 0 and "reusing the blocks cached" not in changed.stdout
    assert len([f for f in os.listdir(os.path.join(out, "cache")) if f.startswith("blocks-")]) == 2


@pytest.mark.slow
def test_unpacked_and_streaming_fits(tmp_path, eli5_jsonl):
    out = str(tmp_path / "unpacked")
    result = run_cli(
        [
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *FAST,
            *sets("data.pack=false", "data.block_size=32"),
            "--max-steps",
            "2",
            "--output-dir",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    facts = json.load(open(os.path.join(out, "results.json")))["data"]
    assert facts["train_blocks"] == facts["train_documents"]  # one example per document

    out = str(tmp_path / "stream")
    result = run_cli(
        [
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *FAST,
            *sets(f"data.dataset={eli5_jsonl}"),
            *sets("data.text_template={title}: {answers.text}", "data.streaming=true", "data.block_size=16"),
            "--batch-size",
            "2",
            "--max-steps",
            "3",
            "--output-dir",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["train_steps"] == 3 and results["data"] == {"streaming": True} and results["eval_tokens"] > 0
    evaluated = run_cli(["evaluate", "--model", out, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout.splitlines()[-1])["tokens"] == results["eval_tokens"]


def test_streaming_needs_max_steps():
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, "--set", "data.streaming=true"])
    assert result.exit_code == 2 and "train.max_steps: is required with data.streaming: true" in result.output


@pytest.mark.slow
def test_a_stream_shorter_than_max_steps_is_a_finished_run(tmp_path, eli5_jsonl):
    out = str(tmp_path / "short-stream")
    args = [
        "fit",
        "--config",
        DEFAULT_CONFIG,
        *FAST,
        *sets(f"data.dataset={eli5_jsonl}", "data.text_column=answers.text", "data.streaming=true"),
        *sets("data.block_size=16", "train.epochs=2"),
        "--batch-size",
        "2",
        "--max-steps",
        "100000",
        "--output-dir",
        out,
    ]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    results = json.load(open(os.path.join(out, "results.json")))
    assert 0 < results["train_steps"] < 100000 and len(results["history"]["loss"]) == 2  # two passes, then done
    state = json.load(open(os.path.join(out, "checkpoints", f"ckpt-{results['train_steps']}.json")))
    assert (state["epoch"], state["batches_in_epoch"]) == (2, 0)
    again = run_cli(args)
    assert again.exit_code == 2 and "already holds a finished run" in again.output  # not trained again
