"""Weights & Biases: config, metrics by optimizer step, samples as a table, the curves as an image."""

import os

from tfclm.tracking.tracker import TrackerCallback, final_metrics, model_files


class WandbCallback(TrackerCallback):
    """Sends a run to W&B: `config` once, step and epoch metrics by optimizer step, and at `finish()` the
    results as summary values, the samples as a table, `files` (PNG images as images), `texts` as files of the
    run and, optionally, the model dir as an artifact.

    W&B's own variables apply (`WANDB_MODE=offline`, `WANDB_DIR`, `WANDB_API_KEY`); `mode` ("offline",
    "online", "disabled") wins over `WANDB_MODE`. tfclm never reads or writes the key. Runs go to `dir`
    unless `WANDB_DIR` says otherwise. With `run_id`, the callback continues that run (a resumed fit).

    Example:

    >>> import tempfile, numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> tracker = tfclm.callbacks.WandbCallback(
    ...     project="demo", dir=tempfile.mkdtemp(), config={"lr": 1e-3}, mode="offline"
    ... )
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=2, verbose=0, callbacks=[tracker])
    >>> tracker.finish()
    >>> tracker.failure is None and tracker.run_id is not None
    True
    """

    name = "wandb"

    def __init__(
        self,
        project: str = "tfclm",
        run_name: str | None = None,
        dir: str = ".",
        config: dict | None = None,
        every_n_steps: int = 10,
        hold: bool = False,
        run_id: str | None = None,
        mode: str | None = None,
    ):
        super().__init__(every_n_steps, hold, run_id)
        self.mode = mode
        self.project = project
        self.run_name = run_name
        self.dir = dir
        self.config = config or {}
        self.run = None

    def start(self) -> None:
        import wandb

        directory = os.environ.get("WANDB_DIR") or self.dir
        os.makedirs(directory, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            name=self.run_name,
            dir=directory,
            config=self.config,
            id=self.run_id,
            resume="allow" if self.run_id else None,
            reinit="create_new",
            # Read now: wandb reads its variables once per process, and a second run may see other values.
            mode=self.mode or os.environ.get("WANDB_MODE"),
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run_id = self.run.id

    def last_steps(self) -> dict:
        # W&B keeps one step for the whole run: a resumed run's next step is run.step, and every metric before it
        # is there.
        return {"*": int(self.run.step) - 1}

    def send(self, points: list) -> None:
        for step, values in points:
            self.run.log(dict(values), step=step)

    def finish_run(self, results: dict | None, files: list[str], texts: dict, model_dir: str | None) -> None:
        import wandb

        if results:
            self.run.summary.update(final_metrics(results))
            samples = results.get("samples") or []
            if samples:
                table = wandb.Table(
                    columns=["prompt", "completion"], data=[[s["prompt"], s["completion"]] for s in samples]
                )
                self.run.log({"samples": table}, step=int(results.get("train_steps", 0)))
        for path in files:
            if path.endswith(".png") and os.path.isfile(path):
                self.run.log({os.path.basename(path)[: -len(".png")]: wandb.Image(path)})
            elif os.path.isfile(path):
                self.run.save(path, base_path=os.path.dirname(path), policy="now")
        for name, text in texts.items():  # the run's files folder is uploaded with the run
            with open(os.path.join(self.run.dir, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        if model_dir is not None:
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
            for path in model_files(model_dir):
                artifact.add_file(path)
            self.run.log_artifact(artifact)
        self.run.finish()
