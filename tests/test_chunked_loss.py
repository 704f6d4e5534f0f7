"""The chunked LM-head loss gives the plain step's loss and gradients, without the full logits tensor."""

import numpy as np
import pytest

from tfclm.model.families import FAMILIES, TRAINED

from helpers import TINY_CONFIGS, one_batch, plain_sgd_step, tiny

CHUNKED = [t for t in TRAINED if FAMILIES[t].body]


def loss_and_gradients(model, batch, chunk_tokens, graph=False):
    from tfclm.backend import tf
    from tfclm.model.chunked_loss import chunked_token_loss_sums, head_and_body
    from tfclm.model.loss import token_loss_sums

    def compute(batch):
        with tf.GradientTape() as tape:
            if chunk_tokens != 0:  # None: all tokens in one chunk, as the default train step takes them
                body, head = head_and_body(model)
                hidden = body(batch["input_ids"], batch["attention_mask"], training=False)
                total, count = chunked_token_loss_sums(hidden, batch["labels"], head, chunk_tokens)
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                total, count = token_loss_sums(batch["labels"], logits)
            loss = total / count
        return loss, count, [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    loss, count, grads = (tf.function(compute) if graph else compute)(batch)
    return float(loss), float(count), [g.numpy() for g in grads]


@pytest.mark.parametrize("model_type", CHUNKED)
def test_chunked_loss_and_gradients_equal_the_plain_step(model_type):
    model = tiny(model_type)
    ids = np.random.default_rng(0).integers(2, 96, size=(3, 20)).astype(np.int32)
    labels = ids.copy()
    labels[0, 15:] = -100  # masked tokens count in neither
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}
    plain_loss, plain_count, plain_grads = loss_and_gradients(model, batch, 0)
    # Chunks that split rows, divide nothing, and hold every token; eagerly and traced, as Keras' fit runs it.
    for chunk, graph in ((7, False), (16, True), (57, False), (200, True), (None, True), (None, False)):
        loss, count, grads = loss_and_gradients(model, batch, chunk, graph)
        assert count == plain_count == 3 * 19 - 5
        assert loss == pytest.approx(plain_loss, rel=1e-6, abs=1e-6)
        for plain, chunked in zip(plain_grads, grads):
            np.testing.assert_allclose(chunked, plain, rtol=1e-5, atol=1e-6)


def test_a_token_whose_probability_underflows_keeps_its_exact_loss_and_a_masked_one_counts_nothing():
    from tfclm.backend import tf
    from tfclm.model.chunked_loss import Head, _losses_and_gradient, chunked_token_loss_sums

    vocab = 50
    logits = np.zeros((3, vocab), np.float32)
    logits[0, 7] = -200.0  # exp(-200) is below float32's range: the target's probability is 0
    logits[1] = np.linspace(-3, 3, vocab)
    logits[2, 0] = -300.0
    targets = np.array([7, 4, 0], np.int32)
    with tf.GradientTape() as tape:
        constant = tf.constant(logits)
        tape.watch(constant)
        expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=constant)
    losses, gradient = _losses_and_gradient(tf.constant(logits), tf.constant(targets))
    np.testing.assert_allclose(losses.numpy(), expected.numpy(), rtol=1e-6)
    assert losses.numpy()[0] == pytest.approx(200 + np.log(vocab - 1 + np.exp(-200.0)), rel=1e-6)
    np.testing.assert_allclose(gradient.numpy(), tape.gradient(expected, constant).numpy(), atol=1e-7)

    # The same rows through the head, the third token unscored: its infinite-looking loss adds nothing.
    hidden = np.concatenate([np.eye(3, dtype=np.float32), np.zeros((1, 3), np.float32)])[None]  # 4 positions
    labels = np.array([[0, 7, 4, -100]], np.int32)
    with tf.GradientTape() as tape:
        states = tf.constant(hidden)
        tape.watch(states)
        total, count = chunked_token_loss_sums(states, tf.constant(labels), Head(tf.constant(logits), False, []))
    assert count.numpy() == 2
    assert total.numpy() == pytest.approx(float(expected[0] + expected[1]), rel=1e-6)
    assert np.isfinite(tape.gradient(total, states).numpy()).all()


