"""tfclm's TF Llama, Mistral, Qwen 2, Qwen 3, Gemma 1 to 3 and Phi-3 against PyTorch transformers: checkpoints
saved by PyTorch's `save_pretrained` load through `TFAutoModelForCausalLM` after `import tfclm` and give PyTorch's
logits and greedy tokens."""

import json
import os

import numpy as np
import pytest

from helpers import SMALL, pytorch_model

LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}  # fmt: skip
# Phi-3's LongRoPE: a factor per rotary channel pair (head 8 wide, half of it turning: 2 pairs), the long ones
# once a batch passes 8 positions (the 10-token batch below does).
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 4.0]}
YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
CONFIGS = {
    "llama": dict(model_type="llama", tie_word_embeddings=False),
    "llama, llama3 rope, biases, tied": dict(
        model_type="llama", rope_scaling=LLAMA3_ROPE, attention_bias=True, mlp_bias=True, tie_word_embeddings=True
    ),
    "llama, linear rope, MHA": dict(
        model_type="llama",
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        num_key_value_heads=4,
        rope_theta=500000.0,
    ),  # fmt: skip
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3, head_dim, q/k norms": dict(model_type="qwen3", head_dim=16, tie_word_embeddings=False),
    "mistral, sliding window": dict(model_type="mistral", sliding_window=4, tie_word_embeddings=False),
    "mistral, no window": dict(model_type="mistral", sliding_window=None, head_dim=16),
    "gemma, head_dim, tanh gelu": dict(model_type="gemma", head_dim=16, hidden_act="gelu_pytorch_tanh"),
    "gemma, exact gelu, attention bias": dict(model_type="gemma", head_dim=8, hidden_act="gelu", attention_bias=True),
    "phi3, fused projections, sliding window": dict(model_type="phi3", sliding_window=4, tie_word_embeddings=False),
    "phi3, partial rotary, longrope": dict(
        model_type="phi3",
        partial_rotary_factor=0.5,
        original_max_position_embeddings=8,
        rope_scaling=LONGROPE,
        tie_word_embeddings=True,
    ),  # fmt: skip
    "phi3, longrope within the original context": dict(
        model_type="phi3",
        original_max_position_embeddings=16,
        rope_scaling=dict(LONGROPE, short_factor=[1.0, 1.5, 2.0, 3.0], long_factor=[5.0, 6.0, 7.0, 8.0]),
    ),  # fmt: skip
    "gemma2, soft-capping, alternating windows": dict(
        model_type="gemma2",
        head_dim=8,
        sliding_window=4,
        query_pre_attn_scalar=12,
        attn_logit_softcapping=0.5,
        final_logit_softcapping=0.7,
    ),  # fmt: skip
    "gemma2, no soft-capping, attention bias": dict(
        model_type="gemma2",
        head_dim=16,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        attention_bias=True,
        tie_word_embeddings=False,
    ),  # fmt: skip
    "gemma3, q/k norms, local rotation, linear rope": dict(
        model_type="gemma3_text",
        head_dim=8,
        sliding_window=3,
        sliding_window_pattern=2,
        rope_local_base_freq=100.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0},
        query_pre_attn_scalar=6,
        final_logit_softcapping=0.9,
    ),  # fmt: skip
    "olmo2, q/k norms over the projections, norms after": dict(model_type="olmo2", tie_word_embeddings=False),
    "granite, multipliers, biases": dict(
        model_type="granite",
        embedding_multiplier=6.0,
        residual_multiplier=0.3,
        attention_multiplier=0.15,
        logits_scaling=4.0,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    ),  # fmt: skip
    "qwen2, yarn rope": dict(model_type="qwen2", rope_scaling=YARN_ROPE, tie_word_embeddings=False),
}


