"""Where the text comes from: a Hub dataset, local files or folders, or the built-in corpus.

Every source ends as a list of documents (strings): the records are
flattened (`answers.text` becomes a column), the text column is selected by
its dotted path, lists of strings are joined, and empty and duplicate
documents are dropped, so that no document stands in both the training and
the validation split.
"""
import os
import re
from typing import Optional

import numpy as np

from tfclm import corpus
from tfclm.config import DataConfig
from tfclm.errors import ConfigError

# The `datasets` builder that reads each kind of local file.
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def parse_split(split: str) -> tuple[str, Optional[str], Optional[str]]:
    """`train[:5000]` -> ("train", None, "5000"); raises on anything else."""
    match = _SPLIT.match(split.replace(" ", ""))
    if not match:
        raise ConfigError("data.split", f"{split!r} is not a split name with an optional slice; write it like train, train[:5000] or train[10%:]")
    return match["name"], match["start"], match["stop"]


def _slice_bound(text: Optional[str], length: int) -> Optional[int]:
    if text is None:
        return None
    if text.endswith("%"):
        return int(length * int(text[:-1]) / 100)
    return int(text)


def _load_saved(path: str, split: str):
    import datasets

    loaded = datasets.load_from_disk(path)
    name, start, stop = parse_split(split)
    if isinstance(loaded, datasets.DatasetDict):
        if name not in loaded:
            raise ConfigError("data.split", f"{path!r} has no split {name!r}; its splits are: {', '.join(loaded)}")
        loaded = loaded[name]
    rows = range(len(loaded))[slice(_slice_bound(start, len(loaded)), _slice_bound(stop, len(loaded)))]
    return loaded.select(rows) if len(rows) != len(loaded) else loaded


def load_records(data: DataConfig):
    """The raw `datasets.Dataset` named by `data.dataset`, before any text selection."""
    import datasets

    source = data.dataset
    parse_split(data.split)  # a clear error before `datasets` gives a long one
    try:
        if os.path.isdir(source) and (
            os.path.exists(os.path.join(source, "state.json")) or os.path.exists(os.path.join(source, "dataset_dict.json"))
        ):
            return _load_saved(source, data.split)
        if os.path.isfile(source):
            ext = os.path.splitext(source)[1].lower()
            if ext not in FILE_BUILDERS:
                raise ConfigError("data.dataset", f"{source!r} has an unknown extension {ext!r}; use one of {', '.join(FILE_BUILDERS)}")
            return datasets.load_dataset(FILE_BUILDERS[ext], data_files={"train": source}, split=data.split)
        if os.path.isdir(source):
            return datasets.load_dataset(source, name=data.config_name, split=data.split)
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise ConfigError("data.dataset", f"{source!r} does not exist; give an existing file or folder, a Hub dataset id, or builtin:pydoc")
        return datasets.load_dataset(source, name=data.config_name, split=data.split)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types for one cause: it could not read that source
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            "data.dataset",
            f"could not load {source!r} (split {data.split!r}): {type(exc).__name__}: {first_line[:300]}; "
            "check the id, data.config_name and data.split, or pass a local file or folder",
        ) from None


def _as_text(value, separator: str, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) or v is None for v in value):
        return separator.join(v for v in value if v)
    raise ConfigError("data.text_column", f"column {column!r} holds {type(value).__name__} values, not text; choose a column of strings or lists of strings")


def select_texts(records, data: DataConfig) -> list[str]:
    """Flatten nested records and read `data.text_column` as one string per record."""
    flat = records.flatten()
    column = data.text_column
    if column not in flat.column_names:
        raise ConfigError("data.text_column", f"no column {column!r}; the columns are: {', '.join(flat.column_names)}")
    return [_as_text(value, data.join_separator, column) for value in flat[column]]


def unique_documents(texts: list[str]) -> list[str]:
    """Drop empty and repeated documents, keeping the first of each in order."""
    seen = set()
    kept = []
    for text in texts:
        key = text.strip()
        if key and key not in seen:
            seen.add(key)
            kept.append(text)
    return kept


def load_documents(data: DataConfig) -> list[str]:
    if corpus.is_builtin(data.dataset):
        texts = corpus.load_builtin(data.dataset)
    else:
        texts = select_texts(load_records(data), data)
    documents = unique_documents(texts)
    if data.max_documents is not None:
        documents = documents[: data.max_documents]
    if len(documents) < 2:
        raise ConfigError("data.dataset", f"{data.dataset!r} gave {len(documents)} non-empty distinct document(s); tfclm needs at least 2 (one to train on, one to evaluate)")
    return documents


def split_documents(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by document, before packing, so no block mixes the two sides."""
    order = np.random.default_rng(seed).permutation(len(documents))
    n_eval = min(max(1, round(len(documents) * fraction)), len(documents) - 1)
    eval_idx, train_idx = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    return [documents[i] for i in train_idx], [documents[i] for i in eval_idx]
