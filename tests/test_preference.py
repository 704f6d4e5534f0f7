"""Preference tuning (DPO, ipo, hinge): tfclm's figures against TRL's DPOTrainer on the same PyTorch checkpoints,
its gradient against an independent tape, the LoRA reference, the precomputed reference, and every bad pair or
setting as one line with nothing written."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfclm.model.families import FAMILIES, TRAINED

from helpers import ROOT, error_line, event_tags, one_batch, run_cli, scratch, tree

WORDS = "list tuple dict set string number file loop class module function value".split()
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Tiny random PyTorch checkpoints (policy and reference of two families) sharing one tokenizer, as the Hub holds them.
MAKE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from tfclm.data.tokenizer import train_bpe

    folder, words, template = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    tokenizer = train_bpe([f"What is a {w}? A {w} holds {v}s." for w in words for v in words], 400)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    sizes = {
        "gpt2": dict(n_layer=2, n_embd=32, n_head=2, n_positions=128),
        "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False),
    }
    for family, size in sizes.items():
        for name, seed in (("policy", 0), ("reference", 1)):
            torch.manual_seed(seed)
            config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                                          eos_token_id=tokenizer.eos_token_id, **size)
            AutoModelForCausalLM.from_config(config).save_pretrained(os.path.join(folder, f"{family}-{name}"))
            tokenizer.save_pretrained(os.path.join(folder, f"{family}-{name}"))
    """
)

