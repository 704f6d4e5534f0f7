"""File output that a crash cannot half-write, and the path rules every input shares.

Every file tfclm writes goes to a temporary name beside its target and is
renamed into place, so a run killed mid-write leaves the old file or the new
one, never half of one.
"""

import fcntl
import fnmatch
import json
import os
import shutil
import tempfile

from tfclm.errors import ConfigError

# mkstemp creates files readable by their owner only; tfclm's outputs should
# get the same permissions as any other file the user creates.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Every temporary name tfclm writes starts so: what a killed run leaves of them is tfclm's to remove.
TEMP_PREFIX = ".tmp-"


def looks_local(name: str) -> bool:
    """True for a path on this machine (existing, or written like one); False for a Hub id such as `user/name`."""
    return os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def parents(path: str):
    """`path`'s ancestors, nearest first."""
    path = os.path.abspath(path)
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        yield path


def check_dir_target(path: str, key: str, flag: str) -> None:
    """`path` is a directory, or a path where one can be made: not a file, and not under one."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(key, f"{path!r} is a file, not a directory; choose a directory for {flag}")
    parent = next((p for p in parents(path) if os.path.exists(p)), None)
    if parent is not None and not os.path.isdir(parent):
        raise ConfigError(key, f"{path!r} lies under {parent!r}, which is a file; choose another {flag}")


def overlapping(a: str, b: str) -> bool:
    """Whether one path is, lies in or holds the other (links resolved)."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def check_apart(output: str, reads: dict, key: str) -> None:
    """What a command writes (`output`) must neither be, lie in, nor hold anything it reads ({what: path}; Hub
    ids and None pass): a replaced or cleared output would take an input with it."""
    for what, path in reads.items():
        if path and looks_local(path) and overlapping(output, path):
            raise ConfigError(
                key,
                f"{output!r} is, lies in or holds {what} {path!r}, which this command reads and must not replace; "
                "choose a path outside it",
            )


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_arrays(path: str, arrays: dict) -> None:
    """numpy arrays by name, as one .npz written atomically."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: str, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# What a tokenizer's `save_pretrained` writes (the files of every kind of tokenizer, and its chat template).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja",
)  # fmt: skip
# What `save_pretrained` of a model, its LoRA adapters, generation config and tokenizer writes: one model's files.
MODEL_FILES = (
    "config.json", "generation_config.json", "tf_model.h5", "tf_model.h5.index.json", "tf_model-*-of-*.h5",
    "adapter_config.json", "adapter_model.safetensors", *TOKENIZER_FILES,
)  # fmt: skip


# The first line of the README.md that tfclm writes into an adapter dir: a README without it is the user's.
ADAPTER_README_MARK = "<!-- written by tfclm beside LoRA adapters; replaced with them -->"


def _tfclm_readme(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == ADAPTER_README_MARK
    except (OSError, UnicodeDecodeError):
        return False


def save_pretrained_atomic(objects, output_dir: str, replaces: tuple = ()) -> None:
    """`save_pretrained` each object into a temporary folder, then move each file into place; files matching
    `replaces` (name patterns) that this save did not write go, being an earlier model's, and so does the README
    of an earlier LoRA run (never a README of the user's)."""
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}save-", dir=output_dir)
    try:
        for obj in objects:
            obj.save_pretrained(staging)
        written = set(os.listdir(staging))
        if "README.md" in written and os.path.exists(os.path.join(output_dir, "README.md")):
            if not _tfclm_readme(os.path.join(output_dir, "README.md")):  # the user's stays
                written.discard("README.md")
        for name in sorted(written):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in sorted(set(os.listdir(output_dir)) - written):
        path = os.path.join(output_dir, name)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in replaces) or (
            name == "README.md" and replaces and _tfclm_readme(path)
        ):
            os.unlink(path)


def landing_dir(directory: str) -> str:
    """Where a save into `directory` ends up: its parent for a `save_pretrained_atomic` staging folder."""
    if os.path.basename(os.path.normpath(directory)).startswith(TEMP_PREFIX):
        return os.path.dirname(os.path.normpath(directory))
    return directory


def remove_temporaries(directory: str) -> None:
    """Remove what killed runs' atomic writes left in `directory`; only while holding its DirLock."""
    for name in os.listdir(directory):
        if name.startswith(TEMP_PREFIX):
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


class OutputDir:
    """A run's output directory: the one place that knows the names of its files, and writes the run's own.

    `out / OutputDir.RESULTS` is a file's path. What else lies there: the model's and tokenizer's files
    (MODEL_FILES, TOKENIZER_FILES) and, with no tracking URI of their own, the trackers' (TRACKER_FILES).
    """

    CONFIG = "tfclm.yaml"  # the resolved config
    RESULTS = "results.json"
    CHECKPOINTS = "checkpoints"  # the checkpoints, each with its run state ckpt-N.json
    CACHE = "cache"  # the trained tokenizer and the packed blocks
    LOGS = "logs"  # TensorBoard's
    CURVES = "training_curves.png"
    LOCK = ".tfclm.lock"  # held while a run writes here (DirLock)
    CARD = "README.md"  # the model card, or the README of an adapter dir
    TRACKER_FILES = ("mlflow.db", "mlruns", "wandb")

    def __init__(self, path: str):
        self.path = path

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_config(self, text: str) -> None:
        atomic_write_text(self / self.CONFIG, text)

    def write_results(self, results: dict) -> None:
        atomic_write_json(self / self.RESULTS, results)

    def read(self, name: str):
        """A JSON or YAML (safe_load) file of the dir, parsed, or None where there is none."""
        import yaml

        path = self / name
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f) if name.endswith(".json") else yaml.safe_load(f)


class DirLock:
    """An advisory lock on a directory for the length of a run; the kernel drops it when the process dies.

    A second run into the same directory stops with a one-line error naming the holder's PID.
    """

    NAME = OutputDir.LOCK

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, self.NAME)
        self._fd = None
        self._made = []  # what acquire created, newest first: removed again if the run is refused

    def acquire(self) -> "DirLock":
        from tfclm.errors import ConfigError

        if not os.path.isdir(self.directory):
            os.makedirs(self.directory)
            self._made.append(self.directory)
        if not os.path.exists(self.path):
            self._made.insert(0, self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                "output_dir",
                f"{self.directory!r} is in use by another tfclm run (PID {holder}); wait for it to end, "
                "or choose another --output-dir",
            ) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:  # a full disk: the lock file, and a dir made for it, must not stay behind
            self.release(undo=True)
            raise
        return self

    def release(self, undo: bool = False) -> None:
        """Unlock; with `undo` (a run refused before it wrote anything), also remove what acquire created."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        for path in self._made if undo else ():
            if os.path.isdir(path):
                if not os.listdir(path):
                    os.rmdir(path)
            elif os.path.exists(path):
                os.unlink(path)


def read_text_file(text_file: str) -> str:
    try:
        with open(text_file, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "--text-file",
            f"cannot read {text_file!r} as UTF-8 text ({type(exc).__name__}); pass a readable UTF-8 text file",
        ) from None
    if not text.strip():
        raise ConfigError("--text-file", f"{text_file!r} holds no text; pass a file with text to evaluate on")
    return text
