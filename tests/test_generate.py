"""Generation: XLA equals eager, bucketed shapes compile once, seeds reproduce, batches equal solo runs."""

import json
import os
import shutil

import numpy as np
import pytest

from helpers import run_cli


@pytest.fixture(scope="module")
def model_and_tokenizer(trained_dir):
    from tfclm.model.loading import load_trained

    return load_trained(trained_dir[0])


def generator(model_and_tokenizer, xla):
    from tfclm.generation.generator import Generator

    logged = []
    return Generator(*model_and_tokenizer, xla=xla, log=logged.append), logged


GREEDY = dict(do_sample=False, max_new_tokens=10)


@pytest.mark.slow
def test_xla_greedy_equals_eager_greedy(model_and_tokenizer):
    prompts = ["The list type", "Return"]
    eager = generator(model_and_tokenizer, xla=False)[0](prompts, **GREEDY)
    xla, logged = generator(model_and_tokenizer, xla=True)
    compiled = xla(prompts, **GREEDY)
    assert [s.completion for s in compiled] == [s.completion for s in eager]
    assert [s.new_tokens for s in compiled] == [s.new_tokens for s in eager]
    assert any("compiling with XLA" in line for line in logged)


@pytest.mark.slow
def test_two_prompt_lengths_in_one_bucket_trace_once(model_and_tokenizer):
    xla, logged = generator(model_and_tokenizer, xla=True)
    tokenizer = model_and_tokenizer[1]
    short, longer = "The", "The list type is a mutable sequence"
    assert len(tokenizer(short)["input_ids"]) != len(tokenizer(longer)["input_ids"])
    xla([short], **GREEDY)
    xla([longer], **GREEDY)
    assert xla.traces == 1 and len(logged) == 1
    xla(["x " * 40], **GREEDY)  # a longer bucket compiles once more
    assert xla.traces == 2


@pytest.mark.slow
def test_xla_and_eager_sample_the_same_text_for_a_seed(model_and_tokenizer):
    # No top-k/top-p cut: this barely trained model's logits are near ties, and which tie
    # falls inside a cut can differ by float rounding between the two; the draws cannot.
    options = dict(do_sample=True, top_k=0, top_p=1.0, seed=11, max_new_tokens=12)
    eager = [s.completion for s in generator(model_and_tokenizer, xla=False)[0](["The", "Return the value"], **options)]
    xla = [s.completion for s in generator(model_and_tokenizer, xla=True)[0](["The", "Return the value"], **options)]
    assert eager == xla


@pytest.mark.parametrize("xla", [False, True])
def test_same_seed_same_text(model_and_tokenizer, xla):
    gen = generator(model_and_tokenizer, xla=xla)[0]
    options = dict(do_sample=True, top_k=20, top_p=0.9, temperature=1.2, max_new_tokens=12)
    first = [s.completion for s in gen(["The", "Return the"], seed=5, **options)]
    again = [s.completion for s in gen(["The", "Return the"], seed=5, **options)]
    other = [s.completion for s in gen(["The", "Return the"], seed=6, **options)]
    assert first == again and first != other


@pytest.mark.parametrize("xla", [False, True])
def test_batch_gives_each_prompt_its_solo_completion(model_and_tokenizer, xla):
    gen = generator(model_and_tokenizer, xla=xla)[0]
    prompts = ["The", "Return the number of", "A list"]
    batch = [s.completion for s in gen(prompts, **GREEDY)]
    alone = [gen([p], **GREEDY)[0].completion for p in prompts]
    assert batch == alone


def test_min_new_tokens_holds_eos_back_and_beams_run(model_and_tokenizer):
    gen = generator(model_and_tokenizer, xla=False)[0]
    samples = gen(["The"], do_sample=False, min_new_tokens=6, max_new_tokens=8)
    assert samples[0].new_tokens >= 6
    stopped = gen(["The"] * 8, do_sample=True, seed=0, max_new_tokens=60)
    assert all(sample.stopped_at_eos or sample.new_tokens == 60 for sample in stopped)
    beams = gen(["The", "Return"], do_sample=False, num_beams=2, num_return_sequences=2, max_new_tokens=5)
    assert len(beams) == 4 and [s.prompt for s in beams] == ["The", "The", "Return", "Return"]


