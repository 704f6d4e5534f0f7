"""MLflow: params, metrics by optimizer step, samples and artifacts, to a server or a local database."""

import os

from tfclm.tracking.tracker import TrackerCallback, final_metrics, model_files, now_ms

# MLflow retries a request 7 times with a backoff factor of 2 (minutes for one call to a server that is down);
# a tracker must not hold up training that long. Variables a user has set win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_PARAM_LENGTH = 1000, 100, 6000


class MLflowCallback(TrackerCallback):
    """Sends a run to MLflow: `config` once, as params, step and epoch metrics by optimizer step, and at `finish()` the
    results as metrics, `files` and (optionally) the model dir as artifacts.

    `tracking_uri` defaults to `MLFLOW_TRACKING_URI`, else a SQLite database under `local_dir`; the
    experiment is `experiment`. With `run_id`, the callback continues that run (a resumed fit) instead of
    starting one.

    Example:

    >>> import tempfile, numpy as np, tfclm, tf_keras as keras
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    >>> ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> where = tempfile.mkdtemp()
    >>> tracker = tfclm.callbacks.MLflowCallback(
    ...     experiment="demo", run_name="tiny", local_dir=where, config={"lr": 1e-3}, every_n_steps=2
    ... )
    >>> _ = model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=2, verbose=0, callbacks=[tracker])
    >>> tracker.finish()
    >>> history = tracker.client.get_metric_history(tracker.run_id, "loss")
    >>> [point.step for point in history], tracker.client.get_run(tracker.run_id).data.params
    ([2, 4, 6, 8], {'lr': '0.001'})
    """

    name = "mlflow"

    def __init__(
        self,
        experiment: str = "tfclm",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        local_dir: str = ".",
        config: dict | None = None,
        tags: dict | None = None,
        every_n_steps: int = 10,
        hold: bool = False,
        run_id: str | None = None,
    ):
        super().__init__(every_n_steps, hold, run_id)
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.local_dir = local_dir
        self.config = config or {}  # not `params`: Keras' Callback has its own
        self.tags = tags or {}
        self.client = None

    def start(self) -> None:
        from mlflow.tracking import MlflowClient

        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        local = self.tracking_uri is None
        uri = self.tracking_uri or f"sqlite:///{os.path.abspath(os.path.join(self.local_dir, 'mlflow.db'))}"
        self.client = MlflowClient(tracking_uri=uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # A local database keeps its artifacts beside it, not in ./mlruns of whatever directory fit ran in.
            where = f"file://{os.path.abspath(os.path.join(self.local_dir, 'mlruns'))}" if local else None
            experiment_id = self.client.create_experiment(self.experiment, artifact_location=where)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self._log_params()

    def last_steps(self) -> dict:
        keys = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}

    def _log_params(self) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in self.config.items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])

    def send(self, points: list) -> None:
        from mlflow.entities import Metric

        stamp = now_ms()
        metrics = [Metric(key, float(value), stamp, step) for step, values in points for key, value in values.items()]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])

    def finish_run(self, results: dict | None, files: list[str], texts: dict, model_dir: str | None) -> None:
        if results:
            self.send([(int(results.get("train_steps", 0)), final_metrics(results))])
            samples = results.get("samples") or []
            if samples:
                text = "\n\n".join(s["prompt"] + s["completion"] for s in samples)
                self.client.log_text(self.run_id, text + "\n", "samples.txt")
        for path in files:
            if os.path.isfile(path):
                self.client.log_artifact(self.run_id, path)
        for name, text in texts.items():
            self.client.log_text(self.run_id, text, name)
        for path in model_files(model_dir):
            self.client.log_artifact(self.run_id, path, artifact_path="model")
        self.client.set_terminated(self.run_id, "FINISHED")
