"""LiteRT export: prefill/decode signatures with a caller-held KV cache, run by ai-edge-litert's interpreter."""

import json
import os

import numpy as np
import pytest

from helpers import DEFAULT_CONFIG, TINY_BUILTIN, TINY_CONFIGS, error_line, run_cli, sets, tiny, tree

pytest.importorskip("ai_edge_litert")

# Wide enough that the weights, not the signatures' graphs, make most of the file (as in any real model).
WIDE = sets("model.config.n_layer=2", "model.config.n_embd=256", "model.config.n_head=4", "generate.max_new_tokens=4")
EXPORT = ["--max-length", "64", "--prefill-lengths", "8,32"]


def interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A GPT-2 trained by a tiny fit, and its float and int8 LiteRT exports (with the lines export printed)."""
    root = tmp_path_factory.mktemp("litert")
    run = str(root / "run")
    fit = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, *WIDE, "--max-steps", "30", "--output-dir", run])
    assert fit.exit_code == 0, fit.output
    exports, lines = {}, {}
    for quantize in ("none", "int8"):
        exports[quantize] = str(root / quantize)
        done = run_cli(
            ["export", "--model", run, "--to", "litert", "--output", exports[quantize], "--quantize", quantize, *EXPORT]
        )
        assert done.exit_code == 0, done.output
        lines[quantize] = done.output
    return run, exports, lines


def decode_by_hand(path, prompt, prefill, steps):
    """Greedy tokens and each step's logits, driving the signatures directly: the prompt padded into `prefill`."""
    runner = interpreter(path)
    spec = json.load(open(os.path.join(os.path.dirname(path), "litert.json")))
    cache = {
        f"kv_cache_{kind}_{i}": np.zeros(spec["cache_shape"], np.float32)
        for i in range(spec["layers"])
        for kind in "kv"
    }
    tokens = np.zeros([1, prefill], np.int32)
    tokens[0, : len(prompt)] = prompt
    out = runner.get_signature_runner(f"prefill_{prefill}")(
        tokens=tokens, input_pos=np.arange(prefill, dtype=np.int32), **cache
    )
    logits = [out.pop("logits")[0, len(prompt) - 1]]
    decode, new = runner.get_signature_runner("decode"), []
    for _ in range(steps - 1):
        new.append(int(np.argmax(logits[-1])))
        position = np.array([len(prompt) + len(new) - 1], np.int32)
        out = decode(tokens=np.array([[new[-1]]], np.int32), input_pos=position, **out)
        logits.append(out.pop("logits")[0, 0])
    return new + [int(np.argmax(logits[-1]))], logits


