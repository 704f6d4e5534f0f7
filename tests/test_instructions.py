"""Prompt/completion data: the loss on the completion only, batches by length, the QA config, bad records."""

import json
import os

import numpy as np
import pytest

from helpers import DEFAULT_CONFIG, ROOT, TINY_MODEL, eli5_records, run_cli, sets, tree

QA = sets(
    "data.format=prompt_completion",
    "data.prompt_template=Question: {title}\\n{selftext}\\nAnswer: ",
    "data.completion_column=answers.text",
    "data.completion_pick=max:answers.score",
)


def tiny_tokenizer(tokenizers):
    return tokenizers[False]


def test_labels_score_the_completion_and_its_eos_only(tokenizers):
    from tfclm.data.examples import encode

    tokenizer = tiny_tokenizer(tokenizers)
    pairs = [("Question: what is a list?\nAnswer: ", "an ordered sequence"), ("Q: x\nA: ", "the value of x")]
    blocks = encode(pairs, tokenizer, 64, loss_on_completion=True)
    everything = encode(pairs, tokenizer, 64, loss_on_completion=False)
    for row, (prompt, completion) in enumerate(pairs):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        full = p + c + [tokenizer.eos_token_id]
        assert blocks.input_ids[row, : len(full)].tolist() == full and blocks.attention_mask[row].sum() == len(full)
        assert blocks.labels[row].tolist() == [-100] * len(p) + c + [tokenizer.eos_token_id] + [-100] * (64 - len(full))
        assert (blocks.labels[row] != -100).sum() == len(c) + 1  # the completion's tokens and its EOS
        assert everything.labels[row, : len(full)].tolist() == full


