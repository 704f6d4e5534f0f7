"""Shared fixtures: small real models and data written by the tests themselves (no network)."""

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile

import pytest

import tfclm  # noqa: F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")
RECIPE_CONFIG = os.path.join(ROOT, "configs", "distilgpt2-eli5.yaml")


def _write_pydoc_topics() -> str:
    """The pydoc topics, one .txt file each in the built-in corpus's order: the same first 78 documents as
    builtin:pydoc, without parsing the standard library's docstrings first."""
    from tfclm.data.corpus import pydoc_topics

    folder = tempfile.mkdtemp(prefix="tfclm-pydoc-topics-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for i, text in enumerate(pydoc_topics()):
        with open(os.path.join(folder, f"{i:03d}.txt"), "w", encoding="utf-8") as handle:
            handle.write(text)
    return folder


PYDOC_TOPICS = _write_pydoc_topics()


def sets(*pairs: str) -> list[str]:
    """`--set` options for the CLI: sets("a.b=1", "c.d=2") -> ["--set", "a.b=1", "--set", "c.d=2"]."""
    return [part for pair in pairs for part in ("--set", pair)]


# The default run, shrunk: same config file and code path as `make train`, on the pydoc topics alone.
TINY = sets(
    f"data.dataset={PYDOC_TOPICS}",
    "data.max_documents=40",
    "data.num_proc=1",
    "tokenizer.vocab_size=600",
    "model.config.n_layer=1",
    "model.config.n_embd=64",
    "model.config.n_head=2",
    "train.warmup_ratio=0.1",
    "generate.max_new_tokens=12",
)

# The tiny run on the built-in corpus itself: the settings of the `trained_dir` fit.
TINY_BUILTIN = [*TINY, *sets("data.dataset=builtin:pydoc")]


def fit_command(*args: str) -> list[str]:
    """`python -m tfclm fit --config configs/default.yaml ARGS...`, for a subprocess: the command a user types."""
    return [sys.executable, "-m", "tfclm", "fit", "--config", DEFAULT_CONFIG, *args]


def run_cli(args):
    from click.testing import CliRunner

    from tfclm.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A real tiny fit through `python -m tfclm fit --config configs/default.yaml`."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", out])
    assert result.exit_code == 0, result.output
    return out, result.output


def eli5_records(n=24):
    """Records shaped like eli5_category: nested `answers` with a list of texts."""
    words = "why does the sky look blue light scatters off air molecules and short waves scatter more than long ones"
    words = words.split()
    records = []
    for i in range(n):
        a = f"answer {i}: " + " ".join(words[(i + k) % len(words)] for k in range(12))
        b = " ".join(words[(3 * i + k) % len(words)] for k in range(9))
        records.append(
            {
                "q_id": f"q{i}",
                "title": f"question {i} about {words[i % len(words)]}",
                "selftext": f"more about {words[(i + 5) % len(words)]}" if i % 2 else "",
                "answers": {"a_id": [f"a{i}", f"b{i}"], "text": [a, b], "score": [3, 1]},
            }
        )
    return records


@pytest.fixture()
def eli5_jsonl(tmp_path):
    path = tmp_path / "eli5.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eli5_records()), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tokenizers():
    """The BPE tfclm trains, as it trains it for each family (the RoBERTa-likes pad with id 1)."""
    from tfclm.data.tokenizer import train_bpe

    texts = [open(os.path.join(PYDOC_TOPICS, name)).read() for name in sorted(os.listdir(PYDOC_TOPICS))[:40]]
    return {own_pad: train_bpe(texts, 512, own_pad) for own_pad in (False, True)}


@pytest.fixture()
def tokenizer(model_type, tokenizers):
    """`tokenizers`' one for the test's `model_type` parameter."""
    from tfclm.model.families import FAMILIES

    return tokenizers[FAMILIES[model_type].pad_id is not None]


# Fixtures that run a whole fit or start a server: every test that needs one is slow.
SLOW_FIXTURES = {"trained_dir", "hub"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def kill_after_checkpoint(process, out: str, step: int, timeout: float = 300) -> None:
    """SIGKILL a fit's process group once OUTPUT_DIR/checkpoints lists ckpt-`step`: a crash mid-run."""
    import signal
    import time

    index = os.path.join(out, "checkpoints", "checkpoint")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.exists(index) and f"ckpt-{step}" in open(index).read():
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def tree(folder) -> dict:
    """Every file under `folder` with its bytes' sha256: equal before and after means nothing was touched."""
    found = {}
    for directory, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found