def test_bfloat16_logits_give_the_float32_loss_to_bfloat16_rounding():
    from tfclm.backend import tf
    from tfclm.model.chunked_loss import _losses_and_gradient

    rng = np.random.default_rng(0)
    logits = tf.cast(tf.constant(rng.normal(0, 3, (64, 5000)).astype(np.float32)), tf.bfloat16)
    targets = tf.constant(rng.integers(0, 5000, 64).astype(np.int32))
    exact = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    losses, gradient = _losses_and_gradient(logits, targets)
    assert losses.dtype == tf.float32 and gradient.dtype in (tf.bfloat16, tf.float32)
    # A probability rounded to bfloat16 (8 significant bits) moves its log by at most 2^-8.
    np.testing.assert_allclose(losses.numpy(), exact.numpy(), atol=2**-8, rtol=0)
    expected = tf.nn.softmax(tf.cast(logits, tf.float32)) - tf.one_hot(targets, 5000)
    np.testing.assert_allclose(tf.cast(gradient, tf.float32).numpy(), expected.numpy(), atol=2**-8, rtol=0)


def test_a_head_that_transforms_first_is_refused():
    from tfclm.errors import ConfigError
    from tfclm.model.chunked_loss import head_and_body

    with pytest.raises(
        ConfigError, match=r"^train.loss_chunk_tokens: BERT's LM head transforms .*; set train.loss_chunk_tokens to 0$"
    ):
        head_and_body(tiny("bert"))


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "mistral"])
def test_a_trainer_step_with_the_chunked_loss_updates_as_the_plain_one(model_type):
    """The trainer's default (the head in one chunk, gradients in closed form) and 24-token chunks both move the
    weights as a plain step on the model's own logits does."""
    from tfclm.backend import keras
    from tfclm.training.trainer import CausalLMTrainer

    ids = np.random.default_rng(1).integers(2, 96, size=(4, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    reference = tiny(model_type, dropout=False)
    reference_loss = plain_sgd_step(reference, batch, 0.5)
    for chunk in (0, 24):
        model = tiny(model_type, dropout=False)
        trainer = CausalLMTrainer(model, loss_chunk_tokens=chunk)
        assert trainer._head is not None  # the closed-form head, even at 0
        # SGD moves each weight by its gradient; Adam's first step is about its sign, rounding noise included.
        trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.5))
        history = trainer.fit(one_batch(batch), epochs=1, verbose=0)  # traced, as fit runs it
        assert history.history["loss"][0] == pytest.approx(reference_loss, rel=1e-6)
        for plain, stepped in zip(reference.trainable_variables, model.trainable_variables):
            np.testing.assert_allclose(stepped.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "gemma2", "granite"])  # soft-capped, scaled after projecting
def test_a_family_whose_head_is_more_than_a_projection_trains_on_its_own_logits(model_type):
    from tfclm.backend import keras
    from tfclm.training.trainer import CausalLMTrainer

    ids = np.random.default_rng(1).integers(2, 96, size=(4, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    reference = tiny(model_type, dropout=False)
    reference_loss = plain_sgd_step(reference, batch, 0.5)
    model = tiny(model_type, dropout=False)
    trainer = CausalLMTrainer(model)
    assert trainer._head is None
    trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.5))
    assert trainer.fit(one_batch(batch), epochs=1, verbose=0).history["loss"][0] == pytest.approx(reference_loss)
    for plain, stepped in zip(reference.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(stepped.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)


def test_the_chunked_loss_of_a_family_that_cannot_is_refused_before_any_write(tmp_path):
    import json

    from helpers import DEFAULT_CONFIG, TINY, run_cli, sets

    config = json.dumps({"model_type": "bert", **TINY_CONFIGS["bert"]})
    out = tmp_path / "run"
    args = [*TINY, *sets(f"model.config={config}", "train.loss_chunk_tokens=256"), "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Error: train.loss_chunk_tokens: BERT's LM head transforms" in result.output and not out.exists()
    negative = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, *sets("train.loss_chunk_tokens=-1")])
    assert negative.exit_code == 2 and "Error: train.loss_chunk_tokens: must be 0 (off)" in negative.output


NO_DROPOUT = {
    "gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "opt": dict(dropout=0.0, attention_dropout=0.0),
    "mistral": dict(attention_dropout=0.0),
}


def count_block_runs(model) -> list[int]:
    """How often each transformer block's own call runs (a counter around transformers' layers)."""
    from tfclm.model.recompute import blocks_of

    runs = []
    for index, block in enumerate(blocks_of(model)):
        runs.append(0)

        def counted(*args, _call=block.call, _index=index, **kwargs):
            runs[_index] += 1
            return _call(*args, **kwargs)

        block.call = counted
    return runs


