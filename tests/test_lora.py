"""LoRA: only the adapters train, the base stays bit-identical, and PEFT reads what tfclm writes (and back).

The bases are tiny random models of each family, saved by the tests; the
PyTorch side runs in a subprocess without TensorFlow.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfclm.model.families import FAMILIES, TRAINED

from helpers import (
    DEFAULT_CONFIG,
    PYDOC_TOPICS,
    SEED_CLIENT,
    TINY,
    TINY_CONFIGS,
    decoded_greedy,
    run_cli,
    scratch,
    sets,
    tree,
)

PROMPTS = ["The list type", "Return the value of the first"]
SAVED_NORM = {
    "gpt2": "ln_f",
    "opt": "final_layer_norm",
    "mistral": "norm",
    "llama": "norm",
    "gemma": "norm",
    "phi3": "norm",
}  # trained in full


def batches(tokenizer, rows=8, length=32):
    text = " ".join(open(os.path.join(PYDOC_TOPICS, n)).read() for n in sorted(os.listdir(PYDOC_TOPICS))[40:44])
    ids = np.array(tokenizer(text)["input_ids"][: rows * length], dtype=np.int32).reshape(rows, length)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}


def digest(variables) -> str:
    h = hashlib.sha256()
    for v in variables:
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def loss_on(model, batch) -> float:
    from tfclm.model.loss import token_loss_sums

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = token_loss_sums(batch["labels"], logits)
    return float(total / count)


def train(model, batch, steps, learning_rate=1e-2):
    from tfclm.config import TrainConfig
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer

    trainer = CausalLMTrainer(model)
    trainer.compile(optimizer=make_optimizer(TrainConfig(learning_rate=learning_rate), model, total_steps=steps))
    history = trainer.fit(batch, batch_size=4, epochs=steps, shuffle=False, verbose=0)
    return trainer, history.history["loss"]


@pytest.mark.parametrize("model_type", TRAINED)
def test_only_the_adapters_train_and_the_base_stays_bit_identical(model_type, tokenizer):
    from tfclm.config import LoraConfig
    from tfclm.model import lora

    model = scratch(model_type, tokenizer)
    base_weights = list(model.weights)
    before = digest(base_weights)
    adapters = lora.add_adapters(model, LoraConfig(rank=4, alpha=8))
    adapter_ids = {id(v) for _, adapter in lora.adapters_of(model).values() for v in adapter.weights}
    assert adapters.patterns == list(FAMILIES[model_type].lora_targets)
    assert {id(v) for v in model.trainable_variables} == adapter_ids and adapter_ids
    assert all(v.name.rsplit("/", 1)[-1].startswith(("lora_A", "lora_B")) for v in model.trainable_variables)

    batch = batches(tokenizer)
    loss_before = loss_on(model, batch)
    trainer, _ = train(model, batch, steps=6)
    # From a random base, near ln(512) = 6.24; the adapters alone bring it down by 0.03 to 0.1 in 6 steps.
    assert loss_on(model, batch) < loss_before - 0.02
    assert digest(base_weights) == before  # not one bit of the base moved
    # Optimizer state for the adapters only: two Adam slots each, and the step counter.
    slots = [v for v in trainer.inner_optimizer.variables() if len(v.shape)]
    assert sorted(v.shape.num_elements() for v in slots) == sorted(
        2 * [v.shape.num_elements() for v in model.trainable_variables]
    )
    assert all(np.any(adapter.lora_b.numpy() != 0) for _, adapter in lora.adapters_of(model).values())


def test_modules_to_save_train_in_full(tokenizers):
    from tfclm.config import LoraConfig
    from tfclm.model import lora

    model = scratch("gpt2", tokenizers[False])
    lora.add_adapters(model, LoraConfig(rank=2, target_modules=["c_attn"], modules_to_save=["ln_f"]))
    names = sorted(v.name.split("/", 1)[1] for v in model.trainable_variables if "lora" not in v.name)
    assert names == ["transformer/ln_f/beta:0", "transformer/ln_f/gamma:0"]
    assert len(lora.adapters_of(model)) == 2  # c_attn in each of the two blocks


def matrix(variable) -> bool:
    """A weight matrix or embedding table: 2-D, no side of 1 (GPT-2's Conv1D keeps its biases as (1, n))."""
    return len(variable.shape) >= 2 and min(variable.shape) > 1


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "gptj"])
def test_bf16_base_weights_halve_the_frozen_memory_and_change_no_logit(model_type, tokenizer):
    """Under mixed bfloat16 the layers read their weights in bfloat16 anyway: storing the frozen ones so is exact."""
    from tfclm.backend import keras
    from tfclm.config import LoraConfig
    from tfclm.model import lora

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = scratch(model_type, tokenizer)
        batch = batches(tokenizer)
        before = model(input_ids=batch["input_ids"]).logits.numpy()
        matrix_bytes = sum(v.shape.num_elements() * 4 for v in model.weights if matrix(v))
        lora.add_adapters(model, LoraConfig(rank=4, base_precision="bf16"))
        np.testing.assert_array_equal(model(input_ids=batch["input_ids"]).logits.numpy(), before)
        trainable = {id(v) for v in model.trainable_variables}
        frozen = [v for v in model.weights if id(v) not in trainable and matrix(v)]
        assert sum(v.shape.num_elements() * v.dtype.size for v in frozen) == matrix_bytes // 2
        assert all(v.dtype == "float32" for v in model.trainable_variables)
        loss_before = loss_on(model, batch)
        train(model, batch, steps=4)
        assert loss_on(model, batch) < loss_before - 0.02
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_add_lora_in_a_plain_keras_fit(tokenizers, tmp_path):
    """The Python API on a bare transformers model, trained by its own `fit` and loss: only the adapters move."""
    import tfclm
    from tfclm.backend import keras, tf
    from tfclm.errors import ConfigError
    from tfclm.model import lora

    model = scratch("gpt2", tokenizers[False])
    base = [v for v in model.weights]
    before = digest(base)
    adapters = tfclm.add_lora(model, rank=4, target_modules=["c_attn"], base="my/base")
    batch = batches(tokenizers[False])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    callbacks = [tfclm.callbacks.ThroughputCallback(tokens_per_step=4 * 32), tfclm.callbacks.PerplexityCallback()]
    logs = model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(4), epochs=3, verbose=0, callbacks=callbacks)
    assert logs.history["perplexity"][-1] < logs.history["perplexity"][0] and logs.history["tokens_per_second"][0] > 0
    assert digest(base) == before and len(model.trainable_variables) == 4
    adapters.save_pretrained(str(tmp_path))
    config = json.load(open(tmp_path / "adapter_config.json"))
    assert config["base_model_name_or_path"] == "my/base" and config["target_modules"] == ["c_attn"]
    assert sorted(lora.adapter_state(model)) == sorted(
        f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{m}.weight" for i in (0, 1) for m in "AB"
    )
    with pytest.raises(ConfigError, match="rank: must be at least 1"):
        tfclm.add_lora(scratch("gpt2", tokenizers[False]), rank=0)