@pytest.mark.slow
def test_the_float_export_decodes_exactly_as_tf_generate(exported):
    from transformers import AutoTokenizer, TFAutoModelForCausalLM

    run, exports, _ = exported
    model, tokenizer = TFAutoModelForCausalLM.from_pretrained(run), AutoTokenizer.from_pretrained(run)
    path = os.path.join(exports["none"], "model.tflite")
    eight = tokenizer("The list type is a mutable sequence")["input_ids"][:8]
    # Eight tokens fill prefill_8; five are padded inside prefill_32.
    for prompt, prefill in ((eight, 8), (eight[:5], 32)):
        new, logits = decode_by_hand(path, prompt, prefill, 16)
        expected = model.generate(np.array([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert new == [int(t) for t in expected.numpy()[0, len(prompt) :]]
        reference = model(np.array([prompt + new[:-1]])).logits.numpy()[0, len(prompt) - 1 :]
        assert np.abs(np.stack(logits) - reference).max() < 1e-4


@pytest.mark.slow
def test_int8_is_a_third_of_the_float_file_within_2_percent_perplexity(exported):
    from transformers import AutoTokenizer

    from tfclm.generation.litert_runner import LiteRTGenerator, held_out_blocks

    run, exports, lines = exported
    sizes = {q: os.path.getsize(os.path.join(path, "model.tflite")) for q, path in exports.items()}
    assert sizes["int8"] <= 0.35 * sizes["none"]
    blocks = held_out_blocks(run, AutoTokenizer.from_pretrained(run), None, 32)
    perplexity = {}
    for quantize, path in exports.items():
        total, count = LiteRTGenerator(os.path.join(path, "model.tflite")).loss(blocks)
        perplexity[quantize] = np.exp(total / count)
    assert abs(perplexity["int8"] / perplexity["none"] - 1) <= 0.02
    # export printed the size and both perplexities on the same blocks (the run's validation split)
    assert f"model.tflite: {sizes['int8'] / 1e6:.2f} MB (int8" in lines["int8"]
    assert f"held-out perplexity {perplexity['int8']:.3f} against the TF model's" in lines["int8"]


@pytest.mark.slow
def test_generate_on_the_tflite_gives_the_tf_generators_text(exported):
    run, exports, _ = exported
    path = os.path.join(exports["none"], "model.tflite")
    asks = [
        ["--greedy", "--max-new-tokens", "10"],
        ["--do-sample", "--seed", "3", "--num-return-sequences", "2", "--top-k", "20", "--max-new-tokens", "10"],
    ]
    for ask in asks:
        prompts = ["--prompt", "The list type", "--prompt", "Return the value of"]
        texts = {}
        for model in (run, path):
            done = run_cli(["generate", "--model", model, *prompts, *ask, "--json"])
            assert done.exit_code == 0, done.output
            texts[model] = [json.loads(line)["completion"] for line in done.output.splitlines() if line.startswith("{")]
        assert len(texts[path]) == (2 if "--greedy" in ask else 4)
        assert texts[path] == texts[run]
    import tfclm

    # The library's entry point takes the .tflite as it takes a run dir.
    greedy = dict(do_sample=False, max_new_tokens=10)
    assert tfclm.generate(path, ["The list type"], **greedy) == tfclm.generate(run, ["The list type"], **greedy)


@pytest.mark.parametrize("model_type", ["gemma3_text", "phi3", "granite"])
def test_llama_like_families_decode_as_their_tf_model(model_type):
    """Sliding windows on a pattern of layers, their own rotation, soft-capping (Gemma 3); fused projections and
    partial rotary (Phi-3); multipliers and scaled logits (Granite): 30 steps, past the
    window."""
    from ai_edge_litert.interpreter import Interpreter

    from tfclm.generation import litert
    from tfclm.model.families import FAMILIES

    model = tiny(model_type, dropout=False)
    module = litert.LiteRTModule(model, 40, FAMILIES[model_type].litert_cache)
    runner = Interpreter(model_content=litert.convert(module, (8,), "none"))
    cache = {name: np.zeros(module.shapes.per_layer, np.float32) for name in module.shapes.names()}
    sequence = [5, 7, 9, 11, 3]
    out = runner.get_signature_runner("prefill_8")(
        tokens=np.array([sequence + [0, 0, 0]], np.int32), input_pos=np.arange(8, dtype=np.int32), **cache
    )
    logits = [out.pop("logits")[0, 4]]
    decode = runner.get_signature_runner("decode")
    for _ in range(30):
        sequence.append(int(np.argmax(logits[-1])))
        position = np.array([len(sequence) - 1], np.int32)
        out = decode(tokens=np.array([sequence[-1:]], np.int32), input_pos=position, **out)
        logits.append(out.pop("logits")[0, 0])
    reference = model(np.array([sequence])).logits.numpy()[0, 4:]
    assert len(sequence) > TINY_CONFIGS["gemma3_text"]["sliding_window"]  # Gemma 3's windows were passed
    assert np.abs(np.stack(logits) - reference).max() < 1e-4


def test_float16_weights_halve_the_weights_bytes_and_keep_the_logits():
    from ai_edge_litert.interpreter import Interpreter

    from tfclm.generation import litert

    model = tiny("gpt2", vocab=512, dropout=False)
    module = litert.LiteRTModule(model, 16, "stacked")
    files = {quantize: litert.convert(module, (8,), quantize) for quantize in ("none", "float16")}
    # Each float32 weight now takes 2 bytes, not 4: the file shrinks by nearly half the weights' bytes.
    assert len(files["none"]) - len(files["float16"]) > 0.45 * 4 * model.count_params()
    logits = {}
    for quantize, content in files.items():
        cache = {name: np.zeros(module.shapes.per_layer, np.float32) for name in module.shapes.names()}
        run = Interpreter(model_content=content).get_signature_runner("prefill_8")
        logits[quantize] = run(
            tokens=np.arange(3, 11, dtype=np.int32)[None], input_pos=np.arange(8, dtype=np.int32), **cache
        )["logits"]
    assert 0 < np.abs(logits["float16"] - logits["none"]).max() < 1e-2 * np.abs(logits["none"]).max()


@pytest.fixture()
def opt_dir(tmp_path, tokenizers):
    path = str(tmp_path / "opt")
    tiny("opt", vocab=len(tokenizers[False])).save_pretrained(path)
    tokenizers[False].save_pretrained(path)
    return path


def test_refusals_name_the_option_and_write_nothing(trained_dir, opt_dir, tmp_path):
    run = trained_dir[0]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (["--model", opt_dir, "--output", str(tmp_path / "a")], "--to", "the LiteRT export covers GPT-2"),
        (["--model", run, "--output", str(tmp_path / "b"), "--max-length", "100000"], "--max-length", "positions"),
        (["--model", run, "--output", str(tmp_path / "c"), *EXPORT[:2], "--prefill-lengths", "128"], "--prefill", ""),
        (["--model", run, "--output", str(taken)], "--output", "already exists"),
    ]
    before = {path: tree(path) for path in (run, opt_dir, str(tmp_path))}
    for args, flag, words in cases:
        line = error_line(run_cli(["export", "--to", "litert", *args]))
        assert flag in line and words in line, line
    assert {path: tree(path) for path in before} == before
    line = error_line(
        run_cli(["export", "--model", run, "--to", "pytorch", "--output", str(tmp_path / "d"), "--quantize", "int8"])
    )
    assert "--quantize" in line and "--to litert" in line
    line = error_line(run_cli(["generate", "--model", str(tmp_path / "none.tflite"), "--prompt", "The"]))
    assert "--model" in line and "does not exist" in line
