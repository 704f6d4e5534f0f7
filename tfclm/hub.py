"""Pushing to the Hugging Face Hub over its HTTP commit API: no git, no git-lfs.

Uploads run in the background, one at a time and in order, each from a
snapshot of the folder (hard links where possible), so training never waits
for the network and a later save cannot change files mid-upload. A failed
upload is retried with exponential backoff, then reported; it never stops
training. Only the chief worker pushes. The token comes from the caller,
HF_TOKEN or the huggingface_hub login, and tfclm never prints or writes it.
"""
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor

from tfclm.backend import load
from tfclm.distribute import is_chief
from tfclm.errors import ConfigError
from tfclm.io import atomic_write_text, save_pretrained_atomic
from tfclm.modelcard import check_card_args, model_card

tf, keras = load()

# What never goes to the Hub: tfclm's caches, temporary files, and (unless asked) the resumable checkpoints.
DEFAULT_IGNORE = ("cache/*", "checkpoints/*", ".tmp-*", "*.tmp-*")


def _snapshot(folder: str, ignore) -> str:
    """A copy of `folder` that later saves cannot touch: hard links (saves replace files, never rewrite them)."""
    target = tempfile.mkdtemp(prefix="tfclm-push-")

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(folder, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*(p.rstrip("/*") for p in ignore)), copy_function=link)
    return target


class Uploader:
    """Commits snapshots of folders to one Hub repo, in the background, with retries."""

    def __init__(self, repo_id: str, token: str | None = None, private: bool | None = None, max_retries: int = 3, backoff: float = 1.0, log=print):
        from huggingface_hub import HfApi

        # HF_ENDPOINT is read here, not at import, so a process can point at another Hub after importing.
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
        self.repo_id = repo_id
        self.private = private
        self.max_retries = max_retries
        self.backoff = backoff
        self.log = log
        self.commits: list[str] = []
        self.failures: list[str] = []
        self._token = token
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfclm-push")
        self._futures: list[Future] = []

    def _safe(self, exc: Exception) -> str:
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        for secret in (self._token, os.environ.get("HF_TOKEN")):
            if secret:
                text = text.replace(secret, "***")
        return f"{type(exc).__name__}: {text}"

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
                            f"hub: could not push {failure} to {self.repo_id} after {attempt + 1} tries; training goes on, "
                            f"and `python -m tfclm push --model DIR --repo-id {self.repo_id}` pushes it later"
                        )
                        return None
                    time.sleep(self.backoff * 2**attempt)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def submit(self, folder: str, message: str, ignore=DEFAULT_IGNORE, extra_files: dict | None = None) -> Future:
        snapshot = _snapshot(folder, ignore)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(snapshot, name), "w", encoding="utf-8") as handle:
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


def push_dir(model_dir: str, repo_id: str, private: bool = False, checkpoint: bool = False, message: str = "Upload model trained with tfclm", token: str | None = None) -> str:
    """Push an existing output dir (model, tokenizer, tfclm.yaml, results.json, a model card); returns the commit id."""
    import yaml

    from tfclm.modeling import check_model_dir

    check_model_dir(model_dir, "--model")
    config_path, results_path = os.path.join(model_dir, "tfclm.yaml"), os.path.join(model_dir, "results.json")
    config = yaml.safe_load(open(config_path, encoding="utf-8")) if os.path.exists(config_path) else None
    results = json.load(open(results_path, encoding="utf-8")) if os.path.exists(results_path) else None
    uploader = Uploader(repo_id, token=token, private=private, max_retries=2, log=lambda line: None)
    ignore = tuple(p for p in DEFAULT_IGNORE if not (checkpoint and p.startswith("checkpoints")))
    uploader.submit(model_dir, message, ignore, {"README.md": model_card(repo_id, config, results)})
    uploader.close()
    if uploader.failures:
        raise ConfigError("--repo-id", f"could not push to {repo_id}: {uploader.failures[0]}; check HF_ENDPOINT, the token (HF_TOKEN or huggingface-cli login) and the network")
    return uploader.commits[-1]