def test_the_lora_recipe_config_trains_what_its_comment_counts():
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.config import load_config
    from tfclm.model import lora

    from helpers import ROOT

    config = load_config(os.path.join(ROOT, "configs", "distilgpt2-eli5-lora.yaml"))
    model = TFGPT2LMHeadModel(GPT2Config(n_layer=6))  # distilgpt2's shape, random weights
    model.build_in_name_scope()
    lora.add_adapters(model, config.lora)
    trainable = sum(v.shape.num_elements() for v in model.trainable_variables)
    assert trainable == 589_824 and f"{trainable / 81_912_576:.2%}" == "0.72%"
    assert sum(v.shape.num_elements() for v in model.weights) == 81_912_576 + trainable


def peft_script(base_pt, adapter, merged, peft_made, expected, rows, targets=None):
    """Run without TensorFlow: PEFT loads tfclm's adapter and tfclm's merged export; PEFT makes one of its own (on
    its own default modules for the family, or on `targets` where it has none)."""
    return textwrap.dedent(f"""
        import sys, numpy as np, torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        def logits(model):
            with torch.no_grad():
                return np.concatenate([model(torch.tensor([r])).logits.numpy()[0].reshape(-1) for r in {rows!r}])

        expected = np.load({expected!r})
        base = AutoModelForCausalLM.from_pretrained({base_pt!r}).eval()
        model = PeftModel.from_pretrained(base, {adapter!r}).eval()
        print("peft", float(np.abs(logits(model) - expected).max()))
        merged = AutoModelForCausalLM.from_pretrained({merged!r}).eval()
        print("merged", float(np.abs(logits(merged) - expected).max()))

        torch.manual_seed(0)
        fresh = AutoModelForCausalLM.from_pretrained({base_pt!r}).eval()
        made = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules={targets!r})
        made = get_peft_model(fresh, made).eval()
        made.save_pretrained({peft_made!r})
        np.save({peft_made + "/logits.npy"!r}, logits(made))
        assert "tensorflow" not in sys.modules
    """)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["gpt2", "opt", "mistral", "llama", "gemma", "phi3"])
