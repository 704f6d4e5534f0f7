"""Every TF causal-LM family in tfclm's table, checked on a tiny random model of it.

Each claim of `tfclm.model.families` is tested here: causal attention, an
untrained perplexity near the vocabulary size, batched and XLA greedy
generation equal to each prompt decoded alone, the refusals, and (slow) a
scratch fit, a fine-tune from the saved dir, evaluation and the PyTorch export
read back by transformers without TensorFlow, in this venv and in v5.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_seed_client import SEED_CLIENT

from tfclm.model.families import FAMILIES, TRAINED

from conftest import DEFAULT_CONFIG, PYDOC_TOPICS, TINY, run_cli, sets, tree

BERT_LIKE = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
ROBERTA_LIKE = dict(BERT_LIKE, max_position_embeddings=130)  # positions start after the pad id
GPT2_LIKE = dict(n_layer=2, n_embd=32, n_head=2, n_positions=128)
LLAMA_LIKE = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)
TINY_CONFIGS = {
    "gpt2": GPT2_LIKE,
    "gpt-sw3": GPT2_LIKE,
    "openai-gpt": GPT2_LIKE,
    "gptj": dict(GPT2_LIKE, rotary_dim=8),
    "opt": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
    ),
    "xglm": dict(num_layers=2, d_model=32, attention_heads=2, ffn_dim=64, max_position_embeddings=128),
    "mistral": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=128,
    ),
    "ctrl": dict(n_layer=2, n_embd=32, n_head=2, dff=64, n_positions=128),
    **{
        model_type: dict(LLAMA_LIKE, tie_word_embeddings=model_type != "llama")
        for model_type in ("llama", "qwen2", "qwen3")
    },
    "bert": dict(BERT_LIKE, max_position_embeddings=128),
    "rembert": dict(BERT_LIKE, max_position_embeddings=128, input_embedding_size=32, output_embedding_size=32),
    "roberta": ROBERTA_LIKE,
    "roberta-prelayernorm": ROBERTA_LIKE,
    "camembert": ROBERTA_LIKE,
    "xlm-roberta": ROBERTA_LIKE,
}
PROMPTS = ["The list type", "Return the value of the first"]


def test_every_trained_family_is_tested_here():
    assert sorted(TINY_CONFIGS) == sorted(TRAINED)


def scratch(model_type, tokenizer, block_size=32, precision="fp32"):
    from tfclm.backend import keras
    from tfclm.config import ModelConfig
    from tfclm.model.loading import load_model

    keras.utils.set_random_seed(0)
    return load_model(
        ModelConfig(config={"model_type": model_type, **TINY_CONFIGS[model_type]}), tokenizer, block_size, precision
    )


def logits(model, ids):
    ids = np.asarray(ids, dtype=np.int32)
    return model(input_ids=ids, attention_mask=np.ones_like(ids)).logits.numpy()


@pytest.mark.parametrize("model_type", TRAINED)
def test_later_tokens_never_move_earlier_logits(model_type, tokenizer):
    """BERT-likes without is_decoder see the whole block; tfclm builds every family causal."""
    model = scratch(model_type, tokenizer)
    ids = np.random.default_rng(0).integers(1, len(tokenizer), size=(2, 24))
    changed = ids.copy()
    changed[:, 12:] = np.random.default_rng(1).integers(1, len(tokenizer), size=(2, 12))
    np.testing.assert_array_equal(logits(model, ids)[:, :12], logits(model, changed)[:, :12])
    assert not np.array_equal(logits(model, ids)[:, 12:], logits(model, changed)[:, 12:])


@pytest.mark.parametrize("model_type", TRAINED)
def test_an_untrained_model_is_as_unsure_as_its_vocabulary(model_type, tokenizer):
    """Perplexity near the vocabulary size: TF OPT's scratch embeddings, drawn with the pad id, gave 5.5e14."""
    from tfclm.model.loss import token_loss_sums

    model = scratch(model_type, tokenizer)
    text = open(os.path.join(PYDOC_TOPICS, sorted(os.listdir(PYDOC_TOPICS))[50])).read()
    ids = np.array([tokenizer(text)["input_ids"][: 32 * 4]]).reshape(4, 32)
    total, count = token_loss_sums(ids, logits(model, ids))
    perplexity = math.exp(float(total) / float(count))
    assert len(tokenizer) / 2 < perplexity < len(tokenizer) * 2, perplexity
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.eos_token_id == tokenizer.eos_token_id


