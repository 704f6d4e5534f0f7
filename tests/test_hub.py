"""Pushing to a real Hub-compatible HTTP server on 127.0.0.1 (tests/hubserver.py), from fresh processes.

huggingface_hub reads HF_ENDPOINT when it is imported, so every client runs in
a subprocess with HF_ENDPOINT, HF_HOME and HF_TOKEN set first.
"""

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from helpers import DEFAULT_CONFIG, ROOT, TINY, TOKEN, HubServer, client_env, run, sets, tree

FIT = [
    *TINY,
    *sets("evaluate.before_training=false", "generate.max_new_tokens=4", "data.max_documents=60"),
    "--batch-size",
    "8",
]


@pytest.mark.slow
def test_fit_pushes_every_epoch_and_the_final_model(hub, tmp_path):
    out = str(tmp_path / "tiny")
    env = client_env(hub.url, tmp_path / "hf-home")
    done = run(
        [
            "-m",
            "tfclm",
            "fit",
            "--config",
            DEFAULT_CONFIG,
            *FIT,
            *sets("train.epochs=2", "hub.push=true", "hub.model_id=tester/tiny"),
            "--output-dir",
            out,
        ],
        env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    commits = hub.state()["tester/tiny"]
    assert [c["title"] for c in commits] == [
        "initial commit",
        "Training in progress epoch 1",
        "Training in progress epoch 2",
        "End of training",
    ]
    final = commits[-1]["files"]
    assert final["tf_model.h5"]["lfs"] is True and final["tokenizer.json"]["lfs"] is False
    assert {"config.json", "tokenizer_config.json", "README.md", "results.json", "tfclm.yaml"} <= set(final)
    assert not any(path.startswith(("cache/", "checkpoints/")) for path in final)

    # A fresh process and an empty cache load the model back through the endpoint: same logits, exactly.
    check = textwrap.dedent(f"""
        import numpy as np, tfclm
        from transformers import AutoTokenizer, TFAutoModelForCausalLM
        remote = TFAutoModelForCausalLM.from_pretrained("tester/tiny")
        tokenizer = AutoTokenizer.from_pretrained("tester/tiny")
        local = TFAutoModelForCausalLM.from_pretrained({out!r})
        ids = tokenizer(["The list type", "Return the value"], return_tensors="tf", padding=True)
        assert np.array_equal(remote(**ids).logits.numpy(), local(**ids).logits.numpy())
        print("same logits")
    """)
    loaded = run(["-c", check], client_env(hub.url, tmp_path / "fresh-home"))
    assert loaded.returncode == 0 and "same logits" in loaded.stdout, loaded.stdout + loaded.stderr

    card = urllib.request.urlopen(f"{hub.url}/tester/tiny/resolve/main/README.md", timeout=10).read().decode()
    from huggingface_hub import ModelCard

    metadata = ModelCard(card).data.to_dict()
    assert metadata["library_name"] == "transformers" and "tfclm" in metadata["tags"] and "base_model" not in metadata
    assert "perplexity" in card and "n_layer=1" in card and "tensorflow:" in card
    for path in (os.path.join(out, name) for name in ("tfclm.yaml", "results.json", "README.md")):
        assert TOKEN not in open(path).read()
    assert TOKEN not in done.stdout + done.stderr + card


@pytest.mark.slow
def test_server_lost_mid_training_then_push_later(hub, tmp_path):
    out = str(tmp_path / "lost")
    env = client_env(hub.url, tmp_path / "hf-home")
    args = [
        "-m",
        "tfclm",
        "fit",
        "--config",
        DEFAULT_CONFIG,
        *FIT,
        *sets("train.epochs=4", "hub.push=true", "hub.model_id=tester/lost", "hub.max_retries=1"),
        "--output-dir",
        out,
    ]
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    try:
        lines = []
        for line in process.stdout:  # stop the Hub as soon as the first epoch is committed
            lines.append(line)
            if line.startswith("Epoch 2/"):
                break
        hub.stop()
        lines += process.stdout.readlines()
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines)
    # The run is complete on disk, but a pipeline must notice the Hub copy is not: exit 1, the failure last.
    assert process.returncode == 1, output
    assert "hub: could not push" in output and "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: hub: ") and "push(es) to tester/lost failed" in last and "tfclm push --model" in last
    assert json.load(open(os.path.join(out, "results.json")))["hub_failures"]
    assert TOKEN not in output
    for name in ("tf_model.h5", "config.json", "tokenizer.json", "results.json", "README.md", "tfclm.yaml"):
        assert os.path.exists(os.path.join(out, name)), name

    again = HubServer()
    try:
        pushed = run(
            ["-m", "tfclm", "push", "--model", out, "--repo-id", "tester/lost", "--private"],
            client_env(again.url, tmp_path / "hf-home-2"),
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert "pushed" in pushed.stdout and TOKEN not in pushed.stdout + pushed.stderr
        titles = [c["title"] for c in again.state()["tester/lost"]]
        assert titles == ["initial commit", "Upload model trained with tfclm"]
        assert again.state()["tester/lost"][-1]["files"]["tf_model.h5"]["lfs"] is True
    finally:
        again.stop()


@pytest.mark.slow
def test_push_bad_input_and_bad_token(hub, tmp_path, trained_dir):
    from helpers import run_cli

    result = run_cli(["push", "--model", str(tmp_path), "--repo-id", "tester/x"])
    assert result.exit_code == 2 and "holds no model weights" in result.output
    env = {**client_env(hub.url, tmp_path / "home"), "HF_TOKEN": "hf_wrong"}
    denied = run(["-m", "tfclm", "push", "--model", trained_dir[0], "--repo-id", "tester/x"], env)
    assert denied.returncode == 2 and "Traceback" not in denied.stderr
    assert "could not push to tester/x" in denied.stderr and "hf_wrong" not in denied.stderr


@pytest.mark.slow
def test_callback_in_a_plain_keras_workflow(hub, tmp_path):
    """The callback on a user's own TFGPT2LMHeadModel and tf.data pipeline, no tfclm config."""
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf, tf_keras as keras, tfclm
        from transformers import AdamWeightDecay, GPT2Config, TFGPT2LMHeadModel
        model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
        ids = np.random.default_rng(0).integers(0, 50, (32, 16)).astype("int32")
        data = tf.data.Dataset.from_tensor_slices({{"input_ids": ids, "labels": ids}}).batch(8)
        model.compile(optimizer=AdamWeightDecay(1e-3))
        push = tfclm.callbacks.PushToHubCallback({str(tmp_path / "plain")!r}, save_strategy="steps", save_steps=3,
                                                 hub_model_id="tester/plain", checkpoint=True, license="mit")
        model.fit(data, epochs=2, callbacks=[push], verbose=0)
        print("failures", push.failures)
    """)
    done = run(["-c", script], client_env(hub.url, tmp_path / "home"))
    assert done.returncode == 0 and "failures []" in done.stdout, done.stdout + done.stderr
    commits = hub.state()["tester/plain"]
    assert [c["title"] for c in commits] == [
        "initial commit",
        "Training in progress steps 3",
        "Training in progress steps 6",
        "End of training",
    ]
    files = commits[-1]["files"]
    assert "tf_model.h5" in files and any(p.startswith("checkpoint/") for p in files) and "README.md" in files


@pytest.mark.slow
def test_the_callback_checkpoints_only_the_adapters_of_a_lora_model(hub, tmp_path):
    """checkpoint=True on a model with tfclm.add_lora: what trains and its optimizer state, not the frozen base."""
    import math

    import tensorflow as tf

    out = tmp_path / "lora"
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf, tf_keras as keras, tfclm
        from transformers import GPT2Config, TFGPT2LMHeadModel
        model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=500, n_positions=16))
        model.build_in_name_scope()
        tfclm.add_lora(model, rank=2, base="tester/base")
        ids = np.random.default_rng(0).integers(0, 500, (16, 16)).astype("int32")
        data = tf.data.Dataset.from_tensor_slices({{"input_ids": ids, "labels": ids}}).batch(8)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        push = tfclm.callbacks.PushToHubCallback({str(out)!r}, hub_model_id="tester/lora", checkpoint=True)
        model.fit(data, epochs=1, callbacks=[push], verbose=0)
        print("trainable", sum(v.shape.num_elements() for v in model.trainable_variables), "all",
              sum(v.shape.num_elements() for v in model.weights), "failures", push.failures)
    """)
    done = run(["-c", script], client_env(hub.url, tmp_path / "home"))
    assert done.returncode == 0 and "failures []" in done.stdout, done.stdout + done.stderr
    trainable, everything = (int(n) for n in done.stdout.split()[1:4:2])
    held = sum(math.prod(shape) for _, shape in tf.train.list_variables(str(out / "checkpoint")))
    # The adapters and Adam's two slots for each, plus counters: nowhere near the 500 x 64 embeddings.
    assert 3 * trainable <= held <= 3 * trainable + 10 and held < everything / 4, (held, trainable, everything)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(hub.state()["tester/lora"][-1]["files"])