def test_peft_reads_tfclm_adapters_and_tfclm_reads_peft_adapters(model_type, tokenizer, tmp_path):
    pytest.importorskip("peft")
    from tfclm.config import LoraConfig, ModelConfig
    from tfclm.generation.export import to_pytorch
    from tfclm.model import lora
    from tfclm.model.loading import load_model, load_trained

    base = str(tmp_path / "base")
    scratch(model_type, tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    base_pt = to_pytorch(base, str(tmp_path / "base-pt"))

    model = load_model(ModelConfig(name_or_path=base), tokenizer, 32)
    adapters = lora.add_adapters(
        model, LoraConfig(rank=4, alpha=8, modules_to_save=[SAVED_NORM[model_type]]), lora.base_name(base_pt)
    )
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:  # as if trained: every adapter and saved weight moved
        variable.assign(variable.numpy() + rng.normal(0, 0.2, variable.shape).astype(np.float32))
    adapter_dir = str(tmp_path / "adapter")
    os.makedirs(adapter_dir)
    adapters.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    rows = [tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = np.concatenate([model(input_ids=np.array([r])).logits.numpy()[0].reshape(-1) for r in rows])
    np.save(tmp_path / "expected.npy", expected)
    merged = to_pytorch(adapter_dir, str(tmp_path / "merged-pt"), merge_lora=True)
    config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert config["base_model_name_or_path"] == base_pt and config["r"] == 4 and config["peft_type"] == "LORA"

    peft_made = str(tmp_path / "peft-made")
    targets = list(FAMILIES[model_type].lora_targets) if model_type == "phi3" else None  # PEFT has no Phi-3 default
    script = peft_script(base_pt, adapter_dir, merged, peft_made, str(tmp_path / "expected.npy"), rows, targets)
    env = {**os.environ, "USE_TF": "0", "USE_TORCH": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    diffs = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("peft", "merged")))
    assert float(diffs["peft"]) < 1e-4 and float(diffs["merged"]) < 1e-4, diffs

    # The other way: an adapter PEFT made (random B) on the PyTorch base, read by tfclm onto the TF base.
    tf_model, _ = load_trained(peft_made)
    got = np.concatenate([tf_model(input_ids=np.array([r])).logits.numpy()[0].reshape(-1) for r in rows])
    peft_logits = np.load(os.path.join(peft_made, "logits.npy"))
    assert np.abs(got - peft_logits).max() < 1e-4
    base_logits = np.concatenate(
        [load_trained(base)[0](input_ids=np.array([r])).logits.numpy()[0].reshape(-1) for r in rows]
    )
    assert np.abs(base_logits - peft_logits).max() > 1e-3  # the adapter changed something


COMMON = [*TINY, *sets("data.block_size=32", "generate.max_new_tokens=4", "logging.report_to=[none]")]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """The default run, shrunk and trained a little: the pretrained base of the LoRA runs."""
    out = str(tmp_path_factory.mktemp("base") / "base")
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *COMMON, "--max-steps", "6", "--output-dir", out])
    assert result.exit_code == 0, result.output
    return out