class PushToHubCallback(keras.callbacks.Callback):
    """Pushes the model and tokenizer to the Hub during and after training; a drop-in for transformers' callback.

    Built on the Hub's HTTP commit API, so it needs no git; it pushes at each
    epoch end (`save_strategy="epoch"`) or every `save_steps` steps
    (`"steps"`), and always the final weights and a model card when training
    ends, after any upload still in flight. A failed upload is retried and
    reported in `failures`, and never stops training. Only the chief worker
    pushes. `checkpoint=True` also pushes a resumable checkpoint (weights and
    optimizer) in `checkpoint/`. Model card arguments: model_name, language,
    license, tags, finetuned_from, dataset.

    Example (the Hub needs a token: HF_TOKEN or `huggingface-cli login`)::

        import tfclm, tf_keras as keras
        from transformers import AutoTokenizer, TFAutoModelForCausalLM

        model = TFAutoModelForCausalLM.from_pretrained("distilbert/distilgpt2")
        tokenizer = AutoTokenizer.from_pretrained("distilbert/distilgpt2")
        model.compile(optimizer=keras.optimizers.Adam(2e-5))
        push = tfclm.callbacks.PushToHubCallback("my-model", tokenizer=tokenizer, hub_model_id="me/my-model")
        model.fit(train_set, validation_data=val_set, epochs=3, callbacks=[push])

    tests/test_hub.py runs this against a local Hub server.
    """

    def __init__(
        self,
        output_dir: str,
        save_strategy: str = "epoch",
        save_steps: int | None = None,
        tokenizer=None,
        hub_model_id: str | None = None,
        hub_token: str | None = None,
        checkpoint: bool = False,
        private: bool | None = None,
        max_retries: int = 3,
        push_at_train_end: bool = True,
        ignore_patterns=DEFAULT_IGNORE,
        **model_card_args,
    ):
        super().__init__()
        if save_strategy not in ("epoch", "steps", "no"):
            raise ValueError(f"save_strategy must be 'epoch', 'steps' or 'no', got {save_strategy!r}")
        if save_strategy == "steps" and not save_steps:
            raise ValueError("save_strategy='steps' needs save_steps, such as save_steps=500")
        check_card_args(model_card_args)
        self.output_dir = output_dir
        self.save_strategy = save_strategy
        self.save_steps = save_steps
        self.tokenizer = tokenizer
        self.hub_model_id = hub_model_id or default_repo_id(output_dir)
        self.hub_token = hub_token
        self.checkpoint = checkpoint
        self.private = private
        self.max_retries = max_retries
        self.push_at_train_end = push_at_train_end
        self.ignore_patterns = tuple(ignore_patterns)
        self.model_card_args = model_card_args
        self.uploader = None
        self.steps = 0

    @property
    def failures(self) -> list[str]:
        return self.uploader.failures if self.uploader else []

    def _lm(self):
        return getattr(self.model, "lm", self.model)  # tfclm's trainer wraps the transformers model

    def _save(self):
        objects = [self._lm()] + ([self.tokenizer] if self.tokenizer is not None else [])
        save_pretrained_atomic(objects, self.output_dir)
        if self.checkpoint:
            ckpt = tf.train.Checkpoint(model=self._lm(), optimizer=self.model.optimizer)
            tf.train.CheckpointManager(ckpt, os.path.join(self.output_dir, "checkpoint"), max_to_keep=1).save()

    def _push(self, message: str, extra_files=None):
        if self.uploader is not None:
            self.uploader.submit(self.output_dir, message, self.ignore_patterns, extra_files)

    def on_train_begin(self, logs=None):
        if is_chief():
            self.uploader = Uploader(self.hub_model_id, self.hub_token, self.private, self.max_retries)

    def on_epoch_end(self, epoch, logs=None):
        if self.uploader and self.save_strategy == "epoch":
            self._save()
            self._push(f"Training in progress epoch {epoch + 1}")

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.uploader and self.save_strategy == "steps" and self.steps % self.save_steps == 0:
            self._save()
            self._push(f"Training in progress steps {self.steps}")

    def on_train_end(self, logs=None):
        if self.push_at_train_end:
            self.push_final(results={"train_loss": (logs or {}).get("loss")} if logs else None)

    def push_final(self, config: dict | None = None, results: dict | None = None, save: bool = True, message: str = "End of training"):
        """Save (unless the caller just did), write the model card, push, and wait for every upload."""
        if self.uploader is None:
            return
        if save:
            self._save()
        card = model_card(self.hub_model_id, config, results, **self.model_card_args)
        atomic_write_text(os.path.join(self.output_dir, "README.md"), card)
        self._push(message)
        self.uploader.close()
        if self.failures:
            print(f"hub: {len(self.failures)} push(es) to {self.hub_model_id} failed; the output dir {self.output_dir} is complete")
