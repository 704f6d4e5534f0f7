"""Chat data: conversations rendered by a chat template, the loss on the assistant's replies, `generate --chat`."""

import json
import os
import sys

import pytest

from helpers import DEFAULT_CONFIG, PYDOC_TOPICS, ROOT, TINY_MODEL, run_cli, sets, tree

sys.path.insert(0, os.path.join(ROOT, "bench"))

# A template of the Zephyr kind: roles as plain text, each turn closed by the tokenizer's EOS.
EOS_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONVERSATION = (
    ("system", "You answer briefly."),
    ("user", "What is a list?"),
    ("assistant", "An ordered sequence."),
    ("user", "And a tuple?"),
    ("assistant", "One that cannot change."),
)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def scored(blocks, row=0):
    labels = blocks.labels[row][: blocks.attention_mask[row].sum()]
    return [int(t) for t in labels if t != -100]


def test_labels_score_each_reply_and_its_end_of_turn_only(tokenizers):
    from tfclm.data import chat

    tokenizer, added = chat.with_template(tokenizers[False])
    assert added == [chat.START, chat.END] and len(tokenizer) == len(tokenizers[False]) + 2
    assert tokenizers[False].chat_template is None  # the cached tokenizer is left as it was trained
    end = chat.end_of_turn_id(tokenizer)
    assert end == tokenizer.convert_tokens_to_ids(chat.END)
    blocks = chat.encode([CONVERSATION], tokenizer, 96, loss_on_assistant=True)
    replies = [ids(tokenizer, c) + [end] for role, c in CONVERSATION if role == "assistant"]
    assert scored(blocks) == replies[0] + replies[1]  # the replies and their ends, nothing of the rest
    text, _ = chat.render(tokenizer, CONVERSATION)
    assert blocks.input_ids[0][: blocks.attention_mask[0].sum()].tolist() == ids(tokenizer, text)
    everything = chat.encode([CONVERSATION], tokenizer, 96, loss_on_assistant=False)
    assert scored(everything) == ids(tokenizer, text)


def test_a_tokenizers_own_template_is_kept_and_its_eos_ends_a_turn(tokenizers):
    import copy

    from tfclm.data import chat

    own = copy.deepcopy(tokenizers[False])
    own.chat_template = EOS_TEMPLATE
    tokenizer, added = chat.with_template(own)
    assert tokenizer is own and added == []
    assert chat.end_of_turn_id(own) == own.eos_token_id
    blocks = chat.encode([CONVERSATION], own, 160, loss_on_assistant=True)
    replies = [ids(own, c) + [own.eos_token_id] for role, c in CONVERSATION if role == "assistant"]
    assert scored(blocks) == replies[0] + replies[1]


def test_a_conversation_cut_before_any_reply_is_left_out_and_counted(tokenizers):
    from tfclm.data import chat

    tokenizer, _ = chat.with_template(tokenizers[False])
    long = (("user", "why " * 40), ("assistant", "because"))
    short = CONVERSATION[1:3]
    blocks = chat.encode([long, short], tokenizer, 40, loss_on_assistant=True)
    lengths = [len(ids(tokenizer, chat.render(tokenizer, c)[0])) for c in (long, short)]
    assert lengths[0] > 40 >= lengths[1]
    assert len(blocks.input_ids) == 1 and blocks.documents == 2 and blocks.tokens == sum(lengths)
    assert blocks.dropped == lengths[0]  # all of the long one: none of it is trained on


def test_a_template_that_does_not_render_turn_by_turn_is_refused(tokenizers):
    import copy

    from tfclm.data import chat
    from tfclm.errors import ConfigError

    odd = copy.deepcopy(tokenizers[False])
    odd.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match="does not render a conversation turn by turn"):
        chat.encode([CONVERSATION], odd, 96, loss_on_assistant=True)


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