def greedy_alone(model, tokenizer, prompt, steps):
    """The reference: a whole forward pass over the prompt and what it has made so far, one token at a time."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for _ in range(steps):
        ids.append(int(np.argmax(logits(model, [ids])[0, -1])))
    return tokenizer.decode(ids[-steps:])


@pytest.mark.slow  # an XLA compile per family
@pytest.mark.parametrize("model_type", TRAINED)
def test_a_batch_decodes_as_each_prompt_alone_eager_and_xla(model_type, tokenizer):
    """Left padding and XLA's bucket padding shifted positions in OpenAI GPT and the BERT-likes."""
    from tfclm.generation.generator import Generator

    model = scratch(model_type, tokenizer, block_size=16)
    steps = 6
    options = dict(do_sample=False, max_new_tokens=steps)
    expected = [greedy_alone(model, tokenizer, prompt, steps) for prompt in PROMPTS]
    for xla in (False, True):
        generator = Generator(model, tokenizer, xla=xla, log=lambda line: None)
        eos = tokenizer.eos_token
        alone = [generator([prompt], **options)[0].completion for prompt in PROMPTS]
        batch = [sample.completion for sample in generator(PROMPTS, **options)]
        # A completion ends at EOS; the reference runs on past it.
        assert [e.split(eos)[0] for e in expected] == alone == batch, (xla, expected, alone, batch)