def lora_sets(base, *more):
    return sets("model.config=null", f"model.name_or_path={base}", "lora.rank=4", "lora.alpha=8", *more)


def greedy(model_dir):
    result = run_cli(["generate", "--model", model_dir, "--prompt", PROMPTS[0], "--greedy", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_lora_run_end_to_end(base_run, tmp_path):
    from tfclm.hub.modelcard import model_card

    base_files = tree(base_run)
    out = str(tmp_path / "lora")
    fit = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run, "train.learning_rate=1e-2")]
        + ["--max-steps", "6", "--output-dir", out]
    )
    assert fit.exit_code == 0, fit.output
    assert tree(base_run) == base_files  # the base is read, never written
    names = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not names & {"tf_model.h5", "config.json"}  # adapters only: the base stays where it is
    readme = open(os.path.join(out, "README.md")).read()  # how to load the dir, with and without tfclm
    assert f"# LoRA adapters for {base_run}" in readme and "`import tfclm` first" in readme and "--merge-lora" in readme
    results = json.load(open(os.path.join(out, "results.json")))
    assert 0 < results["trainable_parameters"] < 0.1 * results["parameters"] and results["adapter_sha256"]
    assert results["eval_loss"] < results["eval_loss_before"]
    # tfclm serve decodes an adapter dir (base plus adapters) as tfclm generate does.
    from tfclm.generation.generator import Generator
    from tfclm.model.loading import load_trained
    from tfclm.serve.engine import Decoder

    model, tokenizer = load_trained(out)
    alone = [
        s.completion for s in Generator(model, tokenizer)(["The list", "Return"], do_sample=False, max_new_tokens=6)
    ]
    assert decoded_greedy(Decoder(model, tokenizer), ["The list", "Return"], 6) == alone
    # The checkpoints hold the adapters and their optimizer state, not the frozen base.
    ckpt = os.path.join(out, "checkpoints")
    size = sum(os.path.getsize(os.path.join(ckpt, n)) for n in os.listdir(ckpt) if n.startswith("ckpt-6.data"))
    assert size < 4 * 4 * results["trainable_parameters"] + 100_000

    evaluated = run_cli(["evaluate", "--model", out, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output[evaluated.output.index('{"loss"') :])
    assert figures["loss"] == pytest.approx(results["eval_loss"], rel=1e-5)

    out_files = tree(out)
    bare = run_cli(["export", "--model", out, "--to", "tf", "--output", str(tmp_path / "x")])
    assert bare.exit_code == 2 and "--merge-lora" in bare.output and not os.path.exists(tmp_path / "x")
    assert tree(out) == out_files
    merged = str(tmp_path / "merged")
    exported = run_cli(["export", "--model", out, "--merge-lora", "--to", "tf", "--output", merged])
    assert exported.exit_code == 0, exported.output
    assert greedy(merged) == greedy(out) != greedy(base_run)
    # transformers' TF classes read an adapter dir as its base alone (the run warns); the merged dir is the model,
    # and the seed recipe's inference code runs on it word for word.
    assert f"lora: {out} holds adapters; " in fit.output  # the output dir, not the save's staging folder
    assert "pipeline() read such a dir as its base model alone unless tfclm is imported first" in fit.output
    client = SEED_CLIENT.format(model=merged, framework="") + 'print("DECODED", decoded[0])'
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "DECODED Somatic hypermutation" in done.stdout, done.stderr[-3000:]

    card = model_card("me/lora", json.loads(json.dumps(yaml_config(out))), results)
    assert "library_name: peft" in card and 'PeftModel.from_pretrained(base, "me/lora")' in card
    assert f'AutoModelForCausalLM.from_pretrained("{base_run}")' in card

    # tfclm.generate keeps a directory loaded until its files change: for a LoRA run, its adapter files.
    from safetensors.numpy import load_file, save_file

    import tfclm

    options = dict(do_sample=False, max_new_tokens=6)
    assert tfclm.generate(out, PROMPTS[0], **options) != tfclm.generate(base_run, PROMPTS[0], **options)
    path = os.path.join(out, "adapter_model.safetensors")
    state = {k: (np.zeros_like(v) if ".lora_B." in k else v) for k, v in load_file(path).items()}
    save_file(state, path, metadata={"format": "pt"})  # B = 0: the base model's own outputs
    assert tfclm.generate(out, PROMPTS[0], **options) == tfclm.generate(base_run, PROMPTS[0], **options)


def yaml_config(out):
    import yaml

    return yaml.safe_load(open(os.path.join(out, "tfclm.yaml")))


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_uninterrupted_adapter(base_run, tmp_path):
    from helpers import ROOT, fit_command, kill_after_checkpoint

    def command(out):
        return fit_command(
            *COMMON,
            *lora_sets(base_run, "train.learning_rate=1e-2", "train.checkpoint_steps=3", "train.epochs=2"),
            *sets("evaluate.before_training=false", "data.max_documents=10"),
            "--batch-size",
            "2",
            "--output-dir",
            out,
        )

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = str(tmp_path / "reference")
    done = subprocess.run(command(reference), capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = json.load(open(os.path.join(reference, "results.json")))
    assert expected["train_steps"] > 6

    out = str(tmp_path / "killed")
    process = subprocess.Popen(
        command(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    kill_after_checkpoint(process, out, 6)
    assert not os.path.exists(os.path.join(out, "results.json"))
    resumed = subprocess.run(command(out), capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from the checkpoint at optimizer step" in resumed.stdout
    results = json.load(open(os.path.join(out, "results.json")))
    assert 6 <= results["resumed_from_step"] < expected["train_steps"]
    assert results["adapter_sha256"] == expected["adapter_sha256"]
    assert results["eval_loss"] == expected["eval_loss"]
    saved = [open(os.path.join(d, "adapter_model.safetensors"), "rb").read() for d in (out, reference)]
    assert saved[0] == saved[1]


def error_line(result):
    from helpers import error_line as one_line

    return one_line(result)


@pytest.mark.parametrize(
    "settings, expected",
    [
        (["lora.rank=-1"], "lora.rank: must be 0 (off) or a rank such as 8, got -1"),
        (["lora.alpha=4"], "lora.alpha: is set but lora.rank is 0, which turns LoRA off"),
        (["lora.rank=4"], "lora.rank: LoRA adapts a pretrained model, and model.config builds a random one"),
        (["lora.rank=4", "lora.dropout=1.5"], "lora.dropout: must be in [0, 1), got 1.5"),
        (["lora.rank=4", "lora.target_modules=[]"], "lora.target_modules: is empty"),
    ],
)
def test_bad_lora_settings_are_one_line_before_any_write(settings, expected, tmp_path):
    out = tmp_path / "out"
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *sets(*settings), "--output-dir", str(out)]))
    assert expected in line and not out.exists()


@pytest.mark.slow
def test_bad_lora_targets_and_bases_are_one_line_and_nothing_is_written(base_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    before = tree(out)

    def fit(*more):
        args = ["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run, *more), "--output-dir", str(out)]
        return error_line(run_cli([*args, "--overwrite"]))

    line = fit("lora.target_modules=[q_proj]")
    assert "'q_proj' matches no dense layer of this gpt2 model; its dense layers are: attn.c_attn, attn.c_proj" in line
    assert "lora.modules_to_save: 'nothing' matches no layer" in fit("lora.modules_to_save=[nothing]")
    assert "lora.base_precision: bf16 needs train.precision bf16" in fit("lora.base_precision=bf16")
    assert tree(out) == before

    # An adapter dir whose base went away, or names a base of another architecture.
    adapter = tmp_path / "adapter"
    assert run_cli(["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run), "--max-steps", "1"]
                   + ["--output-dir", str(adapter)]).exit_code == 0  # fmt: skip
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for base, message in [
        (str(tmp_path / "moved"), "does not exist; put it back, or point base_model_name_or_path"),
        (make_opt_base(tmp_path), "does not fit its base"),
    ]:
        config_path.write_text(json.dumps({**config, "base_model_name_or_path": base}))
        snapshot = tree(adapter)
        for command in (["generate", "--prompt", "hi"], ["evaluate"]):
            line = error_line(run_cli([*command, "--model", str(adapter)]))
            assert message in line, line
        assert tree(adapter) == snapshot
    merged = tmp_path / "merged"
    line = error_line(run_cli(["export", "--model", base_run, "--merge-lora", "--to", "tf", "--output", str(merged)]))
    assert "--merge-lora: " in line and "holds no LoRA adapter" in line and not merged.exists()
    gone = str(tmp_path / "gone")
    line = error_line(run_cli(["export", "--model", gone, "--merge-lora", "--to", "tf", "--output", str(merged)]))
    assert "--model: model directory" in line and "does not exist" in line and not merged.exists()


def make_opt_base(tmp_path) -> str:
    from transformers import AutoConfig, TFAutoModelForCausalLM

    path = str(tmp_path / "opt-base")
    config = AutoConfig.for_model("opt", vocab_size=600, **TINY_CONFIGS["opt"])
    model = TFAutoModelForCausalLM.from_config(config)
    model.build_in_name_scope()
    model.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        ["train.precision=bf16"],
        ["train.precision=bf16", "lora.base_precision=bf16"],
        ["train.jit_compile=true"],
        ["train.gradient_accumulation_steps=2", "train.loss_chunk_tokens=16", "lora.dropout=0.1"],
    ],
    ids=["bf16", "bf16-base", "xla", "accumulation-chunked-dropout"],
)
def test_lora_trains_with_mixed_precision_xla_and_accumulation(base_run, tmp_path, settings):
    base_files = tree(base_run)
    out = str(tmp_path / "lora")
    fit = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run, "train.learning_rate=1e-2", *settings)]
        + ["--max-steps", "4", "--output-dir", out]
    )
    assert fit.exit_code == 0, fit.output
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["eval_loss"] < results["eval_loss_before"] and tree(base_run) == base_files
    assert greedy(out) != greedy(base_run)


