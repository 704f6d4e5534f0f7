"""tf.distribute: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy with two processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import DEFAULT_CONFIG, ROOT, TINY, fit_command, run_cli, sets

QUIET = [
    *sets("logging.sample_every_n_epochs=null", "logging.report_to=[none]", "generate.max_new_tokens=4"),
]


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_the_default_strategy(tmp_path):
    overrides = [*TINY[1::2], *QUIET[1::2]]  # the values of the --set pairs
    script = textwrap.dedent(f"""
        import json, tfclm, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfclm.config import load_config
        from tfclm.run.fit import fit
        common = {overrides!r} + ["logging.every_n_steps=1", "train.max_steps=6"]
        def run(strategy, batch_size):
            settings = [f"train.strategy={{strategy}}", f"train.batch_size={{batch_size}}"]
            settings.append(f"output_dir={tmp_path}/{{strategy}}")
            return fit(load_config({DEFAULT_CONFIG!r}, common + settings), verbose=0)
        default, mirrored = run("default", 8), run("mirrored", 4)
        keys = ("strategy", "global_batch_size", "eval_loss_before", "eval_loss", "step_history")
        runs = (("default", default), ("mirrored", mirrored))
        print(json.dumps({{name: {{k: r[k] for k in keys}} for name, r in runs}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert (
        runs["default"]["strategy"].startswith("default (1 replica)")
        and runs["mirrored"]["strategy"] == "mirrored (2 replicas)"
    )
    assert runs["default"]["global_batch_size"] == runs["mirrored"]["global_batch_size"] == 8
    assert runs["mirrored"]["eval_loss_before"] == pytest.approx(
        runs["default"]["eval_loss_before"], rel=1e-6
    )  # same start
    default_losses, mirrored_losses = runs["default"]["step_history"]["loss"], runs["mirrored"]["step_history"]["loss"]
    assert len(default_losses) == len(mirrored_losses) == 6
    assert mirrored_losses == pytest.approx(default_losses, rel=1e-4)
    assert runs["mirrored"]["eval_loss"] == pytest.approx(runs["default"]["eval_loss"], rel=1e-4)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(command, tmp_path, tag):
    """Two MultiWorkerMirroredStrategy workers on localhost ports; (return codes, outputs)."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    logs = [open(tmp_path / f"{tag}-worker{i}.log", "w+") for i in range(2)]
    processes = []
    try:
        for index in range(2):
            env = {
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}),
            }
            processes.append(subprocess.Popen(command, stdout=logs[index], stderr=subprocess.STDOUT, cwd=ROOT, env=env))
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        for process in processes:  # bounded in time, stopped by PID
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [p.returncode for p in processes], outputs


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(tmp_path):
    out = str(tmp_path / "out")

    def command(max_steps):
        return fit_command(
            *TINY,
            *QUIET,
            *sets("train.strategy=multiworker", "evaluate.before_training=false"),
            "--batch-size",
            "4",
            "--max-steps",
            str(max_steps),
            "--output-dir",
            out,
        )

    codes, outputs = run_workers(command(3), tmp_path, "first")
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["strategy"] == "multiworker (2 replicas)" and results["train_steps"] == 3
    assert results["global_batch_size"] == 8
    worker_line = [line for line in outputs[1].splitlines() if line.startswith("worker done:")][0]
    assert worker_line.endswith(f"weights sha256 {results['weights_sha256']}")  # both replicas, the same weights
    assert "worker done:" not in outputs[0]
    written = set(os.listdir(out))
    assert {"results.json", "tfclm.yaml", "tf_model.h5", "checkpoints", "cache"} <= written
    assert not any(name.startswith("tfclm-worker") for name in written)

    # Extended: both workers resume from the chief's checkpoint at the same step, and end in step.
    codes, outputs = run_workers(command(5), tmp_path, "extended")
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    for output in outputs:
        assert "resuming from the checkpoint at optimizer step 3 of 5" in output
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["train_steps"] == 5 and results["resumed_from_step"] == 3
    worker_line = [line for line in outputs[1].splitlines() if line.startswith("worker done:")][0]
    assert worker_line == f"worker done: 5 optimizer steps; weights sha256 {results['weights_sha256']}"


@pytest.mark.parametrize(
    "env, args, message",
    [
        (
            {},
            ["--set", "train.strategy=ring"],
            "train.strategy: must be one of 'auto', 'default', 'mirrored', 'multiworker', 'tpu'",
        ),
        ({}, ["--set", "train.strategy=multiworker"], "train.strategy: multiworker needs TF_CONFIG"),
        ({"TF_CONFIG": "{cluster: 1"}, ["--set", "train.strategy=multiworker"], "TF_CONFIG: is not valid JSON"),
        (
            {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}})},
            [],
            "TF_CONFIG: task worker:3 is not in its cluster",
        ),
        ({}, ["--set", "train.strategy=tpu"], "train.tpu: strategy tpu needs train.tpu"),
    ],
)
def test_strategy_bad_input(monkeypatch, env, args, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message in line, line


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        (None, None, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
    ],
)
def test_only_the_chief_writes_and_pushes(monkeypatch, tmp_path, cluster, task, chief):
    from tfclm.hub.callback import PushToHubCallback
    from tfclm.training.distribute import WorkerDirs, is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    if cluster:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert is_chief() is chief
    dirs = WorkerDirs(str(tmp_path / "out"))
    assert (dirs.work_dir == str(tmp_path / "out")) is chief
    dirs.cleanup()
    push = PushToHubCallback(str(tmp_path / "out"), hub_model_id="tester/x")
    push.on_train_begin()
    assert (push.uploader is not None) is chief  # a non-chief never talks to the Hub
