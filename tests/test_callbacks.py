"""tfclm's callbacks in a plain Keras workflow, TensorBoard output, and the training curves."""

import json
import math
import os

import numpy as np
import pytest

from helpers import event_tags


def test_callbacks_in_a_users_own_keras_fit(tmp_path, capsys):
    import tensorflow as tf
    import tf_keras as keras
    from transformers import AdamWeightDecay, GPT2Config, TFGPT2LMHeadModel

    from tfclm.callbacks import PerplexityCallback, SampleTextCallback, StepHistory, ThroughputCallback
    from tfclm.data.tokenizer import train_bpe
    from tfclm.training.flops import flops_per_token

    keras.utils.set_random_seed(0)
    tokenizer = train_bpe(["the list type holds items in order; a dict maps keys to values"] * 20, 300)
    model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=32))
    text = tokenizer("the list type holds items in order; a dict maps keys to values " * 40)["input_ids"]
    blocks = np.array(text[: 24 * 16], dtype=np.int32).reshape(24, 16)

    def batches(rows):
        # The user's own pipeline: plain tf.data, labels = input_ids.
        return tf.data.Dataset.from_tensor_slices(
            {"input_ids": rows, "attention_mask": np.ones_like(rows), "labels": rows}
        ).batch(4)

    train, held_out = batches(blocks[:20]), batches(blocks[20:])
    log_dir = str(tmp_path / "logs")
    perplexity = PerplexityCallback(eval_data=held_out, every_n_steps=5)
    sampler = SampleTextCallback(
        tokenizer, ["the list"], every_n_epochs=1, log_dir=log_dir, max_new_tokens=6, do_sample=False
    )
    throughput = ThroughputCallback(tokens_per_step=4 * 16, peak_flops=1e12)
    steps = StepHistory(every_n_steps=5)
    model.compile(optimizer=AdamWeightDecay(learning_rate=3e-3))
    history = model.fit(
        train, validation_data=held_out, epochs=2, verbose=0, callbacks=[throughput, perplexity, sampler, steps]
    ).history

    assert np.allclose(history["perplexity"], np.exp(history["loss"]), rtol=1e-6)
    assert np.allclose(history["val_perplexity"], np.exp(history["val_loss"]), rtol=1e-6)
    assert history["perplexity"][1] < history["perplexity"][0]
    assert [step for step, _ in perplexity.evaluations] == [5, 10]
    assert all(
        r["tokens"] == 4 * 15 and math.isclose(r["perplexity"], math.exp(r["loss"])) for _, r in perplexity.evaluations
    )
    assert steps.steps == [5, 10] and steps.history["eval_perplexity"] == [
        r["perplexity"] for _, r in perplexity.evaluations
    ]
    assert throughput.steps == 10 and throughput.tokens == 640 and history["tokens_per_second"][-1] > 0
    # No sequence length given: FLOPs per token are 6 x the parameters without the position embeddings.
    wpe = model.config.n_positions * model.config.n_embd
    assert throughput.flops_per_token == 6 * (throughput.parameters - wpe) == flops_per_token(model, None)
    assert math.isclose(history["mfu"][-1], throughput.flops_per_token * history["tokens_per_second"][-1] / 1e12)
    printed = capsys.readouterr().out
    assert [step for step, _ in sampler.samples] == [5, 10]
    for step, (text_out,) in sampler.samples:
        assert text_out.startswith("the list") and f"sample at step {step}: {text_out!r}" in printed
    assert "samples" in event_tags(log_dir)


@pytest.mark.slow
def test_fit_writes_tensorboard_and_curves(trained_dir):
    from PIL import Image

    from tfclm.training.curves import read_curve_data

    out, output = trained_dir
    results = json.load(open(os.path.join(out, "results.json")))
    tags = event_tags(os.path.join(out, "logs"))
    for tag in (
        "epoch_loss",
        "epoch_perplexity",
        "epoch_learning_rate",
        "epoch_tokens_per_second",
        "batch_loss",
        "batch_learning_rate",
        "samples",
    ):
        assert tag in tags, sorted(tags)
    assert "sample at step" in output

    path = os.path.join(out, "training_curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 600
        image.verify()
    data = read_curve_data(path)
    epochs = results["epochs"]
    assert len(data["train_loss"]) == len(data["val_loss"]) == epochs == len(results["history"]["loss"])
    assert data["train_loss"] == results["history"]["loss"] and data["val_loss"] == results["history"]["val_loss"]
    assert data["steps"] == [10, 20, 30, 40] and len(data["step_loss"]) == 4  # logging.every_n_steps: 10 of 40 steps


def test_flops_per_token_is_6n_plus_attention():
    """6N + 12 L d T, with N counted by hand from GPT-2's layer shapes, position embeddings left out."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.training.flops import flops_per_token

    d, layers, vocab, positions, T = 32, 2, 50, 16, 16
    model = TFGPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=d, n_head=4, vocab_size=vocab, n_positions=positions))
    model.build_in_name_scope()
    per_layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    n = vocab * d + layers * per_layer + 2 * d  # token embeddings (tied head), the blocks, ln_f; not wpe
    assert flops_per_token(model, T) == 6 * n + 12 * layers * d * T
    assert flops_per_token(model, None) == 6 * n