# TRL's own computation: DPOTrainer's eval batch of every pair, its loss and metrics, in float32 (TRL's configs
# default to bf16 autocast, which would round the reference's log-probabilities).
TRL = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    folder, cases = sys.argv[1], json.loads(sys.argv[2])
    out = {}
    for name, case in cases.items():
        policy_dir, reference_dir = (os.path.join(folder, f"{case['family']}-{n}") for n in ("policy", "reference"))
        rows = [json.loads(line) for line in open(os.path.join(folder, case["pairs"]))]
        args = DPOConfig(
            output_dir=os.path.join(folder, "trl"), report_to=[], use_cpu=True, bf16=False, beta=case["beta"],
            loss_type=case["loss_type"], label_smoothing=case["label_smoothing"], max_length=case["block_size"],
            max_prompt_length=case["max_prompt_length"], max_completion_length=case["max_completion_length"],
            per_device_eval_batch_size=len(rows),
        )
        trainer = DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(policy_dir), args=args,
            ref_model=AutoModelForCausalLM.from_pretrained(reference_dir), train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(policy_dir),
        )
        with torch.no_grad():
            loss, metrics = trainer.get_batch_loss_metrics(trainer.model, next(iter(trainer.get_eval_dataloader())))
        out[name] = {"loss": float(loss), **metrics}
    print("RESULT " + json.dumps(out))
    """
)

BASE = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, block_size=64, max_prompt_length=512,
            max_completion_length=None)  # fmt: skip
CASES = {
    "gpt2-standard-sigmoid": dict(BASE, family="gpt2", pairs="standard.jsonl"),
    "gpt2-standard-smoothed": dict(BASE, family="gpt2", pairs="standard.jsonl", label_smoothing=0.2, beta=0.5),
    "gpt2-standard-ipo": dict(BASE, family="gpt2", pairs="standard.jsonl", loss_type="ipo"),
    "gpt2-standard-hinge": dict(BASE, family="gpt2", pairs="standard.jsonl", loss_type="hinge", beta=2.0),
    "gpt2-cut": dict(BASE, family="gpt2", pairs="standard.jsonl", block_size=9, max_prompt_length=4,
                     max_completion_length=6),
    "llama-chat-sigmoid": dict(BASE, family="llama", pairs="conversational.jsonl"),
    "llama-chat-smoothed": dict(BASE, family="llama", pairs="conversational.jsonl", label_smoothing=0.1),
    "llama-chat-ipo": dict(BASE, family="llama", pairs="conversational.jsonl", loss_type="ipo", beta=0.3),
    "llama-chat-hinge": dict(BASE, family="llama", pairs="conversational.jsonl", loss_type="hinge"),
    "llama-implicit-prompt": dict(BASE, family="llama", pairs="implicit.jsonl"),
}  # fmt: skip


def pair_records(shape: str) -> list[dict]:
    records = []
    for i, w in enumerate(WORDS):
        v, u = WORDS[(i + 3) % len(WORDS)], WORDS[(i + 5) % len(WORDS)]
        if shape == "standard":
            records.append({"prompt": f"What is a {w}?", "chosen": f" A {w} holds {v}s.", "rejected": f" A {u} {u}."})
            continue
        user = [{"role": "user", "content": f"What is a {w}?"}]
        chosen, rejected = (
            [{"role": "assistant", "content": f"A {w} holds {v}s."}],
            [{"role": "assistant", "content": f"It is {u}."}],
        )
        if shape == "conversational":
            records.append({"prompt": user, "chosen": chosen, "rejected": rejected})
        else:  # implicit: the prompt is the turns both answers start with
            records.append({"chosen": user + chosen, "rejected": user + rejected})
    return records


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The folder of the checkpoints (gpt2-policy, gpt2-reference, llama-...) and the pairs files."""
    folder = tmp_path_factory.mktemp("preference")
    for shape in ("standard", "conversational", "implicit"):
        write_jsonl(folder / f"{shape}.jsonl", pair_records(shape))
    made = subprocess.run([sys.executable, "-c", MAKE, str(folder), json.dumps(WORDS), CHATML], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def trl_figures(checkpoints):
    """TRL's figures for every case, from one PyTorch process."""
    pytest.importorskip("trl")
    folder = checkpoints
    done = subprocess.run([sys.executable, "-c", TRL, str(folder), json.dumps(CASES)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_the_figures_equal_trls_dpo_trainer_on_the_same_checkpoints(checkpoints, trl_figures, name):
    from tfclm.config import PreferenceConfig
    from tfclm.evaluation.preference import evaluate_pairs_file

    folder = checkpoints
    case, expected = CASES[name], trl_figures[name]
    settings = PreferenceConfig(
        beta=case["beta"], loss_type=case["loss_type"], label_smoothing=case["label_smoothing"],
        max_prompt_length=case["max_prompt_length"], max_completion_length=case["max_completion_length"],
    )  # fmt: skip
    found = evaluate_pairs_file(
        str(folder / f"{case['family']}-policy"), str(folder / f"{case['family']}-reference"),
        str(folder / case["pairs"]), settings, batch_size=5, block_size=case["block_size"],
    )  # fmt: skip
    assert found["pairs"] == len(WORDS)
    assert found["dpo_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert found["chosen_logps"] == pytest.approx(expected["logps/chosen"], rel=1e-5)
    assert found["rejected_logps"] == pytest.approx(expected["logps/rejected"], rel=1e-5)
    assert round(found["reward_accuracy"] * len(WORDS)) == round(expected["rewards/accuracies"] * len(WORDS))
    # A reward is beta times a difference of two log-probabilities near -35: float32 leaves it ~1e-6 * beta * 35.
    scale = 1e-6 * case["beta"] * 50
    for ours, theirs in (("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected"),
                         ("reward_margin", "rewards/margins")):  # fmt: skip
        assert found[ours] == pytest.approx(expected[theirs], rel=1e-5, abs=scale), ours


def _pairs_batch(tokenizer, block_size=48, shape="standard"):
    from tfclm.config import DataConfig, PreferenceConfig
    from tfclm.data import examples, preference

    data = DataConfig(format="preference")
    found = [e for _, _, e in examples.preference_pairs(pair_records(shape)[:6], data)]
    blocks = preference.encode(found, tokenizer, block_size, PreferenceConfig())
    keys = ("input_ids", "attention_mask", "labels")
    batch = {k: getattr(blocks, k) for k in keys}
    batch.update({"rejected_" + k: getattr(blocks.rejected, k) for k in keys})
    return batch


@pytest.fixture(scope="module")
def bpe():
    from tfclm.data.tokenizer import train_bpe

    return train_bpe([f"What is a {w}? A {w} holds {v}s." for w in WORDS for v in WORDS], 300)


@pytest.mark.parametrize("loss_type,chunk", [("sigmoid", 7), ("ipo", 0), ("hinge", 7)])
def test_one_step_moves_the_weights_by_the_gradient_of_the_loss(bpe, loss_type, chunk):
    """SGD through the trainer (the chunked head's own backward pass, rpo's term) against an independent tape
    on the model's full logits."""
    from tfclm.backend import keras, tf
    from tfclm.config import PreferenceConfig
    from tfclm.model.loss import token_loss_sums
    from tfclm.model.preference_loss import Scorer, preference_losses
    from tfclm.model.sequence_logps import logps_from_logits
    from tfclm.training.preference import PreferenceTrainer

    settings = PreferenceConfig(beta=0.5, loss_type=loss_type, rpo_alpha=0.3)
    policy, reference = scratch("gpt2", bpe), scratch("gpt2", bpe)
    rng = np.random.default_rng(1)
    for v in reference.weights:
        v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
    batch = {k: tf.constant(v) for k, v in _pairs_batch(bpe).items()}

    def by_hand():
        rows = {k: tf.concat([batch[k], batch["rejected_" + k]], 0) for k in ("input_ids", "attention_mask", "labels")}
        logits = policy(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        sums, counts = logps_from_logits(rows["labels"], logits)
        ref = logps_from_logits(
            rows["labels"], reference(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        )[0]
        if loss_type == "ipo":
            sums, ref = sums / counts, ref / counts
        losses, _, _ = preference_losses(sums[:6], sums[6:], ref[:6], ref[6:], settings)
        total, count = token_loss_sums(batch["labels"], logits[:6])
        return tf.reduce_mean(losses) + settings.rpo_alpha * total / count

    with tf.GradientTape() as tape:
        loss = by_hand()
    grads = tape.gradient(loss, policy.trainable_variables)
    expected = [w.numpy() - 0.1 * tf.convert_to_tensor(g).numpy() for w, g in zip(policy.trainable_variables, grads)]
    trainer = PreferenceTrainer(policy, settings, Scorer(reference), loss_chunk_tokens=chunk, fused_ops=False)
    trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.1))
    logs = trainer.fit(one_batch(batch), verbose=0).history
    assert logs["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    for w, e in zip(policy.trainable_variables, expected):
        np.testing.assert_allclose(w.numpy(), e, rtol=1e-4, atol=1e-6, err_msg=w.name)


def test_lora_scores_the_reference_on_its_own_base_with_one_copy_of_it(bpe):
    """Adapters off is the frozen base: the same loss as an explicit frozen copy, and no second base in memory."""
    from tfclm.backend import tf
    from tfclm.config import LoraConfig, PreferenceConfig
    from tfclm.model import lora
    from tfclm.model.preference_loss import Scorer, objective_of, pair_figures, reference_scorer

    settings = PreferenceConfig(beta=0.2)
    policy, copy = scratch("llama", bpe), scratch("llama", bpe)
    base_weights = len(policy.weights)
    lora.add_adapters(policy, LoraConfig(rank=4))
    rng = np.random.default_rng(2)
    for v in policy.trainable_variables:  # as if trained: the adapters moved away from zero
        v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype(np.float32))
    batch = {k: tf.constant(v) for k, v in _pairs_batch(bpe).items()}

    off = pair_figures(Scorer(policy), reference_scorer(policy, None), batch, settings)
    frozen = pair_figures(Scorer(policy), reference_scorer(policy, copy), batch, settings)
    assert float(objective_of(off, settings)) == pytest.approx(float(objective_of(frozen, settings)), rel=1e-6)
    np.testing.assert_allclose(off["chosen_rewards"], frozen["chosen_rewards"], rtol=1e-5, atol=1e-7)
    assert float(tf.reduce_max(tf.abs(off["chosen_rewards"]))) > 1e-3  # the adapters moved the policy
    # One base: the adapters' weights beside it, nothing else.
    assert len(policy.weights) == base_weights + 2 * len(lora.adapters_of(policy))


def _run_config(folder, out, **changes) -> str:
    """A preference run's config file on the standard pairs of `folder`, with `changes` ({"section.key": v})."""
    import yaml

    config = {
        "output_dir": str(out),
        "data": {"dataset": str(folder / "standard.jsonl"), "format": "preference", "block_size": 48,
                 "validation_split": 0.25},
        "model": {"name_or_path": str(folder / "gpt2-policy")},
        "train": {"batch_size": 3, "epochs": 1, "max_steps": 2, "learning_rate": 1e-3, "checkpoint_steps": 1},
        "preference": {"beta": 0.2},
        "generate": {"max_new_tokens": 3, "prompts": ["What"]},
        "logging": {"report_to": ["none"], "curves": False, "sample_every_n_epochs": None},
    }  # fmt: skip
    for key, value in changes.items():
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_a_run_with_its_reference_precomputed_ends_where_one_scoring_it_live_ends(checkpoints, tmp_path):
    """The cached scores are the live ones: the same weights, bit for bit; the run reports TRL's metrics."""
    folder = checkpoints
    results = {}
    for precompute in (False, True):
        out = tmp_path / f"precompute-{precompute}"
        done = run_cli(["fit", "--config", _run_config(folder, out, **{"preference.precompute_reference": precompute})])
        assert done.exit_code == 0, done.output
        results[precompute] = json.load(open(out / "results.json"))
    live, cached = results[False], results[True]
    assert live["weights_sha256"] == cached["weights_sha256"]
    assert live["preference"] == cached["preference"] and live["preference_before"]["pairs"] == 3
    assert live["preference"]["dpo_loss"] < live["preference_before"]["dpo_loss"]
    assert {"rewards/chosen", "rewards/accuracies", "val_rewards/margins"} <= set(live["history"])
    assert any(name.startswith("reference-") for name in os.listdir(tmp_path / "precompute-True" / "cache"))
    # The aligned model is an output dir like any other: it exports.
    exported = run_cli(["export", "--model", str(tmp_path / "precompute-True"), "--to", "pytorch", "--output",
                        str(tmp_path / "pt")])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert os.path.exists(tmp_path / "pt" / "model.safetensors")


@pytest.mark.slow
def test_lora_preference_run_saves_peft_adapters_and_scores_against_the_base(checkpoints, tmp_path):
    folder = checkpoints
    out = tmp_path / "lora"
    changes = {"lora.rank": 4, "train.loss_chunk_tokens": 16, "logging.report_to": ["tensorboard"]}
    done = run_cli(["fit", "--config", _run_config(folder, out, **changes)])
    assert done.exit_code == 0, done.output
    assert os.path.exists(out / "adapter_model.safetensors")
    # TRL's metric names in TensorBoard, for the training steps and the validation pairs
    assert {"epoch_rewards/accuracies", "epoch_rewards/margins", "epoch_logps/chosen"} <= event_tags(str(out / "logs"))
    # The adapter dir against its own base, from the command line: the run's own figures after training.
    scored = run_cli(["evaluate", "--model", str(out), "--preference-file", str(folder / "standard.jsonl"),
                      "--beta", "0.2", "--json"])  # fmt: skip
    assert scored.exit_code == 0, scored.output
    figures = json.loads(scored.output.strip().splitlines()[-1])
    assert figures["pairs"] == len(WORDS) and figures["chosen_reward"] != 0.0


BAD_RECORDS = [
    ({"prompt": "What?", "rejected": " no"}, "data.chosen_column: record 0 has no field 'chosen'"),
    ({"prompt": "What?", "chosen": "  ", "rejected": " no"}, "data.chosen_column: record 0: 'chosen' is empty"),
    ({"prompt": "What?", "chosen": " same", "rejected": " same"}, "record 0: the chosen and rejected answers are"),
    ({"prompt": "What? " * 40, "chosen": " a", "rejected": " b"}, "data.block_size: record 0: its prompt is"),
    ({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "bot", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "data.chosen_column: record 0, turn 0: unknown role 'bot'"),
    ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "data.prompt_column: record 0: the prompt and the answers"),
    ({"prompt": "Hi", "chosen": 3, "rejected": " b"}, "data.chosen_column: record 0: 'chosen' holds int"),
]  # fmt: skip
BAD_SETTINGS = [
    ({"preference.beta": -1}, "preference.beta"),
    ({"preference.loss_type": "kto"}, "preference.loss_type"),
    ({"preference.label_smoothing": 0.1, "preference.loss_type": "hinge"}, "preference.label_smoothing: applies to"),
    ({"preference.reference": "/nowhere/model"}, "preference.reference: model directory '/nowhere/model' does not"),
    ({"lora.rank": 4, "lora.dropout": 0.1}, "lora.dropout: preference tuning scores both answers without dropout"),
    ({"data.format": "text", "preference.beta": 0.5}, "preference.beta: is set but data.format is text"),
]


@pytest.mark.parametrize("index", range(len(BAD_RECORDS) + len(BAD_SETTINGS) + 1))
def test_every_bad_pair_and_setting_is_one_line_and_writes_nothing(checkpoints, tmp_path, index):
    folder = checkpoints
    out = tmp_path / "run"
    pairs = pair_records("standard")
    changes, expected = {}, None
    if index < len(BAD_RECORDS):
        record, expected = BAD_RECORDS[index]
        pairs = [record, *pairs]
    elif index < len(BAD_RECORDS) + len(BAD_SETTINGS):
        changes, expected = BAD_SETTINGS[index - len(BAD_RECORDS)]
    else:  # a reference with another tokenizer
        other = tmp_path / "other"
        subprocess.run([sys.executable, "-c", MAKE, str(other), json.dumps(WORDS[:6]), CHATML], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        changes = {"preference.reference": str(other / "gpt2-reference")}
        expected = "preference.reference: '" + str(other / "gpt2-reference") + "' has another tokenizer"
    changes["data.dataset"] = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    config = _run_config(folder, out, **changes)
    before = tree(tmp_path)
    line = error_line(run_cli(["fit", "--config", config]))
    assert expected in line, line
    assert tree(tmp_path) == before and not out.exists()


def test_the_dpo_config_asks_for_what_tfclm_can_do():
    """configs/dpo.yaml reads and validates (offline: its Hub ids are not fetched)."""
    from tfclm import config as config_lib

    config = config_lib.load_config(os.path.join(ROOT, "configs", "dpo.yaml"))
    config_lib.validate(config)
    assert config.data.format == "preference" and config.preference.precompute_reference and config.lora.rank == 16


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_ends_on_the_uninterrupted_weights(checkpoints, tmp_path):
    """A preference run with accumulation and a precomputed reference, killed after a checkpoint and run again:
    it reads the cached reference scores back and ends on the uninterrupted run's weights."""
    from helpers import kill_after_checkpoint

    folder = checkpoints
    records = [{"prompt": f"What is a {w}?", "chosen": f" A {w} holds {v}s.", "rejected": f" A {v} {v}."}
               for w in WORDS for v in WORDS[:4] if v != w]  # fmt: skip
    changes = {"data.dataset": write_jsonl(tmp_path / "pairs.jsonl", records), "train.max_steps": None,
               "train.epochs": 2, "train.batch_size": 2, "train.gradient_accumulation_steps": 2,
               "preference.precompute_reference": True}  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def command(out):
        return [sys.executable, "-m", "tfclm", "fit", "--config", _run_config(folder, out, **changes)]

    expected_dir = tmp_path / "uninterrupted"
    done = subprocess.run(command(expected_dir), capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = json.load(open(expected_dir / "results.json"))
    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                               start_new_session=True)  # fmt: skip
    kill_after_checkpoint(process, str(out), 4)
    resumed = subprocess.run(command(out), capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "reference: its scores of every pair read from" in resumed.stderr + resumed.stdout
    results = json.load(open(out / "results.json"))
    assert results["resumed_from_step"] >= 4 and results["train_steps"] == expected["train_steps"]
    assert results["weights_sha256"] == expected["weights_sha256"]
    assert results["preference"] == expected["preference"]
    assert results["history"]["val_rewards/accuracies"] == expected["history"]["val_rewards/accuracies"]


@pytest.mark.slow
def test_mirrored_xla_and_bf16_preference_runs_agree_with_the_plain_one(checkpoints, tmp_path):
    """On two logical CPUs, MirroredStrategy (2 x 2 pairs) takes the default strategy's steps (4 pairs); XLA takes
    the eager steps; bf16 takes steps close to float32's."""
    folder = checkpoints
    base = {"train.max_steps": 4, "train.epochs": 2, "train.batch_size": 4, "logging.every_n_steps": 1}
    runs = {
        "default": {},
        "mirrored": {"train.strategy": "mirrored", "train.batch_size": 2},
        "xla": {"train.jit_compile": True},
        "bf16": {"train.precision": "bf16"},
    }
    configs = {name: _run_config(folder, tmp_path / name, **{**base, **c}) for name, c in runs.items()}
    script = textwrap.dedent(f"""
        import json, tfclm, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfclm.config import load_config
        from tfclm.run.fit import fit
        found = {{name: fit(load_config(path), verbose=0) for name, path in {configs!r}.items()}}
        keys = ("strategy", "global_batch_size", "step_history", "preference")
        print(json.dumps({{name: {{k: r[k] for k in keys}} for name, r in found.items()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["mirrored"]["strategy"] == "mirrored (2 replicas)" and found["mirrored"]["global_batch_size"] == 4
    plain = found["default"]["step_history"]["loss"]
    assert len(plain) == 4
    assert found["mirrored"]["step_history"]["loss"] == pytest.approx(plain, rel=1e-4)
    assert found["xla"]["step_history"]["loss"] == pytest.approx(plain, rel=1e-4)
    assert found["bf16"]["step_history"]["loss"] == pytest.approx(plain, rel=2e-2)
    for name in ("mirrored", "xla"):
        after = found[name]["preference"]
        assert after["dpo_loss"] == pytest.approx(found["default"]["preference"]["dpo_loss"], rel=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("model_type", TRAINED)
def test_every_family_scores_answers_and_takes_a_preference_step(model_type, tokenizer):
    """The chunked head's log-probabilities (the full logits' for the BERT-likes) equal the model's own logits';
    scored against itself a policy's DPO loss is log 2, and one step moves it."""
    from tfclm.backend import keras, tf
    from tfclm.config import PreferenceConfig
    from tfclm.model.preference_loss import Scorer, both_sides
    from tfclm.model.sequence_logps import logps_from_logits
    from tfclm.training.preference import PreferenceTrainer

    model = scratch(model_type, tokenizer)
    batch = {k: tf.constant(v) for k, v in _pairs_batch(tokenizer).items()}
    rows = both_sides(batch)
    own = logps_from_logits(
        rows["labels"], model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
    )[0]
    chunked = bool(FAMILIES[model_type].body)
    sums = Scorer(model, 5 if chunked else 0)(rows)[0]
    np.testing.assert_allclose(sums.numpy(), own.numpy(), rtol=1e-5)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = own[:6], own[6:]
    trainer = PreferenceTrainer(model, PreferenceConfig(beta=0.5), None, loss_chunk_tokens=5 if chunked else 0)
    trainer.compile(optimizer=keras.optimizers.legacy.SGD(learning_rate=0.5))
    before = [v.numpy() for v in model.trainable_variables]
    loss = trainer.fit(one_batch(batch), verbose=0).history["loss"][0]
    assert loss == pytest.approx(np.log(2), rel=1e-5)
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


def test_pairs_of_text_and_of_turns_in_one_file_each_render_as_their_own(bpe, tmp_path):
    """As TRL renders each record by its own shape: a conversation after text pairs goes through the chat template,
    and scores as it does alone; with no template to render it, one line, before the model scores anything."""
    import copy

    from tfclm.config import PreferenceConfig
    from tfclm.evaluation.preference import evaluate_pairs_file

    plain = str(tmp_path / "plain")  # a model whose tokenizer has no chat template
    scratch("gpt2", bpe).save_pretrained(plain)
    bpe.save_pretrained(plain)
    bpe = copy.deepcopy(bpe)
    bpe.chat_template = CHATML
    policy, reference = str(tmp_path / "policy"), str(tmp_path / "reference")
    for folder, seed in ((policy, 0), (reference, 1)):
        model = scratch("gpt2", bpe)
        rng = np.random.default_rng(seed)
        for v in model.weights:
            v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
        model.save_pretrained(folder)
        bpe.save_pretrained(folder)
    chat_pairs = pair_records("conversational")[:3]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", pair_records("standard")[:3] + chat_pairs)
    alone = {
        shape: write_jsonl(tmp_path / f"{shape}.jsonl", pair_records(shape)[:3])
        for shape in ("standard", "conversational")
    }
    settings = PreferenceConfig()
    both = evaluate_pairs_file(policy, reference, mixed, settings, batch_size=8, block_size=128)
    each = [
        evaluate_pairs_file(policy, reference, path, settings, batch_size=8, block_size=128) for path in alone.values()
    ]
    assert both["pairs"] == 6 and [e["pairs"] for e in each] == [3, 3]
    for key in ("chosen_logps", "rejected_logps", "dpo_loss"):
        assert both[key] == pytest.approx((each[0][key] + each[1][key]) / 2, rel=1e-5), key
    refused = run_cli(["evaluate", "--model", plain, "--reference", plain, "--preference-file", mixed])
    assert "--preference-file: " in error_line(refused) and "no chat template" in error_line(refused)