TINY_CHAT = [*sets("data.format=messages"), *TINY_MODEL]
GOOD = {"messages": turns(("user", "hi"), ("assistant", "hello"))}


@pytest.mark.parametrize(
    "record, settings, expected",
    [
        ({"turns": []}, [], "data.messages_column: record 1 has no field 'messages'; its fields are: turns"),
        ({"messages": "hi"}, [], "record 1: 'messages' is not a list of {role, content} turns"),
        ({"messages": [{"role": "user"}]}, [], "record 1, turn 0: not a {role, content} object"),
        ({"messages": turns(("human", "hi"), ("assistant", "x"))}, [],
         "record 1, turn 0: unknown role 'human'; roles are system, user, assistant"),
        ({"messages": [{"role": "user", "content": 3}]}, [], "record 1, turn 0: content holds int, not text"),
        ({"messages": turns(("user", "hi"), ("assistant", " "))}, [], "record 1 has no assistant turn with text"),
        ({"messages": turns(("assistant", "x"), ("user", "hi"))}, [], "record 1 starts with an assistant turn"),
        (GOOD, ["train.loss_on=completion"], "train.loss_on: completion needs data.format: prompt_completion"),
        (GOOD, ["data.format=text", "train.loss_on=assistant"], "train.loss_on: assistant needs data.format: messages"),
        (GOOD, ["data.prompt_column=messages"], "data.prompt_column: is set but data.format is messages"),
        (GOOD, ["data.streaming=true", "train.max_steps=2"], "data.streaming: works with data.format text only"),
    ],
)  # fmt: skip
def test_bad_conversations_are_one_line_naming_the_record_and_turn(tmp_path, record, settings, expected):
    from helpers import error_line

    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"kept": true}')
    before = tree(out)
    args = ["fit", "--config", DEFAULT_CONFIG, *TINY_CHAT, *sets(f"data.dataset={data}", *settings)]
    line = error_line(run_cli([*args, "--output-dir", str(out)]))
    assert expected in line, line
    assert tree(out) == before


def chat_run(tmp_path, name, *more):
    """The synthetic reverse/upper tasks as two-turn chats, a small model trained on the replies from scratch."""
    from instructions import settings, synthetic_tasks

    data = str(tmp_path / "chats.jsonl")
    words = synthetic_tasks(data, train_words=300, held_out=10, messages=True)
    out = str(tmp_path / name)
    shorter = sets("train.epochs=12", "data.validation_split=0.1", *more)
    result = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *sets(*settings(data, out, "assistant", messages=True)), *shorter]
    )
    assert result.exit_code == 0, result.output
    return out, words, result.output