@pytest.mark.slow
def test_lora_on_two_mirrored_replicas_matches_one(base_run, tmp_path):
    settings = [*COMMON[1::2], *lora_sets(base_run, "train.learning_rate=1e-2")[1::2]]  # the values of --set pairs
    script = textwrap.dedent(f"""
        import json, tfclm, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfclm.config import load_config
        from tfclm.run.fit import fit
        common = {settings!r} + ["logging.every_n_steps=1", "train.max_steps=4"]
        def run(strategy, batch_size):
            settings = [f"train.strategy={{strategy}}", f"train.batch_size={{batch_size}}"]
            settings.append(f"output_dir={tmp_path}/{{strategy}}")
            return fit(load_config({DEFAULT_CONFIG!r}, common + settings), verbose=0)
        runs = {{"default": run("default", 8), "mirrored": run("mirrored", 4)}}
        print(json.dumps({{name: (r["step_history"]["loss"], r["eval_loss"]) for name, r in runs.items()}}))
    """)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(runs["mirrored"][0]) == 4
    assert runs["mirrored"][0] == pytest.approx(runs["default"][0], rel=1e-4)
    assert runs["mirrored"][1] == pytest.approx(runs["default"][1], rel=1e-4)


@pytest.mark.slow
def test_a_lora_run_pushes_its_adapters_only(base_run, tmp_path):
    import urllib.request

    from huggingface_hub import ModelCard

    from helpers import HubServer, client_env, run

    hub = HubServer()
    try:
        env = client_env(hub.url, tmp_path / "hf-home")
        out = str(tmp_path / "lora")
        fit = [*COMMON, *lora_sets(base_run, "hub.push=true", "hub.model_id=tester/lora"), "--max-steps", "2"]
        done = run(["-m", "tfclm", "fit", "--config", DEFAULT_CONFIG, *fit, "--output-dir", out], env)
        assert done.returncode == 0, done.stdout + done.stderr
        pushed = run(["-m", "tfclm", "push", "--model", out, "--repo-id", "tester/again"], env)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        for repo in ("tester/lora", "tester/again"):
            files = hub.state()[repo][-1]["files"]
            assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= set(files)
            assert not {"tf_model.h5", "config.json"} & set(files) and not any(
                p.startswith("checkpoints/") for p in files
            )
            card = urllib.request.urlopen(f"{hub.url}/{repo}/resolve/main/README.md", timeout=10).read().decode()
            metadata = ModelCard(card).data.to_dict()
            assert metadata["library_name"] == "peft" and "lora" in metadata["tags"]
            assert f"LoRA adapters (rank 4, alpha 8.0) for `{base_run}`" in card
            assert f'PeftModel.from_pretrained(base, "{repo}")' in card
    finally:
        hub.stop()