def pytorch_logits(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()


BATCH = np.random.default_rng(0).integers(2, 90, (2, 10)).astype(np.int32)
MASK = np.ones_like(BATCH)
MASK[1, 7:] = 0  # right padding


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_tf_class_gives_pytorchs_logits(name, tmp_path):
    from transformers import TFAutoModelForCausalLM

    reference = pytorch_model(CONFIGS[name], tmp_path)
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert type(model).__module__ == "tfclm.model.llama.modeling"
    got = model(input_ids=BATCH, attention_mask=MASK).logits.numpy()
    expected = pytorch_logits(reference, BATCH, MASK)
    np.testing.assert_allclose(got[MASK == 1], expected[MASK == 1], atol=1e-4, rtol=0)


def test_a_sharded_bfloat16_checkpoint_loads(tmp_path):
    from transformers import TFAutoModelForCausalLM

    reference = pytorch_model(CONFIGS["qwen2"], tmp_path, dtype=__import__("torch").bfloat16, max_shard_size="40KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    got = model(input_ids=BATCH, attention_mask=MASK).logits.numpy()
    np.testing.assert_allclose(got[MASK == 1], pytorch_logits(reference, BATCH, MASK)[MASK == 1], atol=1e-4)


def test_a_config_in_transformers_v5s_form_gives_the_same_model(tmp_path):
    """v5 writes `rope_parameters` where 4.x wrote `rope_theta` and `rope_scaling`."""
    from transformers import TFAutoModelForCausalLM

    reference = pytorch_model(CONFIGS["llama, llama3 rope, biases, tied"], tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["rope_parameters"] = {**config.pop("rope_scaling"), "rope_theta": config.pop("rope_theta")}
    path.write_text(json.dumps(config))
    got = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))(input_ids=BATCH, attention_mask=MASK).logits.numpy()
    np.testing.assert_allclose(got[MASK == 1], pytorch_logits(reference, BATCH, MASK)[MASK == 1], atol=1e-4)


@pytest.mark.parametrize(
    "name", ["qwen2", "mistral, sliding window", "phi3, fused projections, sliding window",
             "gemma2, soft-capping, alternating windows", "gemma3, q/k norms, local rotation, linear rope",
             "olmo2, q/k norms over the projections, norms after", "granite, multipliers, biases"],
)  # fmt: skip
def test_cached_decoding_greedy_tokens_padding_and_xla(name, tmp_path):
    """Step by step through the cache equals one pass; greedy tokens are PyTorch's (past the sliding window
    too); a left-padded batch gives each prompt its own tokens; XLA gives eager's."""
    import torch
    from transformers import TFAutoModelForCausalLM

    from tfclm.backend import tf

    reference = pytorch_model(CONFIGS[name], tmp_path)
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    ids = BATCH[:1, :6]
    out = model(input_ids=ids[:, :3], use_cache=True)
    steps, past = [out.logits.numpy()], out.past_key_values
    for t in range(3, 6):
        out = model(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
        steps.append(out.logits.numpy())
        past = out.past_key_values
    np.testing.assert_allclose(np.concatenate(steps, axis=1), model(input_ids=ids).logits.numpy(), atol=1e-5)

    greedy = dict(max_new_tokens=12, do_sample=False)
    tokens = model.generate(input_ids=tf.constant(ids), attention_mask=tf.ones_like(ids), **greedy).numpy()
    with torch.no_grad():
        pt_ids = torch.tensor(ids, dtype=torch.long)
        expected = reference.generate(input_ids=pt_ids, attention_mask=torch.ones_like(pt_ids), **greedy).numpy()
    assert tokens.tolist() == expected.tolist()

    padded = np.array([[0, 0, 5, 7, 9], [3, 4, 5, 7, 9]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
    batch = model.generate(input_ids=tf.constant(padded), attention_mask=tf.constant(mask), **greedy).numpy()
    alone = model.generate(input_ids=tf.constant(padded[:1, 2:]), **greedy).numpy()
    assert batch[0, 2:].tolist() == alone[0].tolist()
    xla = tf.function(model.generate, jit_compile=True)
    assert xla(input_ids=tf.constant(padded), attention_mask=tf.constant(mask), **greedy).numpy().tolist() == (
        batch.tolist()
    )


@pytest.mark.parametrize(
    "fields, said",
    [
        (dict(model_type="llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_type 'dynamic'"),
        (dict(model_type="gemma2", layer_types=["sliding_attention", "chunked_attention"]), "layer_types: one of"),
        (dict(model_type="llama", pretraining_tp=2), "pretraining_tp: tfclm's TF llama computes"),
    ],
)
def test_a_config_value_the_class_does_not_implement_is_refused_before_weights_load(fields, said):
    from transformers import AutoConfig, TFAutoModelForCausalLM

    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        TFAutoModelForCausalLM.from_config(AutoConfig.for_model(**{**SMALL, **fields}))


def test_fit_refuses_what_the_class_does_not_implement_before_any_write(tmp_path):
    from helpers import DEFAULT_CONFIG, TINY, error_line, run_cli, sets

    fields = {**SMALL, "model_type": "llama", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    out = tmp_path / "out"
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, *sets(f"model.config={json.dumps(fields)}"),
                               "--output-dir", str(out)]))  # fmt: skip
    assert line.startswith("Error: model.config: rope_scaling.rope_type 'dynamic': tfclm's TF llama computes") and (
        not out.exists()
    )


def test_a_mistral_saved_by_transformers_own_tf_class_loads_with_the_same_logits(tmp_path):
    """Run dirs of transformers' TF Mistral (tf_model.h5) load into tfclm's class, which replaced it."""
    from transformers import MistralConfig, TFAutoModelForCausalLM, TFMistralForCausalLM

    config = MistralConfig(**{**SMALL, "sliding_window": None})
    old = TFMistralForCausalLM(config)
    expected = old(input_ids=BATCH, attention_mask=MASK).logits.numpy()
    old.save_pretrained(str(tmp_path))
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert type(model).__module__ == "tfclm.model.llama.modeling"
    got = model(input_ids=BATCH, attention_mask=MASK).logits.numpy()
    np.testing.assert_allclose(got[MASK == 1], expected[MASK == 1], atol=1e-5, rtol=0)


V5_SAVE = """
import json, sys, torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

folder, fields, text = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
bpe.train_from_iterator([text] * 4, trainers.BpeTrainer(vocab_size=96, special_tokens=["<|endoftext|>"]))
tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields)).eval()
tokenizer.save_pretrained(folder)
model.save_pretrained(folder)
ids = tokenizer(text)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].tolist()
import transformers
print(json.dumps({"version": transformers.__version__, "ids": ids, "logits": logits}))
"""


def saved_by_v5(folder, fields: dict, text: str) -> dict:
    """A random PyTorch model of `fields` and a BPE trained on `text`, saved by transformers v5 in a process of
    its own; its version, `text`'s ids and their logits."""
    import subprocess
    import sys

    v5 = os.path.join(sys.prefix, "transformers-v5")
    if not os.path.isdir(v5):
        pytest.skip("make test installs transformers v5 into .venv/transformers-v5")
    env = {**os.environ, "PYTHONPATH": v5, "USE_TF": "0"}
    done = subprocess.run([sys.executable, "-c", V5_SAVE, str(folder), json.dumps(fields), text],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_checkpoint_and_tokenizer_saved_by_transformers_v5_load_after_import_tfclm(tmp_path):
    """v5 writes `rope_parameters` and a tokenizer of class TokenizersBackend, which 4.x's AutoTokenizer does not
    know; after `import tfclm` both load, and give v5's PyTorch logits."""

    from transformers import AutoTokenizer, TFAutoModelForCausalLM

    from helpers import run_cli

    fields = {**SMALL, "model_type": "llama", "rope_scaling": LLAMA3_ROPE, "pad_token_id": 0, "eos_token_id": 0}
    text = "the list type holds items in order"
    saved = saved_by_v5(tmp_path, fields, text)
    assert saved["version"].startswith("5.")
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    assert "rope_parameters" in json.loads((tmp_path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer(text)["input_ids"] == saved["ids"]
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    got = model(input_ids=np.array([saved["ids"]])).logits.numpy()[0]
    assert np.abs(got - np.array(saved["logits"])).max() < 1e-4
    result = run_cli(
        ["generate", "--model", str(tmp_path), "--prompt", "the list", "--greedy", "--max-new-tokens", "3"]
    )
    assert result.exit_code == 0, result.output


def test_a_gemma3_config_in_v5s_form_with_layer_types_gives_v5s_logits(tmp_path):
    """v5 writes Gemma 3's rotations as one set per layer type (`rope_parameters.full_attention`, `.sliding_attention`)
    and which layers slide as `layer_types`, where 4.x wrote rope_theta, rope_scaling, rope_local_base_freq and
    sliding_window_pattern. Here the layer types follow no pattern, and both rotations differ from 4.x's defaults."""

    from transformers import TFAutoModelForCausalLM

    fields = {
        **SMALL, **CONFIGS["gemma3, q/k norms, local rotation, linear rope"], "num_hidden_layers": 3,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        },
    }  # fmt: skip
    for old in ("rope_scaling", "rope_local_base_freq", "sliding_window_pattern"):
        fields.pop(old)
    saved = saved_by_v5(tmp_path, fields, "the list type holds items in order and the dict type maps keys")
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["layer_types"] == fields["layer_types"] and "full_attention" in written["rope_parameters"]
    assert len(saved["ids"]) > fields["sliding_window"]
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    got = model(input_ids=np.array([saved["ids"]])).logits.numpy()[0]
    assert np.abs(got - np.array(saved["logits"])).max() < 1e-4


def test_qwen2s_sliding_window_covers_the_layers_from_max_window_layers_as_v5s(tmp_path):
    """use_sliding_window: the layers from max_window_layers on slide (v5's and Qwen's rule; 4.52's eager
    attention windows every layer), here the second of two, over a text longer than the window."""
    from transformers import TFAutoModelForCausalLM

    fields = {**SMALL, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}
    saved = saved_by_v5(tmp_path, fields, "the list type holds items in order and the dict type maps keys")
    assert json.loads((tmp_path / "config.json").read_text())["layer_types"] == ["full_attention", "sliding_attention"]
    assert len(saved["ids"]) > fields["sliding_window"]
    model = TFAutoModelForCausalLM.from_pretrained(str(tmp_path))
    got = model(input_ids=np.array([saved["ids"]])).logits.numpy()[0]
    assert np.abs(got - np.array(saved["logits"])).max() < 1e-4