def chat_replies(out, prompts, *more):
    args = ["generate", "--model", out, "--chat", "--greedy", "--max-new-tokens", "8", "--json", *more]
    result = run_cli([*args, *[part for p in prompts for part in ("--prompt", p)]])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_a_chat_model_from_scratch_trains_replies_and_stops_at_the_end_of_its_turn(tmp_path):
    import tfclm
    from tfclm.data import chat

    out, words, output = chat_run(tmp_path, "chat")
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["data"]["loss_on"] == "assistant" and results["data"]["chat_template"].startswith("tfclm's ChatML")
    assert "the loss on the assistant's replies" in output
    saved = open(os.path.join(out, "chat_template.jinja")).read()
    assert saved == chat.DEFAULT_TEMPLATE  # saved with the tokenizer: transformers' apply_chat_template reads it

    prompts = [f"upper: {word}" for word in words[:4]]
    replies = chat_replies(out, prompts)
    assert len(replies) == 4 and all(r["stopped_at_eos"] and r["new_tokens"] < 8 for r in replies), replies
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") and "<|im_" not in r["completion"] for r in replies)
    assert all(r["completion"].isupper() for r in replies), replies  # 190 steps teach the form of a reply
    held = chat_replies(out, prompts[:1], "--min-new-tokens", "6")[0]  # neither EOS nor the end of turn before 6
    assert held["new_tokens"] >= 6 and held["completion"] != replies[0]["completion"], held
    system = chat_replies(out, prompts[:1], "--system", "Answer in capitals.")[0]
    assert system["prompt"].startswith("<|im_start|>system\nAnswer in capitals.<|im_end|>\n<|im_start|>user\n")
    assert tfclm.chat(out, prompts[0], do_sample=False, max_new_tokens=8) == replies[0]["completion"]
    conversation = turns(("user", prompts[0]), ("assistant", replies[0]["completion"]), ("user", prompts[1]))
    assert tfclm.chat(out, conversation, do_sample=False, max_new_tokens=8)  # a conversation so far gets a reply

    evaluated = run_cli(["evaluate", "--model", out, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output[evaluated.output.index('{"loss"') :])
    assert figures["loss"] == pytest.approx(results["eval_loss"], rel=1e-5)
    assert figures["method"].endswith("conversations, the loss on the assistant's replies")

    from transformers import AutoTokenizer

    for target in ("tf", "pytorch"):  # an export renders chats as the run did
        exported = str(tmp_path / f"export-{target}")
        assert run_cli(["export", "--model", out, "--to", target, "--output", exported]).exit_code == 0
        assert AutoTokenizer.from_pretrained(exported).chat_template == chat.DEFAULT_TEMPLATE


@pytest.mark.slow
def test_a_tokenizer_with_its_own_chat_template_trains_and_stops_at_its_eos(tmp_path, tokenizers):
    from instructions import TASKS

    from tfclm.data.tokenizer import train_bpe

    texts = [f"{task}: abcdefghijklmnopqrstuvwxyz {answer('abcdefghijklmnopqrstuvwxyz')}" for task, answer in
             TASKS.items()]  # fmt: skip
    own = train_bpe(texts, 260)
    own.chat_template = EOS_TEMPLATE
    tokenizer_dir = str(tmp_path / "tokenizer")
    own.save_pretrained(tokenizer_dir)
    out, words, output = chat_run(tmp_path, "own", f"tokenizer.name_or_path={tokenizer_dir}")
    assert "conversations rendered with the tokenizer's own" in output
    replies = chat_replies(out, [f"upper: {word}" for word in words[:4]])
    assert all(r["stopped_at_eos"] and r["new_tokens"] < 8 for r in replies), replies
    assert all(r["prompt"].endswith("<|assistant|>\n") for r in replies)


def template_free_model(path: str, tokenizer) -> str:
    """A tiny GPT-2 saved with a tokenizer that has no chat template, as GPT-2's own has none."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2))
    model.build_in_name_scope()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_system_without_chat_and_chat_without_a_template_are_one_line(tmp_path, tokenizers):
    from helpers import error_line

    plain = template_free_model(str(tmp_path / "plain"), tokenizers[False])
    line = error_line(run_cli(["generate", "--model", plain, "--system", "Be brief.", "--prompt", "hi"]))
    assert "--system" in line and "add --chat" in line
    line = error_line(run_cli(["generate", "--model", plain, "--chat", "--prompt", "hi"]))
    assert "--chat: this model's tokenizer has no chat template" in line


@pytest.mark.slow
def test_lora_on_chat_data_must_train_the_embeddings_of_the_new_tokens(tmp_path, tokenizers):
    """A base whose tokenizer has no template gets two tokens; LoRA would leave their embeddings untrained."""
    from helpers import error_line

    base = template_free_model(str(tmp_path / "base"), tokenizers[False])
    data = tmp_path / "chats.jsonl"
    records = [{"messages": turns(("user", f"hi {i}"), ("assistant", f"hello {i}"))} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    lora = sets(
        "model.config=null", f"model.name_or_path={base}", "lora.rank=4", f"data.dataset={data}", "train.batch_size=4"
    )
    args = ["fit", "--config", DEFAULT_CONFIG, *TINY_CHAT, *lora, "--output-dir", str(out), "--max-steps", "2"]
    line = error_line(run_cli(args))
    assert "lora.modules_to_save: the tokenizer has 2 tokens more than the model's embeddings" in line
    assert not out.exists()
    result = run_cli([*args, *sets("lora.modules_to_save=[wte]")])
    assert result.exit_code == 0, result.output
    assert json.load(open(out / "results.json"))["data"]["chat_template"] == (
        "tfclm's ChatML, adding <|im_start|> and <|im_end|>"
    )
    replies = chat_replies(str(out), ["hi 3"])
    assert replies[0]["prompt"] == "<|im_start|>user\nhi 3<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_a_text_run_over_a_chat_run_leaves_no_chat_template_behind(tmp_path):
    """--overwrite: the old run's chat template must not outlive it beside a tokenizer that lacks its tokens."""
    from tfclm.model.loading import load_trained

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(GOOD).replace("hello", f"hello {i}") + "\n" for i in range(12)))
    out = str(tmp_path / "run")
    tiny = [*TINY_CHAT, *sets(f"data.dataset={data}", "train.batch_size=4", "data.block_size=32")]
    chat_fit = run_cli(["fit", "--config", DEFAULT_CONFIG, *tiny, "--max-steps", "1", "--output-dir", out])
    assert chat_fit.exit_code == 0, chat_fit.output
    assert os.path.exists(os.path.join(out, "chat_template.jinja"))
    text = [*TINY_MODEL, *sets(f"data.dataset={PYDOC_TOPICS}", "data.max_documents=20", "data.block_size=32")]
    text_fit = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *text, "--max-steps", "1", "--output-dir", out, "--overwrite"]
    )
    assert text_fit.exit_code == 0, text_fit.output
    assert not os.path.exists(os.path.join(out, "chat_template.jinja"))
    assert load_trained(out)[1].chat_template is None


