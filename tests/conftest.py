"""Shared fixtures: small real models and data written by the tests themselves (no network).

The helpers they use, and the tests too, live in tests/helpers.py.
"""

import json
import os

import pytest

from helpers import DEFAULT_CONFIG, PYDOC_TOPICS, TINY_BUILTIN, HubServer, eli5_records, run_cli, write_pydoc_topics


@pytest.fixture(scope="session", autouse=True)
def pydoc_topics():
    """The folder of pydoc topics that TINY's runs read, written once a session."""
    write_pydoc_topics()
    return PYDOC_TOPICS


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A real tiny fit through `python -m tfclm fit --config configs/default.yaml`."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", out])
    assert result.exit_code == 0, result.output
    return out, result.output


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
SLOW_FIXTURES = {"trained_dir", "hub", "trl_figures"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture()
def hub():
    server = HubServer()
    yield server
    server.stop()