def test_fused_top_k_top_p_equals_transformers_warpers():
    import tensorflow as tf
    from transformers.generation.tf_logits_process import (
        TFTemperatureLogitsWarper,
        TFTopKLogitsWarper,
        TFTopPLogitsWarper,
    )

    from tfclm.generation.sampling import filter_logits

    scores = tf.constant(np.random.default_rng(0).normal(size=(4, 500)) * 3, tf.float32)
    for top_k, top_p in ((30, 0.8), (0, 0.8), (30, 1.0)):
        expected = TFTemperatureLogitsWarper(0.7)(None, scores, 1)
        if top_k:
            expected = TFTopKLogitsWarper(top_k)(None, expected, 1)
        if top_p < 1:
            expected = TFTopPLogitsWarper(top_p)(None, expected, 1)
        ours = filter_logits(scores, top_k=top_k, top_p=top_p, temperature=0.7).numpy()
        kept_expected, kept_ours = expected.numpy() > -1e30, ours > -1e30
        assert np.array_equal(kept_expected, kept_ours) and kept_ours.sum(axis=1).min() >= 1
        assert np.allclose(ours[kept_ours], (scores.numpy() / 0.7)[kept_ours])


def test_sampling_draws_from_the_filtered_softmax_with_a_new_seed_each_step():
    """transformers' TF sampling reuses one seed for every step; tfclm's must not, and must follow the distribution."""
    import tensorflow as tf

    from tfclm.generation.sampling import SamplingLogitsProcessor

    probs = np.array([0.5, 0.3, 0.15, 0.05])
    sampler = SamplingLogitsProcessor(top_k=3, top_p=1.0, temperature=1.0, seed=tf.constant([7, 0], tf.int32))

    def draws(rows, step):
        scores = tf.constant(np.tile(np.log(probs), (rows, 1)), tf.float32)
        return tf.argmax(sampler(None, scores, step), axis=-1).numpy().tolist()

    rows = np.array(draws(4000, 0))  # each row draws on its own
    frequencies = np.bincount(rows, minlength=4) / len(rows)
    assert frequencies[3] == 0  # top-k 3 removed the last token
    assert np.allclose(frequencies[:3], probs[:3] / probs[:3].sum(), atol=0.03)
    steps = [draws(1, step)[0] for step in range(60)]
    assert len(set(steps)) == 3  # a new draw each step, not one token repeated
    assert [draws(1, step)[0] for step in range(60)] == steps  # the same seed and step give the same draw


@pytest.mark.slow
def test_seeded_samples_do_not_repeat_one_token(model_and_tokenizer):
    gen = generator(model_and_tokenizer, xla=True)[0]
    samples = gen(["The"] * 4, do_sample=True, seed=1, max_new_tokens=30, min_new_tokens=30, top_k=50, top_p=0.95)
    for sample in samples:
        ids = model_and_tokenizer[1](sample.completion)["input_ids"]
        assert len(set(ids)) > 5, sample.completion
    assert len({s.completion for s in samples}) == 4  # each row its own draw


@pytest.mark.slow
def test_python_api_loads_once(trained_dir):
    import tfclm
    from tfclm.generation import generator as generate_module

    out = trained_dir[0]
    generate_module._GENERATORS.clear()  # what other tests of this worker loaded is not this test's
    first = tfclm.generate(out, ["The"], do_sample=False, max_new_tokens=6)
    second = tfclm.generate(out, "The list", do_sample=False, max_new_tokens=6)
    assert first[0].startswith("The") and second[0].startswith("The list")
    key = (os.path.realpath(out), True)
    assert list(generate_module._GENERATORS) == [key] and generate_module._GENERATORS[key][1].traces == 1


