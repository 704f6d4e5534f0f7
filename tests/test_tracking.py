"""Experiment tracking for real: an MLflow server on 127.0.0.1, W&B in offline mode, and trackers that fail."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from helpers import DEFAULT_CONFIG, ROOT, TINY, fit_command, kill_after_checkpoint, run_cli, sets

# Every test here runs a fit, a server or a tracker's own service process.
pytestmark = pytest.mark.slow

# 10 documents in batches of 4: 2 epochs of a few dozen steps, a checkpoint every 5, every step sent.
FIT = [
    *TINY,
    *sets(
        "evaluate.before_training=false",
        "train.checkpoint_steps=5",
        "train.epochs=2",
        "data.max_documents=10",
        "logging.every_n_steps=1",
        "logging.sample_every_n_epochs=null",
    ),
    "--batch-size",
    "4",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MLflowServer:
    """`mlflow server` with a SQLite store and its own artifact folder, on a free port of 127.0.0.1."""

    def __init__(self, folder):
        os.makedirs(folder, exist_ok=True)
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            f"{folder}/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--workers",
            "1",
        ]
        self.log = open(os.path.join(folder, "server.log"), "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {open(self.log.name).read()[-2000:]}")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture()
def mlflow_server(tmp_path):
    server = MLflowServer(tmp_path / "server")
    yield server
    server.stop()


def _fit_process(out, env, *extra):
    command = fit_command(*FIT, "--output-dir", out, *extra)
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True
    )


def test_a_killed_and_resumed_fit_is_one_mlflow_run_with_every_step_once(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from tfclm.config import flatten

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": mlflow_server.url}
    out = str(tmp_path / "run")
    track = sets("logging.report_to=[mlflow]", "logging.project=tests", "logging.log_model=true")
    kill_after_checkpoint(_fit_process(out, env, *track), out, 10)

    resumed = _fit_process(out, env, *track)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming from the checkpoint at optimizer step" in output
    results = json.load(open(os.path.join(out, "results.json")))
    total = results["train_steps"]

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])  # one run, continued by the resume
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    resolved = flatten(yaml.safe_load(open(os.path.join(out, "tfclm.yaml"))))
    assert run.data.params == {key: str(value) for key, value in resolved.items()}
    for key in ("loss", "learning_rate"):
        steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, total + 1)), key  # no step missing, none sent twice
    losses = {p.step: p.value for p in client.get_metric_history(run.info.run_id, "loss")}
    assert [losses[s] for s in results["step_history"]["steps"]] == results["step_history"]["loss"]
    assert [p.step for p in client.get_metric_history(run.info.run_id, "epoch_val_loss")] == [total // 2, total]
    assert run.data.metrics["eval_loss"] == results["eval_loss"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "results.json", "tfclm.yaml", "samples.txt", "README.md", "model"} <= artifacts
    model = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/tf_model.h5", "model/config.json", "model/tokenizer.json"} <= model
    assert not any(p.startswith(("model/checkpoints", "model/cache", "model/logs")) for p in model)
    state = json.load(open(os.path.join(out, "checkpoints", f"ckpt-{total}.json")))
    assert state["trackers"] == {"mlflow": run.info.run_id}


def test_an_unreachable_tracker_costs_nothing_but_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    out = tmp_path / "run"
    args = [*FIT, *sets("logging.report_to=[mlflow,tensorboard]"), "--max-steps", "6", "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 0, result.output
    assert os.path.exists(out / "tf_model.h5") and os.path.isdir(out / "logs")
    results = json.load(open(out / "results.json"))
    (failure,) = results["tracking_failures"]
    assert failure.startswith("mlflow: ")
    lines = [line for line in result.output.splitlines() if "nothing more is sent to mlflow" in line]
    assert len(lines) == 1  # reported once, not at every step
    assert "tracking: not everything was reported (mlflow: " in result.output


def test_a_tracker_that_dies_mid_run_is_left_behind(mlflow_server, tmp_path):
    import numpy as np
    import tf_keras as keras
    from transformers import GPT2Config, TFGPT2LMHeadModel

    import tfclm

    class ServerDies(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                mlflow_server.stop()

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    tracker = tfclm.callbacks.MLflowCallback(tracking_uri=mlflow_server.url, every_n_steps=1)
    history = model.fit(
        {"input_ids": ids, "labels": ids}, batch_size=4, epochs=3, verbose=0, callbacks=[tracker, ServerDies()]
    )
    assert len(history.history["loss"]) == 3  # training went on to the end
    assert tracker.failure is not None and tracker.failure.startswith("mlflow: ")
    tracker.finish()  # and the run's end does not try again


def test_a_reporter_without_its_package_is_named_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    out = tmp_path / "run"
    args = [*FIT, *sets("logging.report_to=[wandb]"), "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "logging.report_to: wandb is not installed; pip install 'tfclm[wandb]'" in result.output
    assert not out.exists()


def wandb_records(path: str):
    """The records of an offline W&B run file: its log format (a header, then 32 KiB blocks of records split
    into chunks, each with a 7-byte header) holding wandb's own protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    if data[:4] != b":W&B":
        return  # not written yet
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(updates) -> dict:
    return {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in updates}


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-runs"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    args = [*FIT, *sets("logging.report_to=[wandb]", "logging.run_name=tiny"), "--max-steps", "6"]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    results = json.load(open(out / "results.json"))
    assert "tracking_failures" not in results
    # wandb's own service process writes the run file, and may still be writing it when the run has finished:
    # read it once it holds the run's last record.
    pattern, records = str(tmp_path / "wandb-runs" / "wandb" / "offline-run-*" / "run-*.wandb"), []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.WhichOneof("record_type") == "exit" for r in records):
        time.sleep(0.2)
        found = glob.glob(pattern)
        records = list(wandb_records(found[0])) if len(found) == 1 else []
    assert any(r.WhichOneof("record_type") == "exit" for r in records), (glob.glob(pattern), result.output)
    path = glob.glob(pattern)[0]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = _items(run.config.update)
    assert run.display_name == "tiny" and config["train.batch_size"] == 4 and config["logging.run_name"] == "tiny"
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2, 3, 4, 5, 6]  # W&B's step is the optimizer step
    assert all({"loss", "learning_rate"} <= set(h) for h in history) and "epoch_val_loss" in history[-1]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["eval_loss"] == results["eval_loss"]
    state = json.load(open(out / "checkpoints" / "ckpt-6.json"))
    assert state["trackers"] == {"wandb": run.run_id}
    card = open(os.path.join(os.path.dirname(path), "files", "README.md")).read()
    assert card.startswith("---\n") and "perplexity" in card