@pytest.mark.parametrize(
    "model_type, named",
    [(t, FAMILIES[t].refused.split(";")[0][:40]) for t in ("roformer", "xlnet", "transfo-xl", "xlm")]
    + [("no-such-arch", "does not know")],
)
def test_a_family_that_cannot_train_is_refused_before_any_write(model_type, named, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    args = [*TINY, *sets(f"model.config={{model_type: {model_type}}}"), "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(line) == 1 and line[0].startswith("Error: model.config.model_type: ") and named in line[0], line
    assert "use one of gpt2, gpt-sw3" in line[0]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("model_type", [t for t in TRAINED if FAMILIES[t].fp32_only])
def test_a_family_that_fails_in_bf16_is_refused_at_config_time(model_type, tmp_path):
    config = json.dumps({"model_type": model_type, **TINY_CONFIGS[model_type]})
    args = [*TINY, *sets(f"model.config={config}", "train.precision=bf16"), "--output-dir", str(tmp_path / "run")]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Error: train.precision: {FAMILIES[model_type].name} trains in fp32 only" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model_type", [t for t in TRAINED if not FAMILIES[t].fp32_only])
def test_every_other_family_takes_a_training_step_in_bf16(model_type, tokenizer):
    from tfclm.backend import keras, tf

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = scratch(model_type, tokenizer, precision="bf16")
        ids = np.random.default_rng(0).integers(1, len(tokenizer), size=(2, 16)).astype(np.int32)
        with tf.GradientTape() as tape:
            out = model(input_ids=ids, attention_mask=np.ones_like(ids), training=True).logits
            loss = tf.reduce_mean(tf.cast(out, tf.float32))
        gradients = tape.gradient(loss, model.trainable_variables)
        assert out.dtype == tf.bfloat16 and all(g is not None for g in gradients)
    finally:
        keras.mixed_precision.set_global_policy("float32")


V5_SITE = os.path.join(sys.prefix, "transformers-v5")
PT_CHECK = textwrap.dedent("""
    import json, sys, numpy as np, torch, transformers
    from transformers import AutoModelForCausalLM
    target, expected, rows = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
    model, info = AutoModelForCausalLM.from_pretrained(target, output_loading_info=True)
    with torch.no_grad():
        got = np.stack([model.eval()(torch.tensor([r])).logits.numpy()[0] for r in rows])
    print(json.dumps({"version": transformers.__version__, "diff": float(np.abs(got - expected).max()),
                      "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                      "tensorflow": "tensorflow" in sys.modules}))
""")


def pytorch_logits_check(target: str, expected_file: str, rows, v5: bool) -> dict:
    env = {**os.environ, "USE_TF": "0", "USE_TORCH": "1", "PYTHONUNBUFFERED": "1"}
    if v5:
        env["PYTHONPATH"] = V5_SITE
    done = subprocess.run(
        [sys.executable, "-c", PT_CHECK, target, expected_file, json.dumps(rows)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def served_greedy(served: str, model_dir: str) -> list[str]:
    """The SavedModel's greedy answers to PROMPTS, left-padded to its 16-token prompt length."""
    from transformers import AutoTokenizer

    from tfclm.backend import tf

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    pad = tokenizer.pad_token_id
    ids = np.array([[pad] * (16 - len(r)) + r for r in rows], dtype=np.int32)
    mask = np.array([[0] * (16 - len(r)) + [1] * len(r) for r in rows], dtype=np.int32)
    out = tf.saved_model.load(served).signatures["generate"](
        input_ids=tf.constant(ids),
        attention_mask=tf.constant(mask),
        max_new_tokens=tf.constant(4),
        do_sample=tf.constant(False),
        seed=tf.constant([0, 0]),
    )
    eos = tokenizer.eos_token_id
    rows = [row[: row.index(eos) + 1] if eos in row else row for row in out["new_tokens"].numpy().tolist()]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def generated_greedy(model_dir: str) -> list[str]:
    from tfclm.generation.generator import Generator
    from tfclm.model.loading import load_trained

    generator = Generator(*load_trained(model_dir), xla=False, log=lambda line: None)
    return [sample.completion for sample in generator(PROMPTS, do_sample=False, max_new_tokens=4)]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", TRAINED)
def test_each_family_end_to_end(model_type, tmp_path):
    """Scratch fit, fine-tune from the saved dir, evaluate, generate, export; PyTorch reads the export."""
    pytest.importorskip("torch")
    from transformers import AutoTokenizer, TFAutoModelForCausalLM

    config = json.dumps({"model_type": model_type, **TINY_CONFIGS[model_type]})
    first, second = str(tmp_path / "scratch"), str(tmp_path / "tuned")
    common = [*TINY, *sets("data.block_size=32", "generate.max_new_tokens=4", "logging.report_to=[none]")]
    fit = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *common, *sets(f"model.config={config}"), "--max-steps", "4"]
        + ["--output-dir", first]
    )
    assert fit.exit_code == 0, fit.output
    tuned = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *common, *sets("model.config=null", f"model.name_or_path={first}")]
        + ["--max-steps", "2", "--output-dir", second]
    )
    assert tuned.exit_code == 0, tuned.output
    results = json.load(open(os.path.join(second, "results.json")))
    assert results["train_steps"] == 2 and len(results["samples"]) == 2 and math.isfinite(results["eval_loss"])
    evaluated = run_cli(["evaluate", "--model", second, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output[evaluated.output.index('{"loss"') :])  # after the progress bar (stderr)
    assert math.isfinite(figures["loss"]) and figures["method"] == "blocks of 32 tokens"

    served = str(tmp_path / "served")
    exported = run_cli(
        ["export", "--model", second, "--to", "saved_model", "--output", served]
        + ["--prompt-length", "16", "--max-new-tokens", "4"]
    )
    if FAMILIES[model_type].saved_model:
        assert exported.exit_code == 0, exported.output
        assert served_greedy(served, second) == generated_greedy(second)
    else:
        assert exported.exit_code == 2 and "--to pytorch" in exported.output and not os.path.exists(served)

    # The seed recipe's inference code, word for word (pipeline, then generate: 26 + 100 tokens) on the fine-tuned dir;
    # after `import tfclm` for the families whose TF classes are tfclm's.
    client = "import tfclm\n" if FAMILIES[model_type].tfclm_classes else ""
    client += SEED_CLIENT.format(model=second, framework="") + 'print("DECODED", decoded[0])'
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "DECODED Somatic hypermutation" in done.stdout, done.stderr[-3000:]

    target = str(tmp_path / "pt")
    exported = run_cli(["export", "--model", second, "--to", "pytorch", "--output", target])
    assert exported.exit_code == 0, exported.output
    tokenizer = AutoTokenizer.from_pretrained(second)
    model = TFAutoModelForCausalLM.from_pretrained(second)
    rows = [tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"][:6]]
    np.save(tmp_path / "expected.npy", np.stack([logits(model, [row])[0] for row in rows]))
    versions = [False, True] if os.path.isdir(V5_SITE) else [False]
    for v5 in versions:
        found = pytorch_logits_check(target, str(tmp_path / "expected.npy"), rows, v5)
        assert found["version"].startswith("5." if v5 else "4."), found
        assert found["diff"] < 1e-4 and found["unexpected"] == [] and not found["tensorflow"], found
        assert all("lm_head" in key or "decoder" in key for key in found["missing"]), found  # tied heads only


@pytest.mark.parametrize("model_type", [t for t in TRAINED if FAMILIES[t].pad_id is not None])
def test_roberta_positions_skip_nothing_of_the_text(model_type, tokenizer, tmp_path):
    """TF's RoBERTa-likes skip id 1 when they number positions; in a plain BPE that id is "!"."""
    from tfclm.config import ModelConfig
    from tfclm.data.tokenizer import train_bpe
    from tfclm.errors import ConfigError
    from tfclm.model.loading import load_model

    model = scratch(model_type, tokenizer)
    ids = np.array([tokenizer("Stop! Go! Wait!!", add_special_tokens=False)["input_ids"]], dtype=np.int32)
    assert tokenizer.pad_token_id == 1 and 1 not in ids and ids.shape[1] > 5
    counted = np.arange(ids.shape[1])[None] + 2  # every token a position of its own, after the pad id
    expected = model(input_ids=ids, attention_mask=np.ones_like(ids), position_ids=counted).logits.numpy()
    np.testing.assert_array_equal(logits(model, ids), expected)

    model.save_pretrained(tmp_path)
    plain = train_bpe(["Stop! Go! Wait!! " * 20], 300)  # pads with EOS (id 0), and its id 1 is "!"
    with pytest.raises(ConfigError, match=r"^tokenizer.name_or_path: .* takes id 1 as padding .* pads with id 0"):
        load_model(ModelConfig(name_or_path=str(tmp_path)), plain, 32)


def test_the_readme_table_and_the_families_command_are_the_table():
    from tfclm.model.families import README_END, README_START, render_markdown

    from conftest import ROOT

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    assert table.strip("\n") + "\n" == render_markdown()
    assert run_cli(["families", "--markdown"]).output == render_markdown()
    text = run_cli(["families"])
    assert text.exit_code == 0
    for f in FAMILIES.values():
        assert f"{f.name} ({f.model_type})\n" in text.output
    assert text.output.count("trains in: refused") == 4 and "trains in: fp32\n" in text.output
