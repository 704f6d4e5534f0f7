"""PushToHubCallback: the Keras callback that pushes during and after training."""

import logging
import os

from tfclm.backend import keras, tf
from tfclm.files import atomic_write_text, save_pretrained_atomic
from tfclm.hub.modelcard import check_card_args, model_card
from tfclm.hub.uploads import DEFAULT_IGNORE, Uploader, default_repo_id
from tfclm.model.lora import checkpointed, saved_objects
from tfclm.training.distribute import is_chief
from tfclm.training.steps import StepClock

logger = logging.getLogger(__name__)


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
        self._clock = StepClock()

    @property
    def failures(self) -> list[str]:
        return self.uploader.failures if self.uploader else []

    def _lm(self):
        return getattr(self.model, "lm", self.model)  # tfclm's trainer wraps the transformers model

    def _save(self):
        objects = saved_objects(self._lm()) + ([self.tokenizer] if self.tokenizer is not None else [])
        save_pretrained_atomic(objects, self.output_dir)
        if self.checkpoint:
            ckpt = tf.train.Checkpoint(**checkpointed(self._lm()), optimizer=self.model.optimizer)
            tf.train.CheckpointManager(ckpt, os.path.join(self.output_dir, "checkpoint"), max_to_keep=1).save()

    def _push(self, message: str, extra_files=None):
        if self.uploader is not None:
            self.uploader.submit(self.output_dir, message, self.ignore_patterns, extra_files)

    def on_train_begin(self, logs=None):
        self._clock.start(self.model)
        if is_chief() and self.uploader is None:  # a resumed run's fits share one uploader
            self.uploader = Uploader(self.hub_model_id, self.hub_token, self.private, self.max_retries)

    def on_epoch_end(self, epoch, logs=None):
        if self.uploader and self.save_strategy == "epoch":
            self._save()
            self._push(f"Training in progress epoch {epoch + 1}")

    def on_train_batch_end(self, batch, logs=None):
        step = self._clock.tick(self.model)
        if step and self.uploader and self.save_strategy == "steps" and step % self.save_steps == 0:
            self._save()
            self._push(f"Training in progress steps {step}")

    def on_train_end(self, logs=None):
        if self.push_at_train_end:
            self.push_final(results={"train_loss": (logs or {}).get("loss")} if logs else None)

    def push_final(
        self,
        config: dict | None = None,
        results: dict | None = None,
        save: bool = True,
        message: str = "End of training",
    ):
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
            logger.warning(
                f"hub: {len(self.failures)} push(es) to {self.hub_model_id} failed; the output dir {self.output_dir} "
                f"is complete"
            )
