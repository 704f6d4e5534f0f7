"""The built-in offline corpus: Python's own documentation.

Every Python install ships it, so the default run needs no network: the
`pydoc_data.topics` help pages (language reference topics) and the
docstrings of the pure-Python standard library, read with `ast` so that no
module is imported (some print or open a browser on import).
"""

import ast
import inspect
import itertools
import os
import sysconfig
from collections.abc import Iterator

from tfclm.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
PYDOC = "builtin:pydoc"
NAMES = (PYDOC,)

# Test suites and their fixtures are full of throwaway docstrings and code
# that only parses on purpose-broken input; they are noise, not English.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics)]


def _module_docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and doc.strip():
                docs.append(inspect.cleandoc(doc))
    return docs


def stdlib_docstrings(stdlib: str | None = None) -> Iterator[str]:
    """One document per docstring of the standard library's modules, classes and functions, module by module in
    a fixed order, each module read only when the one before is used up.

    A docstring is a whole text with an end, so the model sees EOS every few
    dozen tokens and learns to stop; whole modules as documents averaged ~770
    tokens, and a model trained on them rarely ended a 100-token sample.
    """
    root = stdlib or sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                yield from _module_docstrings(os.path.join(dirpath, filename))


def iter_builtin(name: str) -> Iterator[str]:
    """The documents of a built-in corpus, in a fixed order, read as they are taken: a run that keeps the first
    `data.max_documents` parses no more of the standard library than it keeps (the pydoc topics come first)."""
    if name != PYDOC:
        raise ConfigError(
            "data.dataset", f"unknown built-in corpus {name!r}; the built-in corpora are: {', '.join(NAMES)}"
        )
    return itertools.chain(pydoc_topics(), stdlib_docstrings())


def load_builtin(name: str) -> list[str]:
    """The documents of a built-in corpus, in a fixed order."""
    return list(iter_builtin(name))
