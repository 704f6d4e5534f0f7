"""Running a LiteRT export from Python: prefill, then decode token by token, with the TF generator's controls.

`LiteRTGenerator` answers as `Generator` does (a `Sample` per text) through
ai-edge-litert's interpreter (`pip install tfclm[litert]`). A prompt is
prefilled in chunks through the shortest signature that holds what is left
(padded at its end), then decoded one token a step. Sampling filters and
draws exactly as the TF generator does (the same seed gives the same
noise), so a float export samples the TF model's text.

Example:

    >>> from tfclm.generation.litert_runner import LiteRTGenerator  # doctest: +SKIP
    >>> runner = LiteRTGenerator("runs/default-litert/model.tflite")  # doctest: +SKIP
    >>> runner(["The list type"], do_sample=False)[0].text  # doctest: +SKIP
"""

import math
import os
import time

import numpy as np

from tfclm.config import GenerationOptions
from tfclm.errors import ConfigError, EnvironmentFailure
from tfclm.generation.litert import cache_names, read_spec, signature_name
from tfclm.generation.samples import Sample, chat_replies

# Perplexity is measured on this many blocks at most: enough to compare float and int8, quick on a phone-sized CPU.
PERPLEXITY_BLOCKS = 32


def interpreter(model_file: str, num_threads: int | None = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise EnvironmentFailure(
            "running a .tflite needs ai-edge-litert: pip install 'tfclm[litert]' (or pip install ai-edge-litert)"
        ) from None
    return Interpreter(model_path=model_file, num_threads=num_threads)


class LiteRTGenerator:
    """Generates from a `model.tflite` that `tfclm export --to litert` wrote (its litert.json and tokenizer
    beside it), one text at a time."""

    def __init__(self, model_file: str, tokenizer=None, key: str = "--model", num_threads: int | None = None):
        from transformers import AutoTokenizer

        if not os.path.isfile(model_file):
            raise ConfigError(key, f"{model_file!r} does not exist; pass the model.tflite that export wrote")
        self.spec = read_spec(model_file, key)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model_file)))
        self._interpreter = interpreter(model_file, num_threads)
        self.runners = {name: self._interpreter.get_signature_runner(name) for name in self.spec["signatures"]}
        self.pad_id = self.spec["pad_token_id"]
        self.max_length = self.spec["max_length"]

    def empty_cache(self) -> dict:
        return {name: np.zeros(self.spec["cache_shape"], np.float32) for name in cache_names(self.spec["layers"])}

    def run(self, tokens: list[int], start: int, cache: dict) -> tuple[np.ndarray, dict]:
        """Logits [len(tokens), vocab] for `tokens` at positions start..., and the cache after them; chunks
        through the shortest signature that holds what is left (or the longest), padding the last one."""
        logits = []
        while tokens:
            length = self._chunk_length(len(tokens), start)
            chunk = tokens[:length] + [self.pad_id] * (length - len(tokens[:length]))
            out = self.runners[signature_name(length)](
                tokens=np.asarray([chunk], np.int32),
                input_pos=np.arange(start, start + length, dtype=np.int32),
                **cache,
            )
            cache = {name: value for name, value in out.items() if name != "logits"}
            taken = min(length, len(tokens))
            logits.append(out["logits"][0, :taken])
            tokens, start = tokens[taken:], start + taken
        return np.concatenate(logits), cache

    def _chunk_length(self, left: int, start: int) -> int:
        fits = [n for n in self.spec["signatures"].values() if start + n <= self.max_length]
        holding = [n for n in fits if n >= left]
        return min(holding) if holding else max(fits)

    def __call__(self, prompts: list[str], stop_token_ids=(), **options) -> list[Sample]:
        opts = GenerationOptions(**options)
        opts.validate()
        for key, default in (("num_beams", 1), ("repetition_penalty", 1.0)):
            if getattr(opts, key) != default:
                raise ConfigError(key, f"the LiteRT runner decodes without it; leave {key} at {default}")
        if not prompts or any(not isinstance(p, str) or not p for p in prompts):
            raise ConfigError("prompt", "prompts must be non-empty text; pass --prompt 'Some text'")
        rows = [prompt for prompt in prompts for _ in range(opts.num_return_sequences if opts.do_sample else 1)]
        encoded = self.tokenizer(rows, add_special_tokens=False)["input_ids"]
        width = max(len(row) for row in encoded)
        if width + opts.max_new_tokens > self.max_length:
            raise ConfigError(
                "max_new_tokens",
                f"the prompt ({width} tokens) plus {opts.max_new_tokens} new tokens exceed the export's cache of "
                f"{self.max_length}; lower max_new_tokens, or export with a longer --max-length",
            )
        seed = opts.seed if opts.seed is not None else int(np.random.randint(0, 2**31 - 1))
        stop = tuple(dict.fromkeys([self.tokenizer.eos_token_id, *stop_token_ids]))
        samples = []
        for row, (prompt, ids) in enumerate(zip(rows, encoded)):
            started = time.perf_counter()
            new = self._decode(ids, opts, seed, row, stop)
            samples.append(
                Sample(
                    prompt,
                    self.tokenizer.decode(new, skip_special_tokens=True),
                    len(ids),
                    len(new),
                    time.perf_counter() - started,
                    bool(new) and new[-1] in stop,
                )
            )
        return samples

    def chat(self, conversations: list, system: str | None = None, **options) -> list[Sample]:
        """Replies to `conversations`, rendered and stopped exactly as the TF generator's."""
        return chat_replies(self, conversations, system, **options)

    def _decode(self, ids: list[int], opts: GenerationOptions, seed: int, row: int, stop: tuple) -> list[int]:
        logits, cache = self.run(list(ids), 0, self.empty_cache())
        scores, new = logits[-1], []
        while True:
            token = next_token(scores, opts, seed, row, len(new), stop)
            new.append(token)
            if token in stop or len(new) == opts.max_new_tokens:
                return new
            logits, cache = self.run([token], len(ids) + len(new) - 1, cache)
            scores = logits[-1]

    def loss(self, blocks: np.ndarray) -> tuple[float, int]:
        """Summed next-token loss and the count of predicted tokens over `blocks` [n, length]."""
        total, count = 0.0, 0
        for block in blocks:
            logits, _ = self.run([int(t) for t in block], 0, self.empty_cache())
            logits = logits[:-1].astype(np.float64)
            top = logits.max(axis=-1, keepdims=True)
            logs = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
            total -= float(logs[np.arange(len(block) - 1), block[1:]].sum())
            count += len(block) - 1
        return total, count


