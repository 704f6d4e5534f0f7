"""Decoding a batch token by token, so that each token reaches its request as it is made.

transformers' `generate` writes a whole answer in one call; a server streams.
`Decoder` runs the two steps of transformers' XLA loop as compiled functions of
their own: `prefill` reads the prompts into a key/value cache padded to the
batch's length, `step` adds one token to every row. Shapes come in buckets
(prompt length, new-token budget, batch size), so after the first batch of a
bucket nothing compiles.

What may differ between requests is an input, not part of a compiled function:
each row's temperature (0: greedy), top_p and seed. Its noise comes from its own
seed (`sampling.row_uniform`), so a row decodes what it would alone, whichever
rows share its batch. top_k (a static size) and the stop tokens are part of the
batch's key. Families whose XLA generation differs from their eager one
(`Family.xla_generate`) decode eagerly, step by step, as transformers' eager loop.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfclm.backend import tf
from tfclm.generation.generator import LENGTH_BUCKETS, _bucket
from tfclm.generation.sampling import filter_logits, gumbel, row_uniform
from tfclm.model.families import family
from tfclm.model.loading import n_positions

NEW_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TOP_LOGPROBS = 5  # the most alternatives a token's logprobs list (OpenAI's own limit)


@dataclass
class Row:
    """One sequence to decode: a prompt's token ids and its own settings.

    `emit(token, logprob, top_ids, top_logprobs, last)` takes each new token; it
    returns False when the row should stop early (a stop string, a client gone).
    """

    ids: list
    max_new: int
    emit: Callable
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: tuple = (0, 0)
    made: int = 0
    done: bool = False


@dataclass(frozen=True)
class BatchKey:
    """What rows must share to decode in one batch: the compiled shapes, top_k and the tokens that end a row."""

    length: int
    new: int
    top_k: int
    stop: tuple


class Decoder:
    """Decodes batches of `Row`s from one model; `traces` counts compiles (one per new shape)."""

    def __init__(self, model, tokenizer, xla: bool = True, length_buckets=LENGTH_BUCKETS):
        self.model = model
        self.tokenizer = tokenizer
        self.family = family(model.config)
        self.compiled = xla and self.family.xla_generate
        self.length_buckets = tuple(length_buckets)
        self.limit = n_positions(model) or 10**9
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # transformers' own rule (TFGenerationMixin.greedy_search): GPT-2's and CTRL's caches hold the batch second.
        self.cache_batch_axis = 1 if any(name in str(model) for name in ("TFGPT2", "TFCTRL")) else 0
        self.traces = 0
        self._functions = {}

    def key(self, prompt_tokens: int, max_new: int, top_k: int, stop: tuple) -> BatchKey:
        """The batch a row of this many prompt tokens and new tokens decodes in (the caller checked the sum fits)."""
        new = max(max_new, min(_bucket(max_new, NEW_TOKEN_BUCKETS), self.limit - prompt_tokens))
        length = prompt_tokens
        if self.compiled and self.family.left_padding:
            length = max(prompt_tokens, min(_bucket(prompt_tokens, self.length_buckets), self.limit - new))
        return BatchKey(length, new, top_k, tuple(stop))

    def decode(self, key: BatchKey, rows: list) -> None:
        """Decode `rows` (all of `key`) until each has ended at a stop token, its max_new, or its emit's word."""
        for _ in self.steps(key, rows):
            pass

    def steps(self, key: BatchKey, rows: list):
        """`decode`, one token a row at a time: a generator that yields after each, so that several batches can
        take turns on one thread."""
        size = _bucket(len(rows), [2**i for i in range(16)]) if self.compiled else len(rows)
        rows = rows + [dataclasses.replace(rows[0], emit=None, done=True) for _ in range(size - len(rows))]
        ids = np.array([[self.pad_id] * (key.length - len(r.ids)) + list(r.ids) for r in rows], dtype=np.int32)
        mask = np.array([[0] * (key.length - len(r.ids)) + [1] * len(r.ids) for r in rows], dtype=np.int32)
        nucleus = any(r.top_p < 1.0 for r in rows)
        params = (
            tf.constant([r.temperature if r.temperature > 0 else 1.0 for r in rows], tf.float32),
            tf.constant([r.top_p for r in rows], tf.float32),
            tf.constant([r.temperature == 0 for r in rows]),
            tf.constant([list(r.seed) for r in rows], tf.int32),
        )
        prefill, step = self._steps(key, size, nucleus)
        picked, state = prefill(tf.constant(ids), tf.constant(mask), params)
        for index in range(1, key.new + 1):
            if not self._hand_out(picked, rows, key.stop) or index == key.new:
                return
            yield
            picked, state = step(picked[0], state, tf.constant(key.length + index, tf.int32), index, params)

    @staticmethod
    def _hand_out(picked, rows, stop) -> bool:
        """Give each live row its token; whether any row goes on."""
        tokens, logprobs, top_logprobs, top_ids = (t.numpy() for t in picked)
        for i, row in enumerate(rows):
            if row.done:
                continue
            token = int(tokens[i])
            row.made += 1
            last = token in stop or row.made >= row.max_new
            wanted = row.emit(token, float(logprobs[i]), top_ids[i].tolist(), top_logprobs[i].tolist(), last)
            row.done = last or wanted is False
        return not all(row.done for row in rows)

    def _steps(self, key: BatchKey, size: int, nucleus: bool):
        """(prefill, step) for this key and batch size, compiled once."""
        fkey = (key.length, key.new, key.top_k, size, nucleus)
        if fkey not in self._functions:
            prefill, step = (self._compiled_steps if self.compiled else self._eager_steps)(key, size, nucleus)
            self._functions[fkey] = (prefill, step)
        return self._functions[fkey]

    def _pick(self, logits, params, index, top_k: int, nucleus: bool):
        """Each row's next token (greedy rows take the likeliest), its logprob and the likeliest alternatives."""
        temperature, top_p, greedy, seeds = params
        logits = tf.cast(logits, tf.float32)
        filtered = filter_logits(logits, top_k, top_p[:, None] if nucleus else 1.0, temperature[:, None])
        noise = gumbel(row_uniform(seeds, index, int(logits.shape[-1])), filtered.dtype)
        noise = noise * (1.0 - tf.cast(greedy, filtered.dtype))[:, None]
        tokens = tf.argmax(filtered + noise, axis=-1, output_type=tf.int32)
        logprobs = tf.nn.log_softmax(logits, axis=-1)
        top_logprobs, top_ids = tf.math.top_k(logprobs, k=min(TOP_LOGPROBS, int(logits.shape[-1])))
        chosen = tf.gather(logprobs, tokens, axis=1, batch_dims=1)
        return tokens, chosen, top_logprobs, top_ids

    def _compiled_steps(self, key: BatchKey, size: int, nucleus: bool):
        """transformers' XLA loop body, split at its first call: the cache is padded to length + new once."""
        model, max_length = self.model, key.length + key.new

        def update(outputs, kwargs, cur_len):
            return model._update_model_kwargs_for_xla_generation(
                model_outputs=outputs,
                model_kwargs=kwargs,
                cur_len=cur_len,
                max_length=max_length,
                batch_size=size,
                is_encoder_decoder=False,
                batch_axis=self.cache_batch_axis,
            )

        def prefill(ids, mask, params):
            self.traces += 1  # Python side effect: runs once per trace
            kwargs = {"attention_mask": mask}
            outputs = model(**model.prepare_inputs_for_generation(ids, use_cache=True, **kwargs), return_dict=True)
            picked = self._pick(outputs.logits[:, -1], params, 0, key.top_k, nucleus)
            return picked, update(outputs, kwargs, key.length + 1)

        def step(tokens, kwargs, cur_len, index, params):
            self.traces += 1
            inputs = model.prepare_inputs_for_generation(tokens[:, None], use_cache=True, **kwargs)
            outputs = model(**inputs, return_dict=True)
            picked = self._pick(outputs.logits[:, -1], params, index, key.top_k, nucleus)
            return picked, update(outputs, dict(kwargs), cur_len + 1)

        compiled_step = tf.function(step, jit_compile=True)
        return (
            tf.function(prefill, jit_compile=True),
            lambda tokens, kwargs, cur_len, index, params: compiled_step(
                tokens, kwargs, cur_len, tf.constant(index, tf.int32), params
            ),
        )

    def _eager_steps(self, key: BatchKey, size: int, nucleus: bool):
        """transformers' eager loop body: a cache that grows, or the whole sequence again where there is none.
        Its state is (the model's kwargs, the ids so far)."""
        model = self.model

        def forward(ids, kwargs, index, params):
            outputs = model(**model.prepare_inputs_for_generation(ids, use_cache=True, **kwargs), return_dict=True)
            picked = self._pick(outputs.logits[:, -1], params, index, key.top_k, nucleus)
            kwargs = model._update_model_kwargs_for_generation(outputs, kwargs, is_encoder_decoder=False)
            if kwargs.get("past_key_values") is None:
                kwargs.pop("past_key_values", None)
            return picked, kwargs

        def prefill(ids, mask, params):
            self.traces += 1
            picked, kwargs = forward(ids, {"attention_mask": mask}, 0, params)
            return picked, (kwargs, ids)

        def step(tokens, state, cur_len, index, params):
            kwargs, ids = state
            ids = tf.concat([ids, tokens[:, None]], axis=1)
            picked, kwargs = forward(ids if "past_key_values" not in kwargs else ids[:, -1:], kwargs, index, params)
            return picked, (kwargs, ids)

        return prefill, step