def test_mlflow_without_a_server_keeps_its_runs_in_the_output_dir(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tfclm.hub.uploads import DEFAULT_IGNORE, ignored

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the directory fit runs in
    out = tmp_path / "run"
    args = [*FIT, *sets("logging.report_to=[mlflow]"), "--max-steps", "3", "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["run"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tfclm").experiment_id])
    assert [p.step for p in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert os.path.exists(out / "mlruns" / run.info.run_id / "artifacts" / "results.json")
    # The trackers' stores are tfclm's own files: a rerun sees a finished run, not someone else's dir...
    again = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert again.exit_code == 2 and "already holds a finished run" in again.output
    # ...and a push leaves them out.
    assert all(ignored(p, DEFAULT_IGNORE) for p in ("mlflow.db", f"mlruns/{run.info.run_id}/artifacts/x", "wandb/a"))


def test_a_continued_mlflow_run_gets_no_step_twice(tmp_path):
    """Killed after sending steps its checkpoint does not hold, a run resumes before them and trains them again:
    the continued tracker run takes each step once."""
    import numpy as np
    import tf_keras as keras
    from transformers import GPT2Config, TFGPT2LMHeadModel

    import tfclm

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    ids = np.random.default_rng(0).integers(0, 50, (16, 16)).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    first = tfclm.callbacks.MLflowCallback(local_dir=str(tmp_path), every_n_steps=1)
    model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=2, verbose=0, callbacks=[first])  # steps 1-8
    model.optimizer.iterations.assign(5)  # the resume: from a checkpoint at step 5, so steps 6-8 come again
    again = tfclm.callbacks.MLflowCallback(local_dir=str(tmp_path), every_n_steps=1, run_id=first.run_id)
    model.fit({"input_ids": ids, "labels": ids}, batch_size=4, epochs=3, verbose=0, callbacks=[again])  # steps 6-17
    again.finish()
    assert again.failure is None
    steps = [p.step for p in again.client.get_metric_history(first.run_id, "loss")]
    assert sorted(steps) == list(range(1, 18))
    assert [p.step for p in again.client.get_metric_history(first.run_id, "epoch_loss")] == [4, 8, 9, 13, 17]
