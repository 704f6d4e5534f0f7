"""The package's shape: import directions between stages, module sizes, a fast --help, the public API."""

import ast
import os
import subprocess
import sys

import pytest

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "tfclm")

# Importer prefix -> what it must never import. Earlier stages never import later ones; the run (tfclm.run) sits
# above every stage, and only the CLI and tfclm.fit import it; the server (tfclm.serve) only the CLI.
LATER = ("tfclm.run", "tfclm.cli", "tfclm.serve")
FORBIDDEN = {
    "tfclm.config": ("tfclm.data", "tfclm.model", "tfclm.training", "tfclm.evaluation", "tfclm.generation", "tfclm.hub",
                     "tfclm.tracking", *LATER),
    "tfclm.data": ("tfclm.model", "tfclm.training", "tfclm.evaluation", "tfclm.generation", "tfclm.hub", *LATER),
    "tfclm.model": ("tfclm.training", "tfclm.evaluation", "tfclm.generation", "tfclm.hub", *LATER),
    # Evaluation may generate (the harness's generation tasks); generation never evaluates.
    "tfclm.evaluation": ("tfclm.training", "tfclm.hub", "tfclm.tracking", *LATER),
    "tfclm.generation": ("tfclm.training", "tfclm.evaluation", "tfclm.hub", "tfclm.tracking", *LATER),
    "tfclm.training.callbacks": ("tfclm.config", *LATER),
    # Training is below the Hub and the trackers, which count its steps; the run puts them all together.
    "tfclm.training": ("tfclm.hub", "tfclm.tracking", *LATER),
    "tfclm.hub": ("tfclm.tracking", "tfclm.training.trainer", *LATER),
    "tfclm.tracking": ("tfclm.config", "tfclm.hub", "tfclm.training.trainer", *LATER),
    "tfclm.run": ("tfclm.cli", "tfclm.serve"),
    # The server stands on generation and the model, beside the run: only the CLI starts it.
    "tfclm.serve": ("tfclm.training", "tfclm.evaluation", "tfclm.hub", "tfclm.tracking", "tfclm.run", "tfclm.cli"),
    "tfclm.callbacks": LATER,
    "tfclm.auto": ("tfclm.training", "tfclm.hub", "tfclm.tracking", *LATER),
}  # fmt: skip


def module_name(root: str, path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(root))[: -len(".py")].replace(os.sep, ".")
    return relative.removesuffix(".__init__")


def imported_modules(path: str) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(root: str) -> list[str]:
    """'importer -> imported' for every import that goes against the stages' direction."""
    found = []
    for directory, _, filenames in os.walk(root):
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = os.path.join(directory, filename)
            importer = module_name(root, path)
            for prefix, banned in FORBIDDEN.items():
                if importer == prefix or importer.startswith(prefix + "."):
                    for name in sorted(imported_modules(path)):
                        if any(name == b or name.startswith(b + ".") for b in banned):
                            found.append(f"{importer} -> {name}")
    return sorted(set(found))


def test_stages_import_only_earlier_stages():
    assert forbidden_imports(PACKAGE) == []


def test_the_import_check_catches_a_forbidden_import(tmp_path):
    data = tmp_path / "tfclm" / "data"
    data.mkdir(parents=True)
    (data / "packing.py").write_text("import numpy\n\ndef f():\n    from tfclm.run.fit import fit\n")
    (tmp_path / "tfclm" / "generation").mkdir()
    (tmp_path / "tfclm" / "generation" / "x.py").write_text("from tfclm.data import packing\nimport tfclm.training\n")
    assert forbidden_imports(str(tmp_path / "tfclm")) == [
        "tfclm.data.packing -> tfclm.run.fit",
        "tfclm.data.packing -> tfclm.run.fit.fit",
        "tfclm.generation.x -> tfclm.training",
    ]


def import_cycles(root: str) -> list[list[str]]:
    """The groups of tfclm modules that import each other, round and round (imports inside functions too)."""
    paths = {}
    for directory, _, filenames in os.walk(root):
        paths.update({module_name(root, os.path.join(directory, f)): os.path.join(directory, f) for f in filenames
                      if f.endswith(".py")})  # fmt: skip
    graph = {name: imported_from(path, paths) - {name} for name, path in paths.items()}
    cycles, done = [], set()
    for start in sorted(graph):  # the modules that reach `start` and that `start` reaches: its cycle
        if start in done:
            continue
        reach = _reachable(graph, start)
        group = sorted(m for m in reach if m == start or start in _reachable(graph, m))
        if start in reach:
            cycles.append(group)
        done.update(group)
    return cycles


