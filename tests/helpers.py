"""What the tests share: paths, the tiny CLI runs, tiny models, the seed recipe's client, a Hub server and the
checks of an error line and a directory's bytes. Test files import these from here, never from each other."""

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import tfclm  # noqa: F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")
RECIPE_CONFIG = os.path.join(ROOT, "configs", "distilgpt2-eli5.yaml")


# The pydoc topics, one .txt file each: written once a test process starts (conftest), not at import.
PYDOC_TOPICS = os.path.join(tempfile.gettempdir(), f"tfclm-pydoc-topics-{os.getpid()}")


def write_pydoc_topics() -> None:
    """The pydoc topics in the built-in corpus's order: the same first 78 documents as builtin:pydoc, without
    parsing the standard library's docstrings first. Removed when the process ends."""
    from tfclm.data.corpus import pydoc_topics

    if os.path.isdir(PYDOC_TOPICS):
        return
    os.makedirs(PYDOC_TOPICS)
    atexit.register(shutil.rmtree, PYDOC_TOPICS, ignore_errors=True)
    for i, text in enumerate(pydoc_topics()):
        with open(os.path.join(PYDOC_TOPICS, f"{i:03d}.txt"), "w", encoding="utf-8") as handle:
            handle.write(text)


def sets(*pairs: str) -> list[str]:
    """`--set` options for the CLI: sets("a.b=1", "c.d=2") -> ["--set", "a.b=1", "--set", "c.d=2"]."""
    return [part for pair in pairs for part in ("--set", pair)]


# The default run, shrunk: same config file and code path as `make train`, on the pydoc topics alone.
TINY = sets(
    f"data.dataset={PYDOC_TOPICS}",
    "data.max_documents=40",
    "data.num_proc=1",
    "tokenizer.vocab_size=600",
    "model.config.n_layer=1",
    "model.config.n_embd=64",
    "model.config.n_head=2",
    "train.warmup_ratio=0.1",
    "generate.max_new_tokens=12",
)

# The tiny run on the built-in corpus itself: the settings of the `trained_dir` fit.
TINY_BUILTIN = [*TINY, *sets("data.dataset=builtin:pydoc")]


def fit_command(*args: str) -> list[str]:
    """`python -m tfclm fit --config configs/default.yaml ARGS...`, for a subprocess: the command a user types."""
    return [sys.executable, "-m", "tfclm", "fit", "--config", DEFAULT_CONFIG, *args]


def run_cli(args):
    from click.testing import CliRunner

    from tfclm.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def error_line(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def eli5_records(n=24):
    """Records shaped like eli5_category: nested `answers` with a list of texts."""
    words = "why does the sky look blue light scatters off air molecules and short waves scatter more than long ones"
    words = words.split()
    records = []
    for i in range(n):
        a = f"answer {i}: " + " ".join(words[(i + k) % len(words)] for k in range(12))
        b = " ".join(words[(3 * i + k) % len(words)] for k in range(9))
        records.append(
            {
                "q_id": f"q{i}",
                "title": f"question {i} about {words[i % len(words)]}",
                "selftext": f"more about {words[(i + 5) % len(words)]}" if i % 2 else "",
                "answers": {"a_id": [f"a{i}", f"b{i}"], "text": [a, b], "score": [3, 1]},
            }
        )
    return records


def kill_after_checkpoint(process, out: str, step: int, timeout: float = 300) -> None:
    """SIGKILL a fit's process group once OUTPUT_DIR/checkpoints lists ckpt-`step`: a crash mid-run."""
    import signal
    import time

    index = os.path.join(out, "checkpoints", "checkpoint")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.exists(index) and f"ckpt-{step}" in open(index).read():
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def event_tags(log_dir: str) -> set:
    """Every scalar tag TensorBoard's event files under `log_dir` hold."""
    import glob

    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def tree(folder) -> dict:
    """Every file under `folder` with its bytes' sha256: equal before and after means nothing was touched."""
    found = {}
    for directory, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


# Tiny configs of every family tfclm trains: two layers, 32 wide.
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
    "gemma": dict(LLAMA_LIKE, head_dim=8),
    "gemma2": dict(LLAMA_LIKE, head_dim=8, sliding_window=16, query_pre_attn_scalar=8),
    "gemma3_text": dict(LLAMA_LIKE, head_dim=8, sliding_window=16, sliding_window_pattern=2, query_pre_attn_scalar=8),
    "olmo2": dict(LLAMA_LIKE, tie_word_embeddings=False),
    "granite": dict(
        LLAMA_LIKE, embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0
    ),  # fmt: skip
    "phi3": dict(LLAMA_LIKE, partial_rotary_factor=0.5, tie_word_embeddings=False),
    "bert": dict(BERT_LIKE, max_position_embeddings=128),
    "rembert": dict(BERT_LIKE, max_position_embeddings=128, input_embedding_size=32, output_embedding_size=32),
    "roberta": ROBERTA_LIKE,
    "roberta-prelayernorm": ROBERTA_LIKE,
    "camembert": ROBERTA_LIKE,
    "xlm-roberta": ROBERTA_LIKE,
}