@pytest.mark.slow
def test_push_honours_ignore_patterns_and_leaves_the_dir_alone(hub, tmp_path, trained_dir):
    import shutil

    out = str(tmp_path / "model")
    shutil.copytree(trained_dir[0], out)
    for name, text in {".tmp-x/junk.txt": "temp", "cache/blob.bin": "cached", "logs/a.tmp-3.npz": "partial"}.items():
        os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
        open(os.path.join(out, name), "w").write(text)
    open(os.path.join(out, "README.md"), "w").write("my own notes\n")
    before = tree(out)
    pushed = run(
        ["-m", "tfclm", "push", "--model", out, "--repo-id", "tester/clean"], client_env(hub.url, tmp_path / "h")
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    files = set(hub.state()["tester/clean"][-1]["files"])
    assert {"tf_model.h5", "config.json", "tokenizer.json", "results.json", "README.md"} <= files
    assert not [f for f in files if f.startswith((".tmp-", "cache/", "checkpoints/")) or ".tmp-" in f], files
    card = urllib.request.urlopen(f"{hub.url}/tester/clean/resolve/main/README.md", timeout=10).read().decode()
    assert card.startswith("---\n") and "tfclm" in card  # the model card went up...
    assert tree(out) == before  # ...and the local README.md, like every other file, is as it was
    assert [n for n in os.listdir(tmp_path) if "tmp-push" in n] == []  # the snapshot beside it is gone
