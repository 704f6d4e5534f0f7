import json
import math

import numpy as np
import pytest

from tfclm.data.packing import Blocks

from helpers import run_cli


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


TEXT = (
    "The list type holds items in order. Dictionaries map keys to values; sets hold distinct items. "
    "Café, naïve, 東京 and → arrows are UTF-8 text too, as is 🐍. " * 3
)


def _tiny(vocab_size: int, n_positions: int = 16, seed: int = 0):
    """A byte-level BPE trained on TEXT and a random GPT-2 of its vocabulary."""
    import tf_keras as keras
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.data.tokenizer import train_bpe

    tokenizer = train_bpe([TEXT] * 4, vocab_size)
    keras.utils.set_random_seed(seed)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=n_positions)
    model = TFGPT2LMHeadModel(config)
    return model, tokenizer


def _reference_nll(model, ids: np.ndarray, max_length: int, stride: int) -> tuple[float, int]:
    """Token by token: each token scored with the context the strided method gives it, one model call each."""
    total, count = 0.0, 0
    for p in range(1, len(ids)):
        window = 0 if p < max_length else (p - max_length) // stride + 1  # the first window whose end passes p
        begin = window * stride
        if begin == p:
            continue  # a window's first token has no context in it (stride == max_length only)
        logits = model(input_ids=ids[None, begin:p]).logits.numpy()[0, -1].astype(np.float64)
        total += -(logits[ids[p]] - np.log(np.exp(logits).sum()))
        count += 1
    return total, count


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_strided_loss_equals_a_token_by_token_reference(stride):
    from tfclm.evaluation.model_dir import token_streams
    from tfclm.evaluation.strided import strided_loss

    model, tokenizer = _tiny(300)
    (stream,) = token_streams([TEXT[:200]], tokenizer, per_document=False)
    result = strided_loss(model, [stream], max_length=16, stride=stride, batch_size=4)
    total, count = _reference_nll(model, stream, 16, stride)
    assert result["tokens"] == count == len(stream) - (1 if stride < 16 else -(-len(stream) // 16))
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


def test_a_stride_of_the_whole_window_is_the_block_figure():
    from tfclm.data.packing import pack
    from tfclm.data.pipeline import fast_dataset
    from tfclm.evaluation.model_dir import token_streams
    from tfclm.evaluation.perplexity import evaluate_loss
    from tfclm.evaluation.strided import strided_loss

    model, tokenizer = _tiny(300)
    (stream,) = token_streams([TEXT, TEXT[:90]], tokenizer, per_document=False)
    blocks = pack(stream, 16, 2, keep_remainder=True, pad_id=tokenizer.pad_token_id)
    by_blocks = evaluate_loss(model, fast_dataset(blocks, batch_size=4, shuffle=False))
    by_windows = strided_loss(model, [stream], max_length=16, stride=16, batch_size=4)
    assert by_windows["tokens"] == by_blocks["tokens"]
    assert by_windows["loss"] == by_blocks["loss"]  # the same windows, batches and sums


@pytest.mark.parametrize("vocab_size", [280, 600])
def test_bits_per_byte_count_every_byte_of_the_text_once(vocab_size):
    """With a leading end-of-text, every token of the text is scored: the bytes are the text's, whatever the
    tokenizer, multi-byte characters (split across tokens by a byte-level BPE) included."""
    from tfclm.evaluation.model_dir import token_streams
    from tfclm.evaluation.strided import strided_loss, token_bytes

    model, tokenizer = _tiny(vocab_size)
    documents = [TEXT, "Une phrase courte, déjà là. 🐍🐍"]
    table = token_bytes(tokenizer)
    for per_document in (False, True):
        streams = token_streams(documents, tokenizer, per_document)
        result = strided_loss(model, streams, max_length=16, stride=8, batch_size=8, byte_table=table)
        assert result["bytes"] == sum(len(d.encode("utf-8")) for d in documents)
        total_nats = result["loss"] * result["tokens"]
        assert result["bits_per_byte"] == pytest.approx(total_nats / math.log(2) / result["bytes"], rel=1e-12)


def test_evaluate_command_with_a_stride(trained_dir, tmp_path):
    import json

    from helpers import run_cli

    out, _ = trained_dir
    notes = tmp_path / "notes.txt"
    notes.write_text("Sets hold distinct items; → café. " * 40, encoding="utf-8")
    result = run_cli(["evaluate", "--model", out, "--text-file", str(notes), "--stride", "64", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["method"] == "windows of 256 tokens every 64" and figures["source"] == str(notes)
    assert figures["bytes"] == len(notes.read_bytes())  # every byte of the file scored once
    assert figures["bits_per_byte"] == pytest.approx(
        figures["loss"] * figures["tokens"] / math.log(2) / figures["bytes"]
    )
    blocks = run_cli(["evaluate", "--model", out, "--text-file", str(notes)])
    assert blocks.exit_code == 0 and "(blocks of 128 tokens)" in blocks.output and "bits per byte" in blocks.output
    results = json.load(open(f"{out}/results.json"))
    assert 0 < results["bits_per_byte"] < 16


def test_a_second_evaluation_traces_nothing_new():
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.data.pipeline import fast_dataset
    from tfclm.evaluation.perplexity import evaluate_loss, sum_and_count

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    ids = np.random.default_rng(0).integers(1, 40, (5, 8)).astype(np.int32)
    blocks = Blocks(ids, 5, 40, 0, np.ones_like(ids))
    first = evaluate_loss(model, fast_dataset(blocks, batch_size=2, shuffle=False))
    traced = sum_and_count(model).experimental_get_tracing_count()
    assert evaluate_loss(model, fast_dataset(blocks, batch_size=2, shuffle=False)) == first
    assert sum_and_count(model).experimental_get_tracing_count() == traced


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, said",
    [
        (["--block-size", "128", "--stride", "32"], "--block-size: sets blocks, and --stride scores windows, whose "
         "length is --max-length; pass --max-length instead"),
        (["--max-length", "128"], "--max-length: works with sliding windows, and this evaluation scores blocks; add "
         "--stride N"),
        (["--one-stream"], "--per-document: works with sliding windows, and this evaluation scores blocks; add "
         "--stride N"),
        (["--tasks", "x", "--stride", "8"], "--stride: has no effect with --tasks (the harness); leave it out"),
        (["--tasks", "x", "--text-file", "notes.txt"], "--text-file: has no effect with --tasks (the harness); leave "
         "it out"),
        (["--limit", "5"], "--limit: has no effect with perplexity; leave it out"),
    ],
)  # fmt: skip
def test_an_option_without_effect_in_its_mode_is_refused(trained_dir, args, said):
    from helpers import error_line

    assert error_line(run_cli(["evaluate", "--model", trained_dir[0], *args])) == f"Error: {said}"


@pytest.mark.slow
def test_windows_take_their_length_from_max_length(trained_dir):
    """`--max-length 128 --stride 32` scores windows of 128, and a shorter window sees less context."""
    out, _ = trained_dir
    results = []
    for window in ("128", "256"):
        result = run_cli(["evaluate", "--model", out, "--stride", "32", "--max-length", window, "--json"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output[result.output.index("{") :]))
    assert results[0]["method"] == "windows of 128 tokens every 32" and results[1]["method"].startswith(
        "windows of 256"
    )
    assert results[0]["tokens"] == results[1]["tokens"] and results[0]["perplexity"] != results[1]["perplexity"]