@pytest.mark.parametrize("model_type", sorted(NO_DROPOUT))
@pytest.mark.parametrize("chunk", [0, 24])
def test_recomputed_blocks_give_the_plain_gradients(model_type, chunk):
    """train.recompute: blocks, alone and with the chunked loss: the same loss and weights after a step."""
    from transformers import AutoConfig, TFAutoModelForCausalLM

    from tfclm.backend import keras
    from tfclm.training.trainer import CausalLMTrainer

    ids = np.random.default_rng(2).integers(2, 96, size=(4, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    weights, losses = [], []
    for recompute in (False, True):
        keras.utils.set_random_seed(0)
        fields = dict(TINY_CONFIGS[model_type], **NO_DROPOUT[model_type])
        model = TFAutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=96, **fields))
        model.build_in_name_scope()
        runs = count_block_runs(model)
        trainer = CausalLMTrainer(model, loss_chunk_tokens=chunk, recompute=recompute)
        # SGD moves each weight by its gradient; Adam's first step is about its sign, rounding noise included.
        trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.5))
        losses.append(trainer.fit(one_batch(batch), epochs=1, verbose=0).history["loss"][0])
        weights.append([v.numpy() for v in model.trainable_variables])
        # Each block runs once forward, and once more in the backward pass when recomputed.
        assert runs == [2 if recompute else 1] * 2, runs
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for plain, recomputed in zip(*weights):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_fit_with_the_chunked_loss_and_recomputation_trains_as_the_plain_one(tmp_path):
    """The same tiny fit with dropout on, plain and chunked with recomputation: the same masks, and only the
    summation order differs, so the losses agree to float rounding."""
    import json

    from helpers import DEFAULT_CONFIG, TINY, run_cli, sets

    results = []
    dropout = ["model.config.resid_pdrop=0.1", "model.config.attn_pdrop=0.1"]
    for name, extra in (("plain", []), ("chunked", ["train.loss_chunk_tokens=100", "train.recompute=blocks"])):
        out = tmp_path / name
        args = [*TINY, *sets(*dropout, *extra), "--max-steps", "6", "--output-dir", str(out)]
        result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
        assert result.exit_code == 0, result.output
        results.append(json.load(open(out / "results.json")))
    plain, chunked = results
    assert chunked["eval_loss_before"] == pytest.approx(plain["eval_loss_before"], rel=1e-6)
    assert chunked["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    assert chunked["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)


def test_recomputing_a_family_without_known_blocks_is_refused_before_any_write(tmp_path):
    import json

    from helpers import DEFAULT_CONFIG, TINY, run_cli, sets

    config = json.dumps({"model_type": "bert", **TINY_CONFIGS["bert"]})
    out = tmp_path / "run"
    args = [*TINY, *sets(f"model.config={config}", "train.recompute=blocks"), "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 2 and "Error: train.recompute: tfclm does not know how to find BERT's" in result.output
    assert not out.exists()


@pytest.mark.parametrize("with_gradients", [True, False])
def test_memory_does_not_grow_with_the_number_of_chunks_in_a_traced_step(with_gradients):
    """The point of the chunks is memory. TensorFlow's while loop runs up to 10 turns at once unless told not to,
    and no chunk waits for another: with 16 chunks, 6 to 7 chunks' worth of logits were alive at once with the
    gradients and 4 without (at block 1,024 the chunked loss then took more memory a sequence than no chunks).
    One turn at a time: a chunk's logits and its softmax (2), with the gradients about 4, however many chunks."""
    from tfclm.backend import tf
    from tfclm.model.chunked_loss import Head, chunked_token_loss_sums

    vocab, width, chunk = 8192, 32, 128
    rng = np.random.default_rng(0)
    hidden = tf.constant(rng.normal(size=(8, 257, width)).astype(np.float32))  # 8 x 256 targets: 16 chunks
    labels = tf.constant(rng.integers(0, vocab, (8, 257)).astype(np.int32))
    weight = tf.Variable(rng.normal(0, 0.02, (vocab, width)).astype(np.float32))

    @tf.function
    def step(hidden):
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            total, _ = chunked_token_loss_sums(hidden, labels, Head(weight, True, []), chunk, with_gradients)
        return (total, *tape.gradient(total, [hidden, weight])) if with_gradients else (total,)

    step.get_concrete_function(hidden)
    chunk_logits = chunk * vocab * 4
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except ValueError:  # TensorFlow counts CPU memory only with oneDNN on: by default, on CPUs with AVX-512
        pytest.skip("this CPU's TensorFlow keeps no memory stats (oneDNN is off without AVX-512)")
    for _ in range(3):  # the executor's order varies from run to run: every run keeps to the bound
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        [t.numpy() for t in step(hidden)]
        chunks_alive = (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / chunk_logits
        assert chunks_alive < (5 if with_gradients else 3), f"{chunks_alive:.2f} chunks' logits at the peak"