def test_prompt_targets_do_not_move_the_completion_loss(tokenizers):
    """The loss sums over the scored positions only: any other targets at the prompt leave it where it was."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.backend import keras
    from tfclm.data.examples import encode
    from tfclm.model.loss import token_loss_sums

    tokenizer = tiny_tokenizer(tokenizers)
    keras.utils.set_random_seed(0)
    model = TFGPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2))
    pairs = [("Question: what is a list?\nAnswer: ", "an ordered sequence"), ("Q: x\nA: ", "the value of x")]
    blocks = encode(pairs, tokenizer, 48, loss_on_completion=True)
    logits = model(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask).logits
    total, count = token_loss_sums(blocks.labels, logits)
    everything = np.where(blocks.attention_mask == 1, blocks.input_ids, -100)
    changed = everything.copy()
    prompt = (blocks.labels == -100) & (blocks.attention_mask == 1)
    changed[prompt] = np.random.default_rng(1).integers(0, len(tokenizer), prompt.sum())
    for targets in (everything, changed):
        scored = np.where(prompt, -100, targets)  # what loss_on: completion keeps of any targets
        other_total, other_count = token_loss_sums(scored, logits)
        assert float(other_total) == float(total) and float(other_count) == float(count)
    assert float(token_loss_sums(changed, logits)[0]) != float(token_loss_sums(everything, logits)[0])
    expected = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for _, c in pairs)
    assert float(count) == expected


def test_batches_group_similar_lengths_and_keep_every_example_once():
    from tfclm.data.examples import bucketed_order, padding_share

    lengths = np.random.default_rng(0).integers(5, 120, 1000)
    order = bucketed_order(lengths, 8, np.random.default_rng(3))
    assert sorted(order.tolist()) == list(range(1000))
    batches = order[:1000].reshape(-1, 8)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    shuffled = np.random.default_rng(3).permutation(1000).reshape(-1, 8)
    assert spread < 0.2 * np.mean([lengths[b].max() - lengths[b].min() for b in shuffled])
    assert padding_share(lengths, 8, 0, 128) < 0.15  # cut to its longest (x16), a batch is mostly tokens


@pytest.fixture()
def eli5_qa(tmp_path):
    path = tmp_path / "eli5.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eli5_records(60)), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_the_eli5_qa_config_runs_on_local_eli5_shaped_data(eli5_qa, tmp_path):
    out = str(tmp_path / "qa")
    config = os.path.join(ROOT, "configs", "distilgpt2-eli5-qa.yaml")
    local = sets(f"data.dataset={eli5_qa}", "data.split=train", "model.name_or_path=null")
    scratch = sets('model.config={"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}')
    result = run_cli(
        ["fit", "--config", config, *local, *scratch, *TINY_MODEL[:2], *TINY_MODEL[8:], "--max-steps", "4"]
        + ["--output-dir", out]
    )
    assert result.exit_code == 0, result.output
    results = json.load(open(os.path.join(out, "results.json")))
    facts = results["data"]
    assert facts["loss_on"] == "completion" and facts["examples"] == 60  # the best answer of each question
    assert facts["train_examples"] + facts["validation_examples"] == 60 and 0 <= facts["padding_share"] < 0.5
    assert "padding is" in result.output and "the loss on the completions" in result.output
    assert results["eval_loss"] < results["eval_loss_before"]
    evaluated = run_cli(["evaluate", "--model", out, "--json"])  # the answers' perplexity again, as the run had it
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output[evaluated.output.index('{"loss"') :])
    assert figures["loss"] == pytest.approx(results["eval_loss"], rel=1e-5)
    assert figures["method"].endswith("prompt/completion examples, the loss on the completions")


@pytest.mark.parametrize(
    "records, settings, expected",
    [
        ([{"title": "a", "answers": {"text": ["x"]}}, {"answers": {"text": ["y"]}}], [],
         "data.prompt_template: record 1 has no field 'title'"),
        ([{"title": "a", "answers": {"text": ["x"]}}, {"title": "b", "answers": {"text": [""]}}], [],
         "data.completion_column: record 1: 'answers.text' is empty"),
        ([{"title": "a", "answers": {"text": ["x"]}}], ["data.prompt_template='Q: {titel}'"],
         "data.prompt_template: record 0 has no field 'titel'"),
        ([{"title": "a", "answers": {"text": 3}}], [], "record 0: 'answers.text' holds int, not text"),
        ([{"title": "a", "answers": {"text": ["x"], "score": [1, 2]}}], ["data.completion_pick=max:answers.score"],
         "record 0: 'answers.score' is not a list of one score per completion (1)"),
        ([{"title": "a", "answers": {"text": ["x"]}}], ["data.completion_pick=best"],
         "data.completion_pick: must be all, first or max:FIELD"),
        ([{"title": "a", "answers": {"text": ["x"]}}], ["data.format=text", "data.completion_column=answers.text"],
         "data.prompt_template: is set but data.format is text"),
        ([{"title": "a", "answers": {"text": ["x"]}}], ["train.pipeline=recipe"],
         "train.pipeline: recipe packs documents"),
        ([{"title": "why " * 40 + str(i), "answers": {"text": ["because"]}} for i in range(10)],
         ["data.block_size=16", "train.batch_size=2"],
         "data.block_size: 8 of 8 training prompt/completion examples were left out because their prompt fills the "
         "block within 16 tokens, and 0 are fewer than one step; raise data.block_size"),
    ],
)  # fmt: skip
def test_bad_records_are_one_line_naming_the_record_and_field(tmp_path, records, settings, expected):
    from helpers import error_line

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    before = tree(out)
    qa = sets(
        f"data.dataset={data}",
        "data.format=prompt_completion",
        "data.prompt_template=Q: {title}\\nA: ",
        "data.completion_column=answers.text",
        *settings,
    )
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_MODEL, *qa, "--output-dir", str(out)]))
    assert expected in line, line
    assert tree(out) == before


def test_text_keys_refuse_the_completion_loss():
    from helpers import error_line

    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *sets("train.loss_on=completion")]))
    assert "train.loss_on: completion needs data.format: prompt_completion" in line


@pytest.mark.slow
def test_a_model_trained_on_the_completions_follows_held_out_instructions(tmp_path):
    """reverse: abc -> cba, upper: dog -> DOG, from scratch: greedy exact match on 200 held-out prompts."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from instructions import train_and_score

    found = train_and_score(str(tmp_path), "completion")
    assert found["all"] >= 0.9, found


def test_an_example_whose_prompt_fills_the_block_is_left_out_and_counted(tokenizers):
    from tfclm.data.examples import encode

    tokenizer = tokenizers[False]
    long_prompt = "Question: " + "why " * 40
    pairs = [(long_prompt, "because"), ("Q: x\nA: ", "y")]
    blocks = encode(pairs, tokenizer, 16, loss_on_completion=True)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for p, c in pairs for t in (p, c)]
    assert len(blocks.input_ids) == 1 and blocks.documents == 2
    assert blocks.tokens == lengths[0] + lengths[1] + 1 + lengths[2] + lengths[3] + 1
    assert blocks.dropped == lengths[0] + lengths[1] + 1  # all of the first example: none of it is trained on


def test_a_validation_file_with_the_training_prompts_is_refused(eli5_qa, tmp_path):
    from helpers import error_line

    qa = sets(f"data.dataset={eli5_qa}", f"data.validation_split={eli5_qa}")
    line = error_line(
        run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_MODEL, *QA, *qa, "--output-dir", str(tmp_path / "out")])
    )
    assert "data.validation_split: " in line and "leaves 60 validation and 0 training examples" in line