def imported_from(path: str, modules) -> set[str]:
    """The tfclm modules a file imports; `from package import module` imports the module, as Python resolves it."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return found & set(modules)


def _reachable(graph: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_no_import_cycle():
    assert import_cycles(PACKAGE) == []


def test_the_cycle_check_catches_a_cycle(tmp_path):
    data = tmp_path / "tfclm" / "data"
    data.mkdir(parents=True)
    (data / "chat.py").write_text("def f():\n    from tfclm.data.examples import field\n")
    (data / "examples.py").write_text("from tfclm.data import chat\n")
    (data / "packing.py").write_text("from tfclm.data import chat\n")
    assert import_cycles(str(tmp_path / "tfclm")) == [["tfclm.data.chat", "tfclm.data.examples"]]


def test_top_level_is_small_and_no_module_is_long():
    top = sorted(name for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")
    assert len(top) <= 6, top
    long = []
    for directory, _, filenames in os.walk(PACKAGE):
        for filename in filenames:
            if filename.endswith(".py"):
                path = os.path.join(directory, filename)
                lines = sum(1 for _ in open(path, encoding="utf-8"))
                if lines > 350:
                    long.append((os.path.relpath(path, ROOT), lines))
    assert long == []


def test_tensorflow_is_loaded_in_one_place():
    """Every module gets TensorFlow and Keras from tfclm.backend; only backend imports them itself."""
    direct = []
    for directory, _, filenames in os.walk(PACKAGE):
        for filename in filenames:
            path = os.path.join(directory, filename)
            if filename.endswith(".py") and module_name(PACKAGE, path) != "tfclm.backend":
                direct += [
                    f"{module_name(PACKAGE, path)}: {name}"
                    for name in imported_modules(path)
                    if name.split(".")[0] in ("tensorflow", "tf_keras", "keras")
                ]
    assert direct == []


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["serve", "--help"], ["config"], ["families"]])
def test_help_does_not_import_tensorflow(args):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tfclm", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "tfclm.cli" in imported and "click" in imported  # the import log is what it claims to be
    assert not {name for name in imported if name.split(".")[0] in ("tensorflow", "tf_keras", "transformers")}


def test_public_api():
    import tfclm
    from tfclm.callbacks import (  # noqa: F401
        CheckpointCallback,
        PerplexityCallback,
        PushToHubCallback,
        SampleTextCallback,
        StepHistory,
        StopAfterSteps,
        StopOnNonFiniteLoss,
        ThroughputCallback,
    )
    from tfclm.config import Config, load_config  # noqa: F401

    assert callable(tfclm.fit) and callable(tfclm.generate)
    assert tfclm.callbacks.PerplexityCallback is PerplexityCallback
    for name in tfclm.callbacks.__all__:
        assert issubclass(getattr(tfclm.callbacks, name), tfclm.backend.keras.callbacks.Callback), name
    # Importing the run module must not replace the public function (the old tfclm/fit.py did).
    import tfclm.run.fit  # noqa: F401

    assert callable(tfclm.fit) and tfclm.fit.__module__ == "tfclm"


def test_docs_config_table_is_the_generated_one():
    from tfclm.config.reference import readme_table, render_markdown

    page = open(os.path.join(ROOT, "docs", "reference", "config.md"), encoding="utf-8").read()
    assert readme_table(page) == render_markdown()


def test_config_command_prints_every_key_and_resolved_values(tmp_path):
    from tfclm.config.reference import rows

    from helpers import RECIPE_CONFIG, run_cli

    keys = [key for key, *_ in rows()]
    assert len(keys) == 93 and "data.messages_column" in keys and "preference.beta" in keys
    defaults = run_cli(["config"])
    assert defaults.exit_code == 0
    assert [line.split()[0] for line in defaults.stdout.splitlines()] == keys
    resolved = run_cli(["config", "--config", RECIPE_CONFIG, "--set", "train.epochs=1"])
    lines = {line.split()[0]: line.split()[1] for line in resolved.stdout.splitlines()}
    assert lines["model.name_or_path"] == "distilbert/distilgpt2" and lines["train.epochs"] == "1"
    bad = run_cli(["config", "--config", RECIPE_CONFIG, "--set", "train.epoch=1"])
    assert bad.exit_code == 2 and "train.epoch: unknown key" in bad.output


def test_library_lines_go_to_the_tfclm_logger(caplog, tmp_path):
    import logging

    from tfclm.data.tokenizer import trained_tokenizer

    with caplog.at_level(logging.INFO, logger="tfclm"):
        trained_tokenizer(["the list type holds items"] * 4, 270, str(tmp_path / "cache"))
    assert [r.name for r in caplog.records] == ["tfclm.data.tokenizer"]
    assert caplog.records[0].getMessage().startswith("tokenizer: trained a byte-level BPE of 270 tokens")
    caplog.clear()
    logging.getLogger("tfclm").setLevel(logging.WARNING)  # how a Python user quiets tfclm
    try:
        with caplog.at_level(logging.NOTSET):
            trained_tokenizer(["the list type holds items"] * 4, 270, str(tmp_path / "cache"))
    finally:
        logging.getLogger("tfclm").setLevel(logging.NOTSET)
    assert caplog.records == []


def test_no_test_file_imports_another():
    """Shared helpers live in tests/helpers.py (and fixtures in conftest.py), never in a test file or conftest."""
    tests = os.path.join(ROOT, "tests")
    found = []
    for filename in sorted(os.listdir(tests)):
        if filename.endswith(".py"):
            imported = imported_modules(os.path.join(tests, filename))
            found += [f"{filename} -> {m}" for m in sorted(imported) if m.startswith("test_") or m == "conftest"]
    assert found == []
