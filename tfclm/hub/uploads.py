"""Pushing to the Hugging Face Hub over its HTTP commit API: no git, no git-lfs.

Uploads run in the background, one at a time and in order, each from a
snapshot of the folder (hard links where possible), so training never waits
for the network and a later save cannot change files mid-upload. A failed
upload is retried with exponential backoff, then reported; it never stops
training. Only the chief worker pushes. The token comes from the caller,
HF_TOKEN or the huggingface_hub login, and tfclm never prints or writes it.
"""

import fnmatch
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor

from tfclm.errors import ConfigError, first_line
from tfclm.files import OutputDir
from tfclm.hub.modelcard import model_card
from tfclm.model.adapter_files import read_adapter_config
from tfclm.model.loading import check_model_dir
from tfclm.model.lora import is_adapter_dir

logger = logging.getLogger(__name__)

# What never goes to the Hub: tfclm's caches, temporary files, its run lock, and (unless asked) the checkpoints.
# Never pushed: caches, checkpoints (unless hub.checkpoint), temporaries, the lock, and trackers' local stores.
DEFAULT_IGNORE = (
    "cache/*", "checkpoints/*", ".tmp-*", "*.tmp-*", ".tfclm.lock", "mlflow.db", "mlruns/*", "wandb/*",
)  # fmt: skip


def ignored(relative_path: str, patterns) -> bool:
    """Whether a path inside the pushed folder (with / separators) matches an ignore pattern; `*` spans folders."""
    return any(fnmatch.fnmatchcase(relative_path, pattern) for pattern in patterns)


def _snapshot(folder: str, ignore) -> str:
    """A copy of `folder` that later saves cannot touch, without what `ignore` names.

    Files are hard links where possible (saves replace files, never rewrite them), so the copy is made
    beside the folder, on the same filesystem; where that is not writable, in the temp dir, as copies.
    """
    folder = os.path.abspath(folder)
    try:
        target = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-push-", dir=os.path.dirname(folder))
    except OSError:
        target = tempfile.mkdtemp(prefix="tfclm-push-")
    for directory, dirnames, filenames in os.walk(folder):
        base = os.path.relpath(directory, folder).replace(os.sep, "/")
        base = "" if base == "." else base + "/"
        dirnames[:] = [d for d in dirnames if not ignored(f"{base}{d}/", ignore)]
        for name in filenames:
            if ignored(base + name, ignore):
                continue
            source, copy = os.path.join(directory, name), os.path.join(target, base, name)
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            try:
                os.link(source, copy)
            except OSError:
                shutil.copy2(source, copy)
    return target


class Uploader:
    """Commits snapshots of folders to one Hub repo, in the background, with retries."""

    def __init__(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        max_retries: int = 3,
        backoff: float = 1.0,
        log=None,
    ):
        from huggingface_hub import HfApi

        # HF_ENDPOINT is read here, not at import, so a process can point at another Hub after importing.
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
        self.repo_id = repo_id
        self.private = private
        self.max_retries = max_retries
        self.backoff = backoff
        self.log = log or logger.warning
        self.commits: list[str] = []
        self.failures: list[str] = []
        self._token = token
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfclm-push")
        self._futures: list[Future] = []

    def _safe(self, exc: Exception) -> str:
        text = first_line(exc)
        for secret in (self._token, os.environ.get("HF_TOKEN")):
            if secret and len(secret) >= 8:  # a short "token" would mask unrelated text; real ones are long
                text = text.replace(secret, "***")
        return text

    def _push(self, snapshot: str, message: str) -> str | None:
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
                    info = self.api.upload_folder(repo_id=self.repo_id, folder_path=snapshot, commit_message=message)
                    self.commits.append(info.oid)
                    return info.oid
                except Exception as exc:  # network, HTTP and server errors alike: retry, then report
                    if attempt == self.max_retries:
                        failure = f"{message!r}: {self._safe(exc)}"
                        self.failures.append(failure)
                        self.log(
                            f"hub: could not push {failure} to {self.repo_id} after {attempt + 1} tries; training "
                            f"goes on, "
                            f"and `python -m tfclm push --model DIR --repo-id {self.repo_id}` pushes it later"
                        )
                        return None
                    time.sleep(self.backoff * 2**attempt)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def submit(self, folder: str, message: str, ignore=DEFAULT_IGNORE, extra_files: dict | None = None) -> Future:
        snapshot = _snapshot(folder, ignore)
        for name, text in (extra_files or {}).items():
            path = os.path.join(snapshot, name)
            if os.path.lexists(path):
                os.unlink(path)  # a hard link to the folder's own file: writing through it would change that file
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        future = self._executor.submit(self._push, snapshot, message)
        self._futures.append(future)
        return future

    def close(self) -> None:
        """Wait for every upload in flight."""
        for future in self._futures:
            future.result()
        self._executor.shutdown(wait=True)


def default_repo_id(output_dir: str) -> str:
    return os.path.basename(os.path.abspath(output_dir))


def check_repo_id(repo_id: str, key: str) -> None:
    """A repo id the Hub can take, checked before any upload (and its retries) starts."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(
            key, f"{repo_id!r} is not a Hub repo id ({first_line(exc, 160)}); write it as user/name"
        ) from None


def push_dir(
    model_dir: str,
    repo_id: str,
    private: bool = False,
    checkpoint: bool = False,
    message: str = "Upload model trained with tfclm",
    token: str | None = None,
) -> str:
    """Push an existing output dir (model, tokenizer, tfclm.yaml, results.json, a model card); returns the commit id."""
    check_repo_id(repo_id, "--repo-id")
    if not (os.path.isdir(model_dir) and is_adapter_dir(model_dir)):  # adapters alone are a LoRA run's model
        check_model_dir(model_dir, "--model")
    else:
        read_adapter_config(model_dir, "--model")  # an adapter no reader could load is not pushed
    config, results = OutputDir(model_dir).read(OutputDir.CONFIG), OutputDir(model_dir).read(OutputDir.RESULTS)
    uploader = Uploader(repo_id, token=token, private=private, max_retries=2, log=lambda line: None)
    ignore = tuple(p for p in DEFAULT_IGNORE if not (checkpoint and p.startswith("checkpoints")))
    uploader.submit(model_dir, message, ignore, {"README.md": model_card(repo_id, config, results)})
    uploader.close()
    if uploader.failures:
        raise ConfigError(
            "--repo-id",
            f"could not push to {repo_id}: {uploader.failures[0]}; check HF_ENDPOINT, the token (HF_TOKEN or "
            f"huggingface-cli login) and the network",
        )
    return uploader.commits[-1]
