"""Shared fixtures: small real models and data written by the tests themselves (no network)."""

import json
import os

import pytest

import tfclm  # noqa: F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")
RECIPE_CONFIG = os.path.join(ROOT, "configs", "distilgpt2-eli5.yaml")

# The default run, shrunk: same config file and code path as `make train`.
TINY = [
    "--set",
    "data.max_documents=40",
    "--set",
    "data.num_proc=1",
    "--set",
    "tokenizer.vocab_size=600",
    "--set",
    "model.config.n_layer=1",
    "--set",
    "model.config.n_embd=64",
    "--set",
    "model.config.n_head=2",
    "--set",
    "train.warmup_ratio=0.1",
    "--set",
    "generate.max_new_tokens=12",
]


def run_cli(args):
    from click.testing import CliRunner

    from tfclm.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A real tiny fit through `python -m tfclm fit --config configs/default.yaml`."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--max-steps", "40", "--output-dir", out])
    assert result.exit_code == 0, result.output
    return out, result.output


def eli5_records(n=24):
    """Records shaped like eli5_category: nested `answers` with a list of texts."""
    words = "why does the sky look blue light scatters off air molecules and short waves scatter more than long ones".split()
    records = []
    for i in range(n):
        a = f"answer {i}: " + " ".join(words[(i + k) % len(words)] for k in range(12))
        b = " ".join(words[(3 * i + k) % len(words)] for k in range(9))
        records.append(
            {
                "q_id": f"q{i}",
                "title": f"question {i} about {words[i % len(words)]}",
                "answers": {"a_id": [f"a{i}", f"b{i}"], "text": [a, b], "score": [3, 1]},
            }
        )
    return records


@pytest.fixture()
def eli5_jsonl(tmp_path):
    path = tmp_path / "eli5.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eli5_records()), encoding="utf-8")
    return str(path)
