import math
import re

import numpy as np
import pytest

from tfclm.config import ModelConfig, TrainConfig
from tfclm.errors import ConfigError


def tiny_gpt2(n_layer=2):
    from transformers import GPT2Config, TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    model.build_in_name_scope()
    return model


def test_weight_decay_skips_biases_and_every_layer_norm():
    from tfclm.training.optimizer import make_optimizer

    model = tiny_gpt2()
    optimizer = make_optimizer(TrainConfig(weight_decay=0.1), model, total_steps=10)
    decayed = sorted(
        re.sub(r"^.*?/transformer/", "", v.name)
        for v in model.trainable_variables
        if optimizer._do_use_weight_decay(v.name)
    )
    assert decayed == sorted(
        [
            f"h_._{i}/{name}/weight:0"
            for i in range(2)
            for name in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
        ]
        + ["wpe/embeddings:0", "wte/embeddings:0"]
    )
    skipped = [v.name for v in model.trainable_variables if not optimizer._do_use_weight_decay(v.name)]
    for norm in ("h_._0/ln_1/", "h_._0/ln_2/", "h_._1/ln_1/", "ln_f/"):
        assert any(norm + "gamma" in name for name in skipped) and any(norm + "beta" in name for name in skipped)


def test_stock_exclusions_would_decay_gpt2_layer_norms():
    """Why tfclm reads the exclusions off the layers: the usual name list misses ln_1/ln_2/ln_f."""
    from transformers import AdamWeightDecay

    model = tiny_gpt2(1)
    stock = AdamWeightDecay(weight_decay_rate=0.1, exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"])
    assert [v.name for v in model.trainable_variables if "ln_f/gamma" in v.name and stock._do_use_weight_decay(v.name)]


def test_one_pass_decay_updates_as_the_stock_optimizer():
    """tfclm's optimizer takes the decay in one product; three steps leave the weights where transformers'
    AdamWeightDecay leaves them, to float32 rounding, decayed and excluded variables alike."""
    import tensorflow as tf
    from transformers import AdamWeightDecay

    from tfclm.training.optimizer import OnePassDecayAdam

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(64, 32)).astype(np.float32), rng.normal(size=32).astype(np.float32)]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(3)]
    found = []
    for optimizer_class in (AdamWeightDecay, OnePassDecayAdam):
        weights = [tf.Variable(start[0], name="kernel"), tf.Variable(start[1], name="bias")]
        optimizer = optimizer_class(learning_rate=0.05, weight_decay_rate=0.1, exclude_from_weight_decay=["bias"])
        for step in grads:
            optimizer.apply_gradients(zip([tf.constant(g) for g in step], weights))
        found.append([w.numpy() for w in weights])
    (stock_kernel, stock_bias), (kernel, bias) = found
    np.testing.assert_allclose(kernel, stock_kernel, rtol=1e-6, atol=1e-7)
    assert np.array_equal(bias, stock_bias)  # not decayed: the same Adam update, bit for bit
    # The decay did act: without it the kernel ends elsewhere.
    plain = tf.Variable(start[0])
    adam = AdamWeightDecay(learning_rate=0.05, weight_decay_rate=0.0)
    for step in grads:
        adam.apply_gradients([(tf.constant(step[0]), plain)])
    assert not np.allclose(plain.numpy(), kernel, rtol=1e-3)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_warm_up_then_decay(schedule):
    from tfclm.training.optimizer import learning_rate_schedule

    lr = learning_rate_schedule(
        TrainConfig(learning_rate=1e-3, lr_schedule=schedule, warmup_ratio=0.1), total_steps=100
    )
    values = [float(lr(step)) for step in (0, 5, 10, 99)]
    assert values[0] == 0.0 and values[1] == pytest.approx(5e-4) and values[2] == pytest.approx(1e-3)
    assert values[3] == (pytest.approx(1e-3) if schedule == "constant" else pytest.approx(0.0, abs=2e-5))


def test_scratch_model_takes_the_tokenizer_vocab_and_checks_block_size():
    from tfclm.data.tokenizer import train_bpe
    from tfclm.model.loading import load_model

    tokenizer = train_bpe(["some text to learn a few merges from, some text"] * 4, 300)
    model = load_model(
        ModelConfig(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}),
        tokenizer,
        32,
    )
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    with pytest.raises(ConfigError, match="data.block_size: 64 is longer than the model's 32 positions"):
        load_model(
            ModelConfig(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}),
            tokenizer,
            64,
        )
    with pytest.raises(ConfigError, match="model.config.model_type"):
        load_model(ModelConfig(config={"model_type": "no-such-arch"}), tokenizer, 32)


def test_model_dir_errors(tmp_path):
    from tfclm.model.loading import pretrained_config

    with pytest.raises(ConfigError, match="does not exist"):
        pretrained_config(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no model weights"):
        pretrained_config(str(tmp_path / "empty"))


def test_tokenizer_gives_no_token_type_ids():
    from tfclm.data.tokenizer import train_bpe

    tokenizer = train_bpe(["hello world, hello there"] * 3, 280)
    assert set(tokenizer("hello world")) == {"input_ids", "attention_mask"}
    assert tokenizer.decode(tokenizer("hello world")["input_ids"]) == "hello world"


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_schedule_matches_keras_and_transformers_schedules(shape):
    import tf_keras as keras
    from transformers import WarmUp

    from tfclm.training.optimizer import learning_rate_schedule

    ours = learning_rate_schedule(TrainConfig(learning_rate=1e-3, lr_schedule=shape, warmup_ratio=0.1), 100)
    schedules = keras.optimizers.schedules
    linear = schedules.PolynomialDecay(1e-3, 90, end_learning_rate=0.0)  # its default end is 1e-4
    decay = linear if shape == "linear" else schedules.CosineDecay(1e-3, 90)
    theirs = WarmUp(initial_learning_rate=1e-3, decay_schedule_fn=decay, warmup_steps=10)
    for step in range(0, 110, 3):
        assert float(ours(step)) == pytest.approx(float(theirs(step)), rel=1e-6, abs=1e-12), step


@pytest.mark.parametrize("shape", ["constant", "linear", "cosine"])
def test_an_extension_continues_the_rate_without_a_jump(shape):
    from tfclm.training.schedule import RunSchedule, extend, initial_segments, rate_at

    old = initial_segments(1e-3, shape, 0.05, 600)
    for resume_at, new_end in ((300, 800), (600, 822), (20, 700)):
        new = extend(old, resume_at, new_end)
        rates = [rate_at(new, s) for s in range(resume_at, new_end + 1)]
        assert rates[0] == rate_at(old, resume_at)  # continuous at the resume step
        assert [rate_at(new, s) for s in range(resume_at)] == [rate_at(old, s) for s in range(resume_at)]
        steps = [abs(b - a) for a, b in zip(rates, rates[1:])]
        slope = rates[0] / (new_end - resume_at)  # the steepest step a decay from there to 0 may take
        assert max(steps) <= slope * (math.pi / 2) * (1 + 1e-9)  # cosine's steepest is pi/2 of the linear slope
        assert rates[-1] == (rates[0] if shape == "constant" else 0.0)
        tf_rates = RunSchedule(new)(np.arange(resume_at, new_end + 1)).numpy()
        assert np.allclose(tf_rates, rates, rtol=1e-5, atol=1e-10)
    finished = extend(old, 600, 822)  # a linear run decayed to 0 trains on at 0, never at a jumped rate
    assert shape == "constant" or max(rate_at(finished, s) for s in range(600, 823)) == 0.0