@pytest.mark.slow
def test_python_api_reloads_a_retrained_dir_and_keeps_few_models(trained_dir, tmp_path):
    from transformers import TFAutoModelForCausalLM

    import tfclm
    from tfclm.generation import generator as generate_module

    copies = []
    for i in range(generate_module.CACHED_MODELS + 1):
        copies.append(str(tmp_path / f"copy{i}"))
        shutil.copytree(trained_dir[0], copies[-1], ignore=shutil.ignore_patterns("checkpoints", "cache", "logs"))
    greedy = dict(do_sample=False, max_new_tokens=4, xla=False)
    before = tfclm.generate(copies[0], "The", **greedy)
    held = generate_module._GENERATORS[(os.path.realpath(copies[0]), False)][1]
    assert tfclm.generate(copies[0], "The", **greedy) == before
    assert generate_module._GENERATORS[(os.path.realpath(copies[0]), False)][1] is held  # loaded once
    # Train the directory "again": other weights in the same place.
    model = TFAutoModelForCausalLM.from_pretrained(copies[0])
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save_pretrained(copies[0])
    tfclm.generate(copies[0], "The", **greedy)
    reloaded = generate_module._GENERATORS[(os.path.realpath(copies[0]), False)][1]
    assert reloaded is not held
    assert [float(v) for v in reloaded.model.get_weights()[0].ravel()[:3]] == [
        float(v) for v in model.get_weights()[0].ravel()[:3]
    ]
    for copy in copies[1:]:
        tfclm.generate(copy, "The", **greedy)
    assert len(generate_module._GENERATORS) == generate_module.CACHED_MODELS
    assert (os.path.realpath(copies[0]), False) not in generate_module._GENERATORS  # the least recently used went


@pytest.mark.slow
def test_new_seeds_compile_nothing_and_the_callers_tokenizer_is_left_alone(trained_dir):
    from tfclm.generation.generator import Generator
    from tfclm.model.loading import load_trained

    model, tokenizer = load_trained(trained_dir[0])
    tokenizer.padding_side = "right"
    pad_before = tokenizer.pad_token
    compiled = Generator(model, tokenizer, xla=True, log=lambda line: None)
    eager = Generator(model, tokenizer, xla=False, log=lambda line: None)
    sample = dict(do_sample=True, max_new_tokens=8, top_k=50, top_p=0.95)
    for seed in (1, 2, 3):
        assert [s.text for s in compiled(["The list", "Return the"], seed=seed, **sample)] == [
            s.text for s in eager(["The list", "Return the"], seed=seed, **sample)
        ]
    assert compiled.traces == 1  # three seeds, one compile
    assert tokenizer.padding_side == "right" and tokenizer.pad_token == pad_before


@pytest.mark.slow
def test_cli_prompts_from_file_and_stdin_as_json(trained_dir, tmp_path):
    from click.testing import CliRunner

    from tfclm.cli import cli

    out = trained_dir[0]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The list type\n\nReturn the\n")
    result = run_cli(
        ["generate", "--model", out, "--prompt-file", str(prompts), "--greedy", "--max-new-tokens", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["The list type", "Return the"]
    assert all(
        set(r) == {"prompt", "completion", "prompt_tokens", "new_tokens", "seconds", "stopped_at_eos"}
        and r["prompt_tokens"] > 0
        for r in rows
    )
    piped = CliRunner().invoke(
        cli,
        ["generate", "--model", out, "--prompt-file", "-", "--greedy", "--max-new-tokens", "5", "--json"],
        input="The list type\nReturn the\n",
    )
    assert piped.exit_code == 0 and [json.loads(line)["completion"] for line in piped.stdout.splitlines()] == [
        r["completion"] for r in rows
    ]


@pytest.mark.parametrize(
    "args, named",
    [
        (["--prompt", ""], "prompt"),
        (["--prompt", "x", "--top-p", "1.5"], "--top-p"),
        (["--prompt", "x", "--top-p", "0"], "--top-p"),
        (["--prompt", "x", "--max-new-tokens", "-1"], "--max-new-tokens"),
        (["--prompt", "x", "--num-beams", "0"], "--num-beams"),
        ([], "--prompt"),
    ],
)
@pytest.mark.slow
def test_generate_bad_input(trained_dir, args, named):
    result = run_cli(["generate", "--model", trained_dir[0], *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert named in line