# tfclm's own classes' PyTorch references: a tiny random model of any family, saved as the Hub saves it.
SMALL = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=95,
)  # fmt: skip


def pytorch_model(fields: dict, folder, dtype=None, **save):
    """A random tiny PyTorch model of `fields`, saved in `folder` as the Hub's checkpoints are."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    # Eager attention: PyTorch's SDPA leaves out Gemma 2's soft-capping.
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**SMALL, **fields}), attn_implementation="eager")
    model = model.eval()
    with torch.no_grad():  # norms start at 1 (Gemma's at its offset 0): random ones show a weight misread
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(folder), **save)
    return model.float()


def scratch(model_type, tokenizer, block_size=32, precision="fp32"):
    from tfclm.backend import keras
    from tfclm.config import ModelConfig
    from tfclm.model.loading import load_model

    keras.utils.set_random_seed(0)
    return load_model(
        ModelConfig(config={"model_type": model_type, **TINY_CONFIGS[model_type]}), tokenizer, block_size, precision
    )


def tiny(model_type, vocab=96, dropout=True):
    """`dropout=False` zeroes every dropout rate: a step compared with one by hand draws no masks."""
    from transformers import AutoConfig, TFAutoModelForCausalLM

    from tfclm.backend import keras

    keras.utils.set_random_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=vocab, pad_token_id=1, **TINY_CONFIGS[model_type])
    for name, value in vars(config).copy().items():
        if not dropout and "drop" in name and isinstance(value, float):
            setattr(config, name, 0.0)
    model = TFAutoModelForCausalLM.from_config(config)
    model.build_in_name_scope()
    return model


def one_batch(batch):
    from tfclm.backend import tf

    return tf.data.Dataset.from_tensors(batch)


def plain_sgd_step(model, batch, learning_rate):
    """One SGD step by hand on the model's own logits: the reference every trainer step is held to."""
    from tfclm.backend import tf
    from tfclm.model.loss import token_loss_sums

    with tf.GradientTape() as tape:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], training=True).logits
        total, count = token_loss_sums(batch["labels"], logits)
        loss = total / count
    for variable, grad in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
        variable.assign_sub(learning_rate * tf.convert_to_tensor(grad))
    return float(loss)


# From the transformers causal-LM tutorial (TensorFlow tab), with the Hub id replaced by the output dir.
SEED_CLIENT = """
prompt = "Somatic hypermutation allows the immune system to"

from transformers import pipeline

generator = pipeline("text-generation", model={model!r}{framework})
generated = generator(prompt)

from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({model!r})
inputs = tokenizer(prompt, return_tensors="tf").input_ids

from transformers import TFAutoModelForCausalLM

model = TFAutoModelForCausalLM.from_pretrained({model!r})
outputs = model.generate(input_ids=inputs, max_new_tokens=100, do_sample=True, top_k=50, top_p=0.95)
decoded = tokenizer.batch_decode(outputs, skip_special_tokens=True)
"""

# A tiny scratch model for the instruction and chat runs.
TINY_MODEL = sets(
    "tokenizer.vocab_size=300",
    "model.config.n_layer=1",
    "model.config.n_embd=32",
    "model.config.n_head=2",
    "logging.report_to=[none]",
    "generate.max_new_tokens=4",
)


# A Hub-compatible server on 127.0.0.1 (tests/hubserver.py), and its clients' environment.
TOKEN = "hf_tfclmTestToken0123456789abcdef"


class HubServer:
    def __init__(self):
        self.process = subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "tests", "hubserver.py"),
                "--port",
                "0",
                "--token",
                TOKEN,
                "--max-seconds",
                "900",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_test/state", timeout=10) as response:
            return json.load(response)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()  # by PID: the server never gets a say
        self.process.wait(timeout=30)


def client_env(hub_url, home):
    return {
        **os.environ,
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(home),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
    }


def run(args, env, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def decoded_greedy(decoder, prompts, steps):
    """The greedy completions `tfclm serve`'s decoder gives `prompts`, decoded as one batch per batch key."""
    from tfclm.serve.engine import Row

    tokenizer = decoder.tokenizer
    stop = (tokenizer.eos_token_id,)
    made = [[] for _ in prompts]
    groups = {}
    for i, ids in enumerate(tokenizer(prompts, add_special_tokens=False)["input_ids"]):
        row = Row(ids, steps, lambda token, *_, i=i: made[i].append(token), temperature=0.0)
        groups.setdefault(decoder.key(len(ids), steps, 0, stop), []).append(row)
    for key, rows in groups.items():
        decoder.decode(key, rows)
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in made]
