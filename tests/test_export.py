"""Export: PyTorch weights loaded by transformers without TensorFlow; a SavedModel served without transformers."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import run_cli

PROMPTS = ["The list type", "Return the value of"]


def subprocess_env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def tf_logits(model_dir):
    from transformers import AutoTokenizer, TFAutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = TFAutoModelForCausalLM.from_pretrained(model_dir)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return ids, [model(input_ids=np.array([row], dtype=np.int32)).logits.numpy()[0] for row in ids]


@pytest.mark.slow
def test_pytorch_export_matches_tf_logits_without_tensorflow(trained_dir, tmp_path):
    pytest.importorskip("torch")
    out = trained_dir[0]
    before = {
        name: os.path.getmtime(os.path.join(out, name))
        for name in os.listdir(out)
        if os.path.isfile(os.path.join(out, name))
    }
    target = str(tmp_path / "pt")
    result = run_cli(["export", "--model", out, "--to", "pytorch", "--output", target])
    assert result.exit_code == 0, result.output
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(os.listdir(target))
    ids, expected = tf_logits(out)
    np.save(tmp_path / "expected.npy", np.concatenate([e.reshape(-1) for e in expected]))

    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({target!r}).eval()
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
        tokenizer = AutoTokenizer.from_pretrained({target!r})
        rows = {ids!r}
        assert [tokenizer(p)["input_ids"] for p in {PROMPTS!r}] == rows
        with torch.no_grad():
            got = np.concatenate([model(torch.tensor([r])).logits.numpy()[0].reshape(-1) for r in rows])
        expected = np.load({str(tmp_path / "expected.npy")!r})
        print("max abs diff", float(np.abs(got - expected).max()))
        assert "tensorflow" not in sys.modules
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=subprocess_env(USE_TF="0", USE_TORCH="1"),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    diff = float(done.stdout.split("max abs diff")[1])
    assert diff < 1e-4
    after = {name: os.path.getmtime(os.path.join(out, name)) for name in before}
    assert after == before  # the export reads the output dir and never writes it
    assert run_cli(["evaluate", "--model", out, "--json"]).exit_code == 0


V5_SITE = os.path.join(sys.prefix, "transformers-v5")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(V5_SITE), reason="make test installs transformers v5 into .venv/transformers-v5")
def test_pytorch_export_loads_in_transformers_v5(trained_dir, tmp_path):
    pytest.importorskip("torch")
    target = str(tmp_path / "pt")
    assert run_cli(["export", "--model", trained_dir[0], "--to", "pytorch", "--output", target]).exit_code == 0
    ids, expected = tf_logits(trained_dir[0])
    np.save(tmp_path / "expected.npy", np.concatenate([e.reshape(-1) for e in expected]))
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch, transformers
        from transformers import AutoModelForCausalLM
        assert transformers.__version__.startswith("5."), transformers.__version__
        model = AutoModelForCausalLM.from_pretrained({target!r}).eval()
        with torch.no_grad():
            got = np.concatenate([model(torch.tensor([r])).logits.numpy()[0].reshape(-1) for r in {ids!r}])
        print("max abs diff", float(np.abs(got - np.load({str(tmp_path / "expected.npy")!r})).max()))
        assert "tensorflow" not in sys.modules
    """)
    env = subprocess_env(USE_TF="0", PYTHONPATH=V5_SITE)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert float(done.stdout.split("max abs diff")[1]) < 1e-4


@pytest.mark.slow
def test_saved_model_greedy_generate_matches_tfclm_generate(trained_dir, tmp_path):
    out = trained_dir[0]
    target = str(tmp_path / "served")
    result = run_cli(
        [
            "export",
            "--model",
            out,
            "--to",
            "saved_model",
            "--output",
            target,
            "--prompt-length",
            "16",
            "--max-new-tokens",
            "10",
        ]
    )
    assert result.exit_code == 0, result.output
    assert {"saved_model.pb", "tokenizer.json", "README.md"} <= set(os.listdir(target))
    assert ":predict" in open(os.path.join(target, "README.md")).read()
    cli = run_cli(
        [
            "generate",
            "--model",
            out,
            *sum((["--prompt", p] for p in PROMPTS), []),
            "--greedy",
            "--max-new-tokens",
            "10",
            "--json",
        ]
    )
    expected = [json.loads(line)["completion"] for line in cli.stdout.splitlines()]

    script = textwrap.dedent(f"""
        import json, sys, numpy as np, tensorflow as tf
        from tokenizers import Tokenizer
        served = tf.saved_model.load({target!r})
        tokenizer = Tokenizer.from_file({os.path.join(target, "tokenizer.json")!r})
        eos = tokenizer.token_to_id("<|endoftext|>")
        rows = [tokenizer.encode(p, add_special_tokens=False).ids for p in {PROMPTS!r}]
        ids = np.array([[eos] * (16 - len(r)) + r for r in rows], dtype=np.int32)
        mask = np.array([[0] * (16 - len(r)) + [1] * len(r) for r in rows], dtype=np.int32)
        def generate(do_sample, seed):
            return served.signatures["generate"](
                input_ids=tf.constant(ids), attention_mask=tf.constant(mask), max_new_tokens=tf.constant(10),
                do_sample=tf.constant(do_sample), seed=tf.constant([seed, 0]))
        out = generate(False, 0)
        texts = []
        for row in out["new_tokens"].numpy().tolist():
            row = row[: row.index(eos) + 1] if eos in row else row
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
        logits = served.signatures["logits"](
            input_ids=tf.constant([rows[0]]), attention_mask=tf.constant([[1] * len(rows[0])]))["logits"]
        sampled = [generate(True, s)["new_tokens"].numpy().tolist() for s in (1, 1, 2)]
        assert "transformers" not in sys.modules
        same, other = sampled[0] == sampled[1], sampled[0] != sampled[2]
        shape = list(logits.shape)
        print(json.dumps({{"texts": texts, "logits_shape": shape, "same_seed": same, "other_seed": other}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["texts"] == expected
    assert got["logits_shape"][-1] > 0 and got["same_seed"] and got["other_seed"]


@pytest.mark.slow
def test_export_bad_input(trained_dir, tmp_path):
    out = trained_dir[0]
    existing = tmp_path / "exists"
    existing.mkdir()
    for args, named in (
        (["--model", out, "--to", "pytorch", "--output", str(existing)], "--force"),
        (["--model", str(tmp_path / "empty"), "--to", "pytorch", "--output", str(tmp_path / "x")], "does not exist"),
        (["--model", str(existing), "--to", "pytorch", "--output", str(tmp_path / "y")], "holds no model weights"),
        (["--model", out, "--to", "onnx", "--output", str(tmp_path / "z")], "--to"),
    ):
        result = run_cli(["export", *args])
        assert result.exit_code == 2 and "Traceback" not in result.output and named in result.output, result.output


def test_a_family_xla_cannot_serve_is_pointed_to_pytorch():
    from transformers import BertConfig, TFAutoModelForCausalLM

    from tfclm.errors import ConfigError
    from tfclm.generation.export import _check_serving

    config = BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, vocab_size=40, is_decoder=True)
    with pytest.raises(ConfigError, match=r"^--to: .* which BERT cannot .*; export it with --to pytorch$"):
        _check_serving(TFAutoModelForCausalLM.from_config(config))
