"""Where the text comes from: a Hub dataset, local files or folders, or the built-in corpus.

Every source ends as documents (strings): records are flattened
(`answers.text` becomes a column), the text is read by a dotted path or a
template of several fields, lists of strings are joined, and empty and
duplicate documents are dropped, so that no document stands in both the
training and the validation split.
"""

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from typing import Optional

import datasets
import numpy as np

from tfclm.config import DataConfig
from tfclm.data import corpus
from tfclm.errors import ConfigError, first_line
from tfclm.files import looks_local

# The `datasets` builder that reads each kind of local file; .txt is read by tfclm itself.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
EXTENSIONS = (".txt", *FILE_BUILDERS)
_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")
_FIELD = re.compile(r"\{([^{}]+)\}")


def parse_split(split: str, key: str = "data.split") -> tuple[str, Optional[str], Optional[str]]:
    """`train[:5000]` -> ("train", None, "5000"); raises on anything else."""
    match = _SPLIT.match(split.replace(" ", ""))
    if not match:
        raise ConfigError(
            key,
            f"{split!r} is not a split name with an optional slice; write it like train, train[:5000] or train[10%:]",
        )
    return match["name"], match["start"], match["stop"]


def _slice_bound(text: Optional[str], length: int) -> Optional[int]:
    if text is None:
        return None
    return int(length * int(text[:-1]) / 100) if text.endswith("%") else int(text)


def _is_saved(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")
    )


def _txt_files(path: str) -> list[str]:
    """The .txt files of a file or folder, when that is all it holds; else []."""
    if os.path.isfile(path):
        return [path] if path.lower().endswith(".txt") else []
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if not f.startswith("."))
    return files if files and all(f.lower().endswith(".txt") for f in files) else []


def check_local(source: str) -> None:
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in EXTENSIONS:
            raise ConfigError(
                "data.dataset", f"{source!r} has an unknown extension {ext!r}; use one of {', '.join(EXTENSIONS)}"
            )
    elif not os.path.isdir(source) and looks_local(source):
        raise ConfigError(
            "data.dataset",
            f"{source!r} does not exist; give an existing file or folder, a Hub dataset id, or builtin:pydoc",
        )


