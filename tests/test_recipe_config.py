"""The seed recipe's config, run through its real loading code on local copies of the model and data."""

import json
import os

import numpy as np
import pytest

from helpers import RECIPE_CONFIG, eli5_records, run_cli, sets


def local_gpt2(path, corpus):
    """Stands in for distilbert/distilgpt2: a GPT-2 saved with save_pretrained, with its tokenizer."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.data.tokenizer import train_bpe

    tokenizer = train_bpe(corpus, 400)
    tokenizer.pad_token = None  # like GPT-2's own tokenizer: tfclm must cope without a pad token
    model = TFGPT2LMHeadModel(
        GPT2Config(
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_positions=64,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    )
    model.build_in_name_scope()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.mark.slow
def test_distilgpt2_eli5_config_fine_tunes_local_copies(tmp_path):
    import datasets
    from transformers import TFAutoModelForCausalLM

    records = eli5_records(40)
    data_dir = str(tmp_path / "eli5_category")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(data_dir)
    model_dir = str(tmp_path / "distilgpt2")
    base = local_gpt2(model_dir, [" ".join(r["answers"]["text"]) for r in records])
    out = str(tmp_path / "out")

    result = run_cli(
        [
            "fit",
            "--config",
            RECIPE_CONFIG,
            *sets(f"model.name_or_path={model_dir}"),
            *sets(f"data.dataset={data_dir}"),
            *sets("data.block_size=32", "generate.max_new_tokens=8"),
            "--batch-size",
            "4",
            "--max-steps",
            "3",
            "--output-dir",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    assert "train[:5000]" in open(os.path.join(out, "tfclm.yaml")).read()
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["train_steps"] == 3 and results["data"]["documents"] == 40
    assert results["data"]["train_documents"] == 32 and results["data"]["validation_documents"] == 8
    tuned = TFAutoModelForCausalLM.from_pretrained(out)
    before = base.get_input_embeddings().weights[0].numpy()
    after = tuned.get_input_embeddings().weights[0].numpy()
    assert before.shape == after.shape and not np.allclose(before, after)  # fine-tuned, not retrained from scratch