@pytest.mark.slow
def test_a_full_run_over_a_lora_run_leaves_no_adapter_behind(base_run, tmp_path):
    """--overwrite with full fine-tuning: the old adapters must go, or the dir would load as base + old adapters."""
    out = str(tmp_path / "run")
    lora = run_cli(["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run), "--max-steps", "1"]
                   + ["--output-dir", out])  # fmt: skip
    assert lora.exit_code == 0, lora.output
    full = sets("model.config=null", f"model.name_or_path={base_run}")
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *COMMON, *full, "--max-steps", "1", "--output-dir", out]
                     + ["--overwrite"])  # fmt: skip
    assert result.exit_code == 0, result.output
    names = set(os.listdir(out))
    assert "tf_model.h5" in names and not names & {"adapter_config.json", "adapter_model.safetensors"}, names
    assert "README.md" not in names  # the adapters' README went with them
    from tfclm.model.loading import load_trained
    from tfclm.model.lora import adapters_of

    model, _ = load_trained(out)
    assert adapters_of(model) == {}
    open(os.path.join(out, "README.md"), "w").write("my notes\n")
    again = run_cli(["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run), "--max-steps", "1"]
                    + ["--output-dir", out, "--overwrite"])  # fmt: skip
    assert again.exit_code == 0 and open(os.path.join(out, "README.md")).read() == "my notes\n"  # a user's stays


@pytest.fixture(scope="module")
def adapter_run(base_run, tmp_path_factory):
    """A LoRA run of one step on `base_run`."""
    out = str(tmp_path_factory.mktemp("adapter") / "adapter")
    args = ["fit", "--config", DEFAULT_CONFIG, *COMMON, *lora_sets(base_run), "--max-steps", "1", "--output-dir", out]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    return out


def copy_of(adapter_run, tmp_path, **config) -> str:
    """A copy of the adapter dir (no checkpoints), its adapter_config.json's fields replaced by `config`."""
    import shutil

    adapter = str(tmp_path / "adapter")
    shutil.copytree(adapter_run, adapter, ignore=shutil.ignore_patterns("checkpoints", "cache", "logs"))
    path = os.path.join(adapter, "adapter_config.json")
    saved = json.load(open(path))
    with open(path, "w") as handle:
        json.dump(config.pop("whole") if "whole" in config else {**saved, **config}, handle)
    return adapter


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, said",
    [
        (dict(r=0), "ValueError: r is 0, and an adapter's rank is at least 1"),
        (dict(r=-4), "ValueError: r is -4, and an adapter's rank is at least 1"),
        (dict(r="8"), "TypeError: r is '8', not a number"),
        (dict(r=True), "TypeError: r is True, not a number"),
        (dict(lora_alpha=float("inf")), "lora.alpha: must be positive (such as 16), got inf"),
        (dict(lora_alpha=None), "TypeError: lora_alpha is None, not a number"),
        (dict(lora_dropout=1.0), "lora.dropout: must be in [0, 1), got 1.0"),
        (dict(target_modules="c_attn"), "target_modules is not a list of layer names"),
        (dict(target_modules=[3]), "lora.target_modules: must be a list of layer names"),
        (dict(modules_to_save="ln_f"), "lora.modules_to_save: must be a list of layer names"),
        (dict(fan_in_fan_out="yes"), "TypeError: fan_in_fan_out is 'yes', not true or false"),
        (dict(use_dora=True), "use_dora is true, and tfclm's adapters have no DoRA"),
        (dict(whole=[1, 2]), "ValueError: it holds a JSON list, not an object of PEFT's fields"),
    ],
)
def test_a_bad_adapter_config_is_one_line_in_every_command(adapter_run, tmp_path, config, said):
    adapter = copy_of(adapter_run, tmp_path, **config)
    before = tree(tmp_path)
    for command in (
        ["generate", "--prompt", "hi"],
        ["evaluate"],
        ["export", "--merge-lora", "--to", "tf", "--output", str(tmp_path / "merged")],
        ["push", "--repo-id", "me/adapter"],  # refused before any request
    ):
        line = error_line(run_cli([*command, "--model", adapter]))
        assert line.startswith(f"Error: --model: {os.path.join(adapter, 'adapter_config.json')!r} "), line
        assert said in line, line
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_no_command_writes_over_a_dir_it_reads(base_run, adapter_run, tmp_path):
    """An export or fit whose output is, lies in or holds a folder it reads (the adapter's base, the model, the
    data), --force and --overwrite or not: one line, and every file as it was."""
    import shutil

    base = str(tmp_path / "base")
    shutil.copytree(base_run, base)
    adapter = copy_of(adapter_run, tmp_path, base_model_name_or_path=base)
    before = tree(tmp_path)
    for output in (base, os.path.join(base, "merged"), str(tmp_path)):
        for target in ("tf", "pytorch", "saved_model"):
            command = ["export", "--model", adapter, "--merge-lora", "--to", target, "--output", output, "--force"]
            line = error_line(run_cli(command))
            assert line.startswith(f"Error: --output: {output!r} is, lies in or holds "), line
            assert (f"the adapter's base model {base!r}" if output != str(tmp_path) else "the model dir") in line
    for named, more in (("model.name_or_path", lora_sets(base)), ("data.dataset", sets(f"data.dataset={base}/x.txt"))):
        fit = ["fit", "--config", DEFAULT_CONFIG, *COMMON, *more, "--output-dir", base, "--overwrite"]
        line = error_line(run_cli(fit))
        assert line.startswith(f"Error: output_dir: {base!r} is, lies in or holds {named} "), line
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_transformers_tf_auto_class_reads_an_adapter_dir_after_import_tfclm(base_run, adapter_run, tmp_path):
    """`TFAutoModelForCausalLM.from_pretrained(ADAPTER_DIR)`: the base with the adapters (tfclm's logits exactly),
    not the base alone; and the seed recipe's client code after `import tfclm`, in a process of its own."""
    from transformers import TFAutoModelForCausalLM

    from tfclm.model.loading import load_trained

    ids = np.array([[5, 9, 30, 7, 2, 11]], np.int32)
    adapted = TFAutoModelForCausalLM.from_pretrained(adapter_run)
    expected = load_trained(adapter_run)[0](input_ids=ids).logits.numpy()
    np.testing.assert_array_equal(adapted(input_ids=ids).logits.numpy(), expected)
    base = TFAutoModelForCausalLM.from_pretrained(base_run)(input_ids=ids).logits.numpy()
    assert np.abs(base - expected).max() > 1e-4  # the adapters change the logits: they were not dropped
    client = "import tfclm\n" + SEED_CLIENT.format(model=adapter_run, framework="") + 'print("DECODED", decoded[0])'
    done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "DECODED Somatic hypermutation" in done.stdout, done.stderr[-3000:]