def txt_documents(paths: list[str], mode: str) -> Iterator[str]:
    """Documents of .txt files: a whole file, a blank-line-separated paragraph, or a line each; read lazily."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                if mode == "file":
                    yield handle.read()
                elif mode == "line":
                    yield from (line.rstrip("\r\n") for line in handle)
                else:
                    paragraph = []
                    for line in handle:
                        if line.strip():
                            paragraph.append(line)
                        elif paragraph:
                            yield "".join(paragraph).rstrip("\r\n")
                            paragraph = []
                    if paragraph:
                        yield "".join(paragraph).rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(
                "data.dataset", f"{path!r} is not UTF-8 text; convert it (iconv -t utf-8) or remove it"
            ) from None


def _load_saved(path: str, split: str):
    loaded = datasets.load_from_disk(path)
    name, start, stop = parse_split(split)
    if isinstance(loaded, datasets.DatasetDict):
        if name not in loaded:
            raise ConfigError("data.split", f"{path!r} has no split {name!r}; its splits are: {', '.join(loaded)}")
        loaded = loaded[name]
    rows = range(len(loaded))[slice(_slice_bound(start, len(loaded)), _slice_bound(stop, len(loaded)))]
    return loaded.select(rows) if len(rows) != len(loaded) else loaded


def not_utf8(source: str) -> ConfigError:
    return ConfigError("data.dataset", f"{source!r} is not UTF-8 text; convert it (iconv -t utf-8) or remove it")


def _caused_by(exc: BaseException, kind) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _failed(source: str, split: str, exc: Exception) -> ConfigError:
    if _caused_by(exc, UnicodeDecodeError):  # datasets wraps it in a DatasetGenerationError that says nothing of it
        return not_utf8(source)
    return ConfigError(
        "data.dataset",
        f"could not load {source!r} (split {split!r}): {first_line(exc)}; "
        "check the id, data.config_name and data.split, or pass a local file or folder",
    )


def load_records(data: DataConfig, streaming: bool = False):
    """The `datasets.Dataset` (or `IterableDataset`) named by `data.dataset`, before any text selection."""
    source, split = data.dataset, data.split
    name, start, stop = parse_split(split)  # a clear error before `datasets` gives a long one
    check_local(source)
    try:
        if _is_saved(source):
            records = _load_saved(source, split)
            return records.to_iterable_dataset() if streaming else records
        if streaming and (start or stop):
            if any(b and b.endswith("%") for b in (start, stop)):
                raise ConfigError(
                    "data.split",
                    f"{split!r}: a stream has no known length, so slice it by counts (train[:5000]), not percentages",
                )
            split = name
        if os.path.isfile(source):
            builder = FILE_BUILDERS[os.path.splitext(source)[1].lower()]
            records = datasets.load_dataset(builder, data_files={name: source}, split=split, streaming=streaming)
        else:
            records = datasets.load_dataset(source, name=data.config_name, split=split, streaming=streaming)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types for one cause: it could not read that source
        raise _failed(source, split, exc) from None
    if streaming and (start or stop):
        first = int(start or 0)
        records = records.skip(first)
        if stop:
            records = records.take(int(stop) - first)
    return records


def _as_text(value, separator: str, column: str, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) or v is None for v in value):
        return separator.join(v for v in value if v)
    raise ConfigError(
        key,
        f"column {column!r} holds {type(value).__name__} values, not text; choose a column of strings or lists of "
        f"strings",
    )


def text_fields(data: DataConfig) -> tuple[list[str], str]:
    """The fields a document is made of, and the config key that names them."""
    if data.text_template:
        fields = _FIELD.findall(data.text_template)
        if not fields:
            raise ConfigError(
                "data.text_template", "names no field; write fields in braces, such as '{title}\\n{answers.text}'"
            )
        return fields, "data.text_template"
    return [data.text_column], "data.text_column"


def render(data: DataConfig, values: dict) -> str:
    fields, key = text_fields(data)
    texts = {f: _as_text(values[f], data.join_separator, f, key) for f in fields}
    if not data.text_template:
        return texts[fields[0]]
    return _FIELD.sub(lambda m: texts[m.group(1)], data.text_template)


def select_texts(records, data: DataConfig) -> list[str]:
    """Flatten nested records and render each as one document."""
    flat = records.flatten()
    fields, key = text_fields(data)
    missing = [f for f in fields if f not in flat.column_names]
    if missing:
        raise ConfigError(key, f"no column {missing[0]!r}; the columns are: {', '.join(flat.column_names)}")
    columns = [flat[f] for f in fields]
    return [render(data, dict(zip(fields, row))) for row in zip(*columns)]


def lookup(record: dict, path: str, key: str):
    """A dotted path in a nested record: `answers.text` -> record["answers"]["text"]."""
    if path in record:
        return record[path]
    node = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(key, f"no field {path!r}; the record's fields are: {', '.join(record)}")
        node = node[part]
    return node


def iter_texts(data: DataConfig) -> Iterator[str]:
    """Every document of the source, in order, without holding them all in memory."""
    if corpus.is_builtin(data.dataset):
        yield from corpus.iter_builtin(data.dataset)
        return
    # A missing path or an unknown extension gives no .txt files; load_records then says which.
    txt = _txt_files(data.dataset) if os.path.exists(data.dataset) else []
    if txt:
        yield from txt_documents(txt, data.txt_document)
        return
    fields, key = text_fields(data)
    try:
        for record in load_records(data, streaming=True):
            yield render(data, {f: lookup(record, f, key) for f in fields})
    except UnicodeDecodeError:
        raise not_utf8(data.dataset) from None


def load_texts(data: DataConfig) -> Iterable[str]:
    if corpus.is_builtin(data.dataset):
        return corpus.iter_builtin(data.dataset)
    # A missing path or an unknown extension gives no .txt files; load_records then says which.
    txt = _txt_files(data.dataset) if os.path.exists(data.dataset) else []
    if txt:
        return list(txt_documents(txt, data.txt_document))
    try:
        return select_texts(load_records(data), data)
    except UnicodeDecodeError:  # a JSON string holding a bad byte loads, and fails when read
        raise not_utf8(data.dataset) from None


def unique_documents(texts, limit: Optional[int] = None) -> Iterator[str]:
    """Drop empty and repeated documents, keeping the first of each in order; stop after `limit`."""
    seen = set()
    kept = 0
    for text in texts:
        key = text.strip()
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if key and digest not in seen:
            seen.add(digest)
            kept += 1
            yield text
            if limit is not None and kept >= limit:
                return


def load_documents(data: DataConfig) -> list[str]:
    documents = list(unique_documents(load_texts(data), data.max_documents))
    if not documents:
        raise ConfigError(
            "data.dataset",
            f"{data.dataset!r} gave no non-empty document; check data.text_column and that the source holds text",
        )
    return documents


def split_documents(documents: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by document, before packing, so no block mixes the two sides."""
    order = np.random.default_rng(seed).permutation(len(documents))
    n_eval = min(max(1, round(len(documents) * fraction)), len(documents) - 1)
    eval_idx, train_idx = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    return [documents[i] for i in train_idx], [documents[i] for i in eval_idx]