BAD_TEMPLATES = {
    "does not parse": ("{% for m in messages %}{{ m['content'] }}", "TemplateSyntaxError"),
    "raises": ("{{ raise_exception('Conversation roles must alternate') }}", "Conversation roles must alternate"),
    "drops the replies": (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}\n{% endif %}{% endfor %}",
        "leaves the assistant's replies out of the conversation it renders",
    ),
}


@pytest.mark.parametrize("fault", sorted(BAD_TEMPLATES))
def test_a_broken_chat_template_is_one_line_in_fit_generate_and_evaluate(tmp_path, tokenizers, fault):
    from helpers import error_line

    template, said = BAD_TEMPLATES[fault]
    tokenizer = tokenizers[False].__class__.from_pretrained(template_free_model(str(tmp_path / "m"), tokenizers[False]))
    tokenizer.chat_template = template
    model = template_free_model(str(tmp_path / "model"), tokenizer)
    data = tmp_path / "chats.jsonl"
    records = [{"messages": turns(("user", f"hi {i}"), ("assistant", f"hello {i}"))} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    run_config = tmp_path / "run.yaml"
    run_config.write_text(f"model:\n  name_or_path: {model}\ndata:\n  dataset: {data}\n  format: messages\n")
    out = tmp_path / "out"
    before = tree(tmp_path)
    source = f"the chat template of {model!r}"
    for command, key in (
        (["generate", "--model", model, "--chat", "--prompt", "hi"], "--chat"),
        (["evaluate", "--model", model, "--config", str(run_config)], "--model"),
        (["fit", "--config", DEFAULT_CONFIG, *TINY_CHAT, *sets(f"data.dataset={data}"),
          *sets(f"tokenizer.name_or_path={model}"), "--output-dir", str(out)], "tokenizer.name_or_path"),
    ):  # fmt: skip
        line = error_line(run_cli(command))
        assert line.startswith(f"Error: {key}: {source} ") and said in line, line
    assert tree(tmp_path) == before and not out.exists()
