"""A real tiny fit through the CLI and the same config as `make train`, then the output dir checks."""

import json
import math
import os

import pytest
import yaml

from helpers import DEFAULT_CONFIG, TINY, run_cli, sets


@pytest.mark.slow
def test_fit_learns_and_reports(trained_dir):
    out, output = trained_dir
    results = json.load(open(os.path.join(out, "results.json")))
    assert math.isfinite(results["train_loss"]) and 0 < results["train_loss"] < results["eval_loss_before"]
    assert results["perplexity"] == math.exp(results["eval_loss"])
    assert results["perplexity_before"] == math.exp(results["eval_loss_before"])
    assert results["train_seconds"] > 0 and results["tokens_per_second"] > 0
    # Throughput counts the seconds inside training batches, a part of the whole run's train_seconds.
    assert results["tokens_per_second"] >= results["train_tokens"] / results["train_seconds"]
    assert results["train_steps"] == 40 and results["train_tokens"] == 40 * 16 * 128
    assert results["perplexity"] < 0.5 * results["perplexity_before"]  # real learning, even in 40 steps
    assert f"perplexity {results['perplexity_before']:,.2f} -> {results['perplexity']:,.2f}" in output
    assert "before training: eval loss" in output and "after training: eval loss" in output and "sample (" in output
    assert results["data"]["validation_tokens_dropped"] == 0
    # MFU against this CPU's float32 matmul, measured at the start of the run (train.peak_tflops: auto).
    assert results["peak_source"].startswith("measured: float32 matmul on this host's CPU, ")
    assert results["peak_flops"] > 0 and results["mfu"] > 0 and f"MFU {results['mfu']:.1%}" in output


@pytest.mark.slow
def test_resolved_config_is_saved_with_flags_applied(trained_dir):
    out, _ = trained_dir
    saved = yaml.safe_load(open(os.path.join(out, "tfclm.yaml")))
    assert saved["train"]["max_steps"] == 40 and saved["output_dir"] == out
    assert saved["model"]["config"]["n_embd"] == 64 and saved["data"]["max_documents"] == 40


@pytest.mark.slow
def test_output_dir_loads_with_plain_transformers(trained_dir):
    import numpy as np
    from transformers import AutoTokenizer, TFAutoModelForCausalLM, pipeline

    out, _ = trained_dir
    model = TFAutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = tokenizer("The list type", return_tensors="tf")
    assert set(encoded) == {"input_ids", "attention_mask"}  # GPT-2 takes no token_type_ids
    logits = model(**encoded).logits
    assert logits.shape[-1] == len(tokenizer) and np.isfinite(logits.numpy()).all()
    generator = pipeline("text-generation", model=out, framework="tf")
    text = generator("The list type", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The list type") and len(text) > len("The list type")


@pytest.mark.slow
def test_evaluate_command_on_the_validation_split_and_a_file(trained_dir, tmp_path):
    out, _ = trained_dir
    results = json.load(open(os.path.join(out, "results.json")))
    result = run_cli(["evaluate", "--model", out, "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["tokens"] == results["eval_tokens"]
    assert measured["loss"] == pytest.approx(results["eval_loss"], rel=1e-4)
    text = tmp_path / "notes.txt"
    text.write_text("Return the number of items in a list.\n" * 20)
    result = run_cli(["evaluate", "--model", out, "--text-file", str(text)])
    assert result.exit_code == 0, result.output
    assert f"{text} (blocks of 128 tokens):" in result.output and "bits per byte" in result.output


@pytest.mark.slow
def test_generate_command_same_seed_same_text(trained_dir):
    out, _ = trained_dir
    args = [
        "generate",
        "--model",
        out,
        "--prompt",
        "The list type",
        "--prompt",
        "Return",
        "--max-new-tokens",
        "8",
        "--seed",
        "3",
        "--json",
    ]
    first, second = run_cli(args), run_cli(args)
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.strip().splitlines()]
    assert [line["prompt"] for line in lines] == ["The list type", "Return"]
    assert all(0 < line["new_tokens"] <= 8 for line in lines)
    assert [json.loads(line)["completion"] for line in second.stdout.splitlines()] == [
        line["completion"] for line in lines
    ]
    greedy = ["generate", "--model", out, "--prompt", "The", "--greedy", "--max-new-tokens", "4"]
    once, twice = run_cli(greedy), run_cli(greedy)
    assert once.exit_code == 0 and once.stdout == twice.stdout and once.stdout.startswith("The")


@pytest.mark.slow
def test_recipe_pipeline_through_the_same_path(tmp_path):
    out = str(tmp_path / "recipe")
    result = run_cli(
        [
            "-q",  # warnings and errors only
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *TINY,
            *sets("train.pipeline=recipe", "evaluate.before_training=false"),
            "--max-steps",
            "3",
            "--output-dir",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["train_steps"] == 3 and results["perplexity_before"] is None
    logged = [line for line in result.stdout.splitlines() if line.startswith(("data:", "model:", "training:", "done:"))]
    assert logged == []  # -q: the info lines are gone, the run is not


def test_help_shows_examples():
    for command in ("fit", "evaluate", "generate"):
        result = run_cli([command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output and "python -m tfclm " + command in result.output


@pytest.mark.slow
def test_each_line_is_printed_once_when_a_library_set_up_root_logging(tmp_path):
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append  # as logging.basicConfig() from a library would print: INFO:tfclm...:line
    logging.getLogger().addHandler(handler)
    try:
        result = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--max-steps", "2", "--output-dir", str(tmp_path)])
    finally:
        logging.getLogger().removeHandler(handler)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("done: ")]
    assert not [record for record in seen if record.name.startswith("tfclm")]
