"""The configs for today's open models (configs/smollm2-135m-chat.yaml, configs/qwen2.5-0.5b-lora.yaml), run
through their real loading code on tiny random checkpoints that PyTorch transformers saves as the Hub holds them,
and what they train checked against PyTorch: the chat run's labels under a Qwen 2-style template, the LoRA run's
adapters read by PEFT."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import ROOT, eli5_records, error_line, run_cli, sets

# A ChatML template of the Qwen 2 / SmolLM 2 kind: a default system message when the conversation has none.
QWEN2_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message['role'] != 'system' %}{{- '<|im_start|>' + "
    "message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHAT_CONFIG = os.path.join(ROOT, "configs", "smollm2-135m-chat.yaml")
LORA_CONFIG = os.path.join(ROOT, "configs", "qwen2.5-0.5b-lora.yaml")
WORDS = "list tuple dict set string number file loop class module function value".split()


def conversations(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is a {WORDS[i % len(WORDS)]}?"},
                {"role": "assistant", "content": f"A {WORDS[i % len(WORDS)]} holds {WORDS[(i + 3) % len(WORDS)]}s."},
            ]
        }
        for i in range(n)
    ]


def hub_checkpoint(folder, model_type: str, texts: list[str], chat_template: str | None = None) -> str:
    """A tiny random PyTorch checkpoint of the family (safetensors, config.json) with a tokenizer trained on
    `texts`, and ChatML's tokens and `chat_template` when given: what a Hub repo of the family holds."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tfclm.data.tokenizer import train_bpe

    tokenizer = train_bpe(texts, 400)
    if chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def test_a_qwen2_style_template_scores_the_replies_and_their_end_only(tmp_path):
    """The template's own default system message and the user's turns get no loss; each reply and its
    <|im_end|> do."""
    from transformers import AutoTokenizer

    from tfclm.data import chat

    texts = [m["content"] for c in conversations(12) for m in c["messages"]]
    tokenizer = AutoTokenizer.from_pretrained(hub_checkpoint(tmp_path, "qwen2", texts, QWEN2_STYLE))
    tokenizer, added = chat.with_template(tokenizer)
    assert added == []  # the tokenizer's own template and tokens are kept
    turns = (("user", "What is a list?"), ("assistant", "An ordered sequence."), ("user", "And a set?"),
             ("assistant", "One without order."))  # fmt: skip
    blocks = chat.encode([turns], tokenizer, 256, loss_on_assistant=True)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert chat.end_of_turn_id(tokenizer) == end
    labels = blocks.labels[0][: blocks.attention_mask[0].sum()]
    replies = [tokenizer(c, add_special_tokens=False)["input_ids"] + [end] for r, c in turns if r == "assistant"]
    assert [int(t) for t in labels if t != -100] == replies[0] + replies[1]
    text = tokenizer.decode(blocks.input_ids[0][: blocks.attention_mask[0].sum()])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


@pytest.mark.slow
def test_the_smollm2_chat_config_fine_tunes_a_local_llama_and_chats(tmp_path):
    records = conversations(40)
    data = tmp_path / "smoltalk.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    texts = [m["content"] for r in records for m in r["messages"]]
    model_dir = hub_checkpoint(tmp_path / "smollm2", "llama", texts, QWEN2_STYLE)
    out = str(tmp_path / "out")
    local = sets(f"model.name_or_path={model_dir}", f"data.dataset={data}", "data.config_name=null")
    small = sets("data.split=train", "data.block_size=64", "generate.max_new_tokens=6", "logging.report_to=[none]")
    result = run_cli(["fit", "--config", CHAT_CONFIG, *local, *small, "--batch-size", "4", "--max-steps", "3",
                      "--output-dir", out])  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["train_steps"] == 3 and results["precision"] == "mixed_bfloat16"
    assert results["samples"] and "user\nWhat is a good way to start the day?" in results["samples"][0]["prompt"]
    reply = run_cli(["generate", "--model", out, "--chat", "--prompt", "What is a list?", "--greedy",
                     "--max-new-tokens", "6", "--json"])  # fmt: skip
    assert reply.exit_code == 0, reply.output
    sample = json.loads(reply.stdout.strip().splitlines()[-1])
    assert sample["prompt"].endswith("user\nWhat is a list?<|im_end|>\n<|im_start|>assistant\n")
    assert 0 < sample["new_tokens"] <= 6
    # The run's template is the checkpoint's own, saved with its tokenizer.
    saved = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert "You are a helpful assistant." in (saved.get("chat_template") or open(f"{out}/chat_template.jinja").read())


PEFT_CHECK = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        print(json.dumps([model(torch.tensor([r])).logits[0].tolist() for r in rows]))
""")


@pytest.mark.slow
def test_the_qwen25_lora_config_trains_adapters_that_peft_loads_onto_the_pytorch_base(tmp_path):
    pytest.importorskip("peft")
    import datasets

    from tfclm.model.loading import load_trained

    records = eli5_records(40)
    data_dir = str(tmp_path / "eli5_category")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(data_dir)
    base = hub_checkpoint(tmp_path / "qwen2.5", "qwen2", [" ".join(r["answers"]["text"]) for r in records])
    out = str(tmp_path / "out")
    local = sets(f"model.name_or_path={base}", f"data.dataset={data_dir}", "train.loss_chunk_tokens=16")
    small = sets("data.block_size=32", "generate.max_new_tokens=4", "logging.report_to=[none]")
    result = run_cli(["fit", "--config", LORA_CONFIG, *local, *small, "--batch-size", "2", "--max-steps", "3",
                      "--output-dir", out])  # fmt: skip
    assert result.exit_code == 0, result.output
    adapter = json.load(open(os.path.join(out, "adapter_config.json")))
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and adapter["base_model_name_or_path"] == base
    assert sorted(adapter["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    model, tokenizer = load_trained(out)
    rows = [tokenizer("why does the sky look blue", add_special_tokens=False)["input_ids"]]
    expected = np.stack([model(input_ids=np.array([r])).logits.numpy()[0] for r in rows])
    env = {**os.environ, "USE_TF": "0", "USE_TORCH": "1"}
    done = subprocess.run([sys.executable, "-c", PEFT_CHECK, base, out, json.dumps(rows)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    assert np.abs(got - expected).max() < 1e-4


def test_the_configs_ask_for_what_tfclm_can_do(tmp_path):
    """Both configs resolve (bounds, combinations); the LoRA one refuses a full-precision train step over its
    bfloat16 base, as any config would."""
    from tfclm.config import load_config

    chat = load_config(CHAT_CONFIG)
    assert chat.data.format == "messages" and chat.train.loss_on == "assistant" and chat.model.config is None
    lora = load_config(LORA_CONFIG)
    assert lora.lora.rank == 16 and lora.lora.base_precision == "bf16" and lora.train.precision == "bf16"
    line = error_line(run_cli(["fit", "--config", LORA_CONFIG, *sets("train.precision=fp32"),
                               "--output-dir", str(tmp_path / "out")]))  # fmt: skip
    assert line.startswith("Error: lora.base_precision: bf16 needs train.precision bf16")
    assert not (tmp_path / "out").exists()