def next_token(scores: np.ndarray, opts: GenerationOptions, seed: int, row: int, step: int, stop: tuple) -> int:
    """The TF generator's choice from one row's scores: stops held back before min_new_tokens, then the
    likeliest token, or (sampling) tfclm's filtering and the Gumbel noise of (seed, step, row)."""
    from tfclm.backend import tf
    from tfclm.generation.sampling import counter_uniform, filter_logits, gumbel

    scores = scores.astype(np.float32).copy()
    if step < opts.min_new_tokens:
        scores[list(stop)] = -np.inf
    if not opts.do_sample:
        return int(np.argmax(scores))
    filtered = filter_logits(tf.constant(scores[None]), opts.top_k, opts.top_p, opts.temperature)
    # The TF generator draws a batch's noise at once; row r's is the r-th row of it.
    uniform = counter_uniform([row + 1, scores.shape[-1]], tf.constant([seed, 0], tf.int32), step)[row]
    return int(tf.argmax(filtered[0] + gumbel(uniform, tf.float32)))


def held_out_blocks(model_dir: str, tokenizer, text_file: str | None, length: int):
    """Blocks of `length` tokens to compare the export with the TF model on: from `text_file`, else from the
    validation split of the run's config (text data in memory); None when there is neither."""
    from tfclm import config as config_lib
    from tfclm.data import packing, sources
    from tfclm.files import read_text_file

    config_path = os.path.join(model_dir, config_lib.CONFIG_FILENAME)
    if text_file is not None:
        texts = [read_text_file(text_file)]
    elif os.path.isfile(config_path):
        config = config_lib.load_config(config_path)
        if config.data.format != "text" or config.data.streaming:
            return None
        texts = sources.train_and_validation(config.data, config.train.seed)[1]
    else:
        return None
    eos = tokenizer.eos_token_id
    flat = [token for document in packing.encode_documents(tokenizer, texts) for token in (eos, *document)]
    n = min(len(flat) // length, PERPLEXITY_BLOCKS)
    if n == 0:
        raise ConfigError("--text-file", f"the held-out text has fewer than {length} tokens; pass a longer --text-file")
    return np.asarray(flat[: n * length], np.int32).reshape(n, length)


def compare_perplexity(model, model_file: str, tokenizer, blocks: np.ndarray) -> dict:
    """Perplexity of the .tflite and of the TF model on the same blocks."""
    from tfclm.backend import tf

    litert_total, count = LiteRTGenerator(model_file, tokenizer).loss(blocks)
    tf_total = 0.0
    for block in blocks:
        logits = tf.cast(model(input_ids=tf.constant(block[None]), training=False).logits[0, :-1], tf.float64)
        tf_total += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(block[1:], logits)))
    return {
        "perplexity": math.exp(litert_total / count),
        "tf_perplexity": math.exp(tf_total / count),
        "perplexity_tokens": count,
    }
