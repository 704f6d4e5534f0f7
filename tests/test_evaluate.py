import math

import numpy as np
import pytest

from tfclm.data.packing import Blocks


def test_perplexity_is_overflow_safe():
    from tfclm.evaluation.perplexity import perplexity

    assert perplexity(0.0) == 1.0 and perplexity(math.log(16.0)) == pytest.approx(16.0)
    assert perplexity(1e6) == math.inf


def test_loss_counts_every_token_once():
    """A short final batch weighs by its tokens, not as a whole batch; padding counts for nothing."""
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.data.pipeline import fast_dataset
    from tfclm.evaluation.perplexity import evaluate_loss

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    ids = np.random.default_rng(0).integers(1, 40, (5, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[4, 5:] = 0
    result = evaluate_loss(model, fast_dataset(Blocks(ids, 5, 37, 0, mask), batch_size=2, shuffle=False))

    logits = model(input_ids=tf.constant(ids), attention_mask=tf.constant(mask)).logits.numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_losses = [-logp[b, t, ids[b, t + 1]] for b in range(5) for t in range(7) if mask[b, t + 1]]
    assert result["tokens"] == len(token_losses) == 5 * 7 - 3
    assert result["loss"] == pytest.approx(float(np.mean(token_losses)), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