def validation_source(data: DataConfig) -> Optional[DataConfig]:
    """The DataConfig that reads the validation documents, or None for a seeded fraction of the training source."""
    choice = data.validation_split
    if isinstance(choice, float):
        return None
    if os.path.exists(choice):
        return dataclasses.replace(data, dataset=choice, split="train", config_name=None, max_documents=None)
    if corpus.is_builtin(data.dataset):
        raise ConfigError(
            "data.validation_split", f"{data.dataset} has one split; use a fraction such as 0.2, or a file"
        )
    parse_split(choice, "data.validation_split")
    return dataclasses.replace(data, split=choice, max_documents=None)


def describe_validation(data: DataConfig, n_train: int, n_eval: int) -> str:
    choice = data.validation_split
    if isinstance(choice, float):
        return f"validation: a seeded {choice:.0%} of the documents ({n_eval:,} of {n_train + n_eval:,})"
    if os.path.exists(choice):
        return f"validation: {n_eval:,} documents from {choice}"
    return f"validation: {n_eval:,} documents from split {choice!r} of {data.dataset}"


def train_and_validation(data: DataConfig, seed: int) -> tuple[list[str], list[str], str]:
    """(training documents, validation documents, a line that says how validation was chosen)."""
    documents = load_documents(data)
    other = validation_source(data)
    if other is None:
        if len(documents) < 2:
            raise ConfigError(
                "data.dataset",
                f"{data.dataset!r} gave 1 distinct document; splitting needs at least 2 (one to train on, one to "
                f"evaluate), or set data.validation_split to a file",
            )
        train, val = split_documents(documents, data.validation_split, seed)
    else:
        val = list(unique_documents(load_texts(other)))
        if not val:
            raise ConfigError(
                "data.validation_split", f"{data.validation_split!r} gave no non-empty document; point it at text"
            )
        held_out = {v.strip() for v in val}
        train = [d for d in documents if d.strip() not in held_out]  # a document in both would flatter the model
        if not train:
            raise ConfigError(
                "data.validation_split",
                "every training document is also in the validation data; use a different split or file",
            )
    return train, val, describe_validation(data, len(train), len(val))


def record_field(record: dict, path: str, key: str, index: int):
    """The value at `path`; missing or null (a JSON lines record without it) is an error naming the record."""
    try:
        value = lookup(record, path, key)
    except ConfigError:
        value = None
    if value is None:
        fields = ", ".join(name for name, v in record.items() if v is not None)
        raise ConfigError(key, f"record {index} has no field {path!r}; its fields are: {fields}")
    return value
