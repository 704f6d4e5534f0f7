"""Sampling text from a trained model, eagerly or compiled with XLA.

`Generator` loads nothing itself: it holds a model and tokenizer and serves
many calls. Prompts run as one left-padded batch with an attention mask.
Under XLA the prompt length is padded up to a bucket and the batch up to a
power of two, so a new prompt length inside a bucket reuses the compiled
function instead of compiling again.

Sampling with top-k runs top-p over the k survivors only: transformers' TF
top-p warper sorts the whole vocabulary at every step, which under XLA on a
CPU costs more than the model itself.
"""

import dataclasses
import logging
import os
import time
from collections import OrderedDict

import numpy as np

from tfclm.backend import tf
from tfclm.config import GenerationOptions
from tfclm.errors import ConfigError
from tfclm.files import TOKENIZER_FILES
from tfclm.generation.samples import Sample, chat_replies
from tfclm.generation.sampling import HoldStopsBack, SamplingLogitsProcessor
from tfclm.model import lora
from tfclm.model.families import family
from tfclm.model.loading import WEIGHT_FILES, load_trained, n_positions

logger = logging.getLogger(__name__)

LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _bucket(value: int, buckets) -> int:
    return next((b for b in buckets if b >= value), value)


class Generator:
    """Generates from one model and tokenizer for many calls; `xla=True` compiles once per shape bucket.

    `traces` counts how often a compiled function was traced (a compile each).
    """

    def __init__(self, model, tokenizer, xla: bool = True, length_buckets=LENGTH_BUCKETS, log=None):
        self.model = model
        self.tokenizer = tokenizer
        self.family = family(model.config)
        # Where transformers' XLA generation differs from its eager one, decode eagerly.
        self.xla = xla and self.family.xla_generate
        self.length_buckets = tuple(length_buckets)
        self.log = log or logger.info
        self.traces = 0
        self._compiled = {}
        self._shapes = set()
        self._eager_only = set()
        # Prompts are left-padded here, not by the tokenizer: the caller's tokenizer is never changed.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @staticmethod
    def _own_sampling(options: GenerationOptions) -> bool:
        """tfclm samples itself (a seed per step) except in beam search, which keeps transformers' beam sampling."""
        return options.do_sample and options.num_beams == 1

    def _sequences_per_row(self, options: GenerationOptions) -> int:
        """Sequences transformers returns for each input row: own sampling draws each sample as a row of its own."""
        return 1 if self._own_sampling(options) else options.num_return_sequences

    def _generate_kwargs(self, options: GenerationOptions, stop: tuple) -> dict:
        own = self._own_sampling(options)
        kwargs = dict(
            max_new_tokens=options.max_new_tokens,
            # Own sampling runs as greedy decoding over noised scores, one row per sample.
            do_sample=options.do_sample and not own,
            num_beams=options.num_beams,
            num_return_sequences=1 if own else options.num_return_sequences,
            repetition_penalty=options.repetition_penalty,
            pad_token_id=self.pad_id,
            eos_token_id=stop[0] if len(stop) == 1 else list(stop),
        )
        if options.do_sample and not own:
            kwargs.update(top_k=options.top_k, top_p=options.top_p, temperature=options.temperature)
        return kwargs

    def _run(self, input_ids, attention_mask, seed, options: GenerationOptions, stop: tuple):
        def generate(input_ids, attention_mask, seed):
            self.traces += 1  # Python side effect: runs once per trace, not per call
            processors = []
            if self._own_sampling(options):
                processors.append(
                    SamplingLogitsProcessor(
                        options.top_k, options.top_p, options.temperature, seed, int(input_ids.shape[1])
                    )
                )
            kwargs = self._generate_kwargs(options, stop)
            if options.min_new_tokens:
                min_length = int(input_ids.shape[1]) + options.min_new_tokens
                if len(stop) == 1:
                    kwargs["min_length"] = min_length
                else:
                    processors.insert(0, HoldStopsBack(stop, min_length))
            return self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, seed=seed, logits_processor=processors, **kwargs
            )

        # The seed is an input of the compiled function, not part of its identity: a new seed compiles nothing.
        key = (dataclasses.astuple(dataclasses.replace(options, seed=None)), stop)
        if not self.xla or key in self._eager_only:
            return generate(input_ids, attention_mask, seed)
        if key not in self._compiled:
            self._compiled[key] = tf.function(generate, jit_compile=True)
        shape = (key, tuple(input_ids.shape))
        if shape not in self._shapes:
            self._shapes.add(shape)
            self.log(
                f"generate: compiling with XLA for a batch of {input_ids.shape[0]} x {input_ids.shape[1]} prompt "
                f"tokens (once per bucket)"
            )
        from transformers.utils import logging as hf_logging

        # Tracing makes transformers warn of right-padding, seeing its own padded
        # buffer symbolically; the prompts here are left-padded.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return self._compiled[key](input_ids, attention_mask, seed)
        except (
            tf.errors.InvalidArgumentError,
            tf.errors.UnimplementedError,
            NotImplementedError,
            TypeError,
            ValueError,
        ) as exc:
            self._eager_only.add(key)
            self.log(f"generate: XLA cannot run these options ({type(exc).__name__}); running eagerly")
            return generate(input_ids, attention_mask, seed)
        finally:
            hf_logging.set_verbosity(verbosity)

    def _decode(self, encoded: list[list[int]], opts: GenerationOptions, seed: int, stop: tuple) -> list[list[int]]:
        """The new tokens of each row of `encoded`, decoded as one left-padded batch."""
        width = max(len(row) for row in encoded)
        ids = np.array([[self.pad_id] * (width - len(row)) + row for row in encoded], dtype=np.int32)
        mask = np.array([[0] * (width - len(row)) + [1] * len(row) for row in encoded], dtype=np.int32)
        if self.xla:
            limit = n_positions(self.model) or 10**9
            # A family that counts padding as positions gets no bucket padding: its answer would change.
            bucket = _bucket(width, self.length_buckets) if self.family.left_padding else width
            length = max(width, min(bucket, limit - opts.max_new_tokens))
            batch = _bucket(len(encoded), [2**i for i in range(16)])
            ids = np.pad(ids, ((0, 0), (length - width, 0)), constant_values=self.pad_id)
            mask = np.pad(mask, ((0, 0), (length - width, 0)))
            # Filler rows repeat the first prompt: their output is dropped, and a row
            # of padding alone would make transformers warn of right-padding.
            filler = np.zeros(batch - len(encoded), dtype=np.int64)
            ids, mask = np.concatenate([ids, ids[filler]]), np.concatenate([mask, mask[filler]])
        output = self._run(tf.constant(ids), tf.constant(mask), tf.constant([seed, 0], tf.int32), opts, stop)
        per_row = self._sequences_per_row(opts)
        return [[int(t) for t in row[ids.shape[1] :]] for row in output.numpy()[: len(encoded) * per_row]]

    def __call__(self, prompts: list[str], stop_token_ids=(), **options) -> list[Sample]:
        """Samples for `prompts`; each ends at EOS, at one of `stop_token_ids`, or at max_new_tokens."""
        opts = GenerationOptions(**options)
        opts.validate()
        if not prompts or any(not isinstance(p, str) or not p for p in prompts):
            raise ConfigError("prompt", "prompts must be non-empty text; pass --prompt 'Some text'")
        tok = self.tokenizer
        copies = opts.num_return_sequences if self._own_sampling(opts) else 1
        rows = [prompt for prompt in prompts for _ in range(copies)]  # own sampling draws each sample as a row
        encoded = tok(rows, add_special_tokens=False)["input_ids"]
        width = max(len(row) for row in encoded)
        limit = n_positions(self.model) or 10**9
        if width + opts.max_new_tokens > limit:
            raise ConfigError(
                "max_new_tokens",
                f"the prompt ({width} tokens) plus {opts.max_new_tokens} new tokens exceed the model's "
                f"{limit} positions; lower max_new_tokens or shorten the prompt",
            )
        seed = opts.seed if opts.seed is not None else int(np.random.randint(0, 2**31 - 1))
        stop = tuple(dict.fromkeys([tok.eos_token_id, *stop_token_ids]))
        # Where padding would shift positions, prompts of one length make a batch of their own.
        groups = {0: list(range(len(rows)))}
        if not self.family.left_padding:
            groups = {}
            for row, tokens in enumerate(encoded):
                groups.setdefault(len(tokens), []).append(row)
        per_output = self._sequences_per_row(opts)
        new_tokens = [None] * (len(rows) * per_output)
        started = time.perf_counter()
        for members in groups.values():
            decoded = self._decode([encoded[row] for row in members], opts, seed, stop)
            for position, row in enumerate(members):
                for k in range(per_output):
                    new_tokens[row * per_output + k] = decoded[position * per_output + k]
        seconds = time.perf_counter() - started
        samples = []
        for row, new in enumerate(new_tokens):
            prompt_index = row // opts.num_return_sequences
            ends = [k for k, token in enumerate(new) if token in stop]
            stopped = bool(ends)
            if stopped:
                new = new[: ends[0] + 1]
            prompt_tokens = len(encoded[row if copies > 1 else prompt_index])
            samples.append(
                Sample(
                    prompts[prompt_index],
                    tok.decode(new, skip_special_tokens=True),
                    prompt_tokens,
                    len(new),
                    seconds,
                    stopped,
                )
            )
        return samples

    def chat(self, conversations: list, system: str | None = None, **options) -> list[Sample]:
        """Replies to `conversations` (each a user's text, or a list of {role, content} turns so far), rendered
        with the tokenizer's chat template and stopped at its end-of-turn token; `system` opens each one that
        has no system turn."""
        return chat_replies(self, conversations, system, **options)


def generate_samples(model, tokenizer, prompts: list[str], xla: bool = False, **options) -> list[Sample]:
    """One-off generation; for many calls keep a `Generator`."""
    return Generator(model, tokenizer, xla=xla)(prompts, **options)


# Loaded directories, least recently used first: a few models at most stay in memory.
_GENERATORS: OrderedDict = OrderedDict()
CACHED_MODELS = 4


def _dir_fingerprint(model_dir: str) -> tuple:
    """What changes when a directory is trained again: its weight and tokenizer files' sizes and times."""
    names = (*WEIGHT_FILES, "config.json", *TOKENIZER_FILES)
    names += (lora.CONFIG_FILE, lora.WEIGHTS_FILE)  # a LoRA run's dir: its adapters are its weights
    found = []
    for name in names:
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            stat = os.stat(path)
            found.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _cached_generator(model_dir: str, xla: bool) -> Generator:
    key = (os.path.realpath(model_dir), xla)
    fingerprint = _dir_fingerprint(model_dir)
    cached = _GENERATORS.get(key)
    if cached is None or cached[0] != fingerprint:
        _GENERATORS[key] = (fingerprint, Generator(*load_trained(model_dir, key="model_or_dir"), xla=xla))
    _GENERATORS.move_to_end(key)
    while len(_GENERATORS) > CACHED_MODELS:
        _GENERATORS.popitem(last=False)
    return _GENERATORS[key][1]


def generate(model_or_dir, prompts, xla: bool = True, **options) -> list[str]:
    """Texts (prompt + completion) for `prompts`; a directory's model and tokenizer are loaded once and kept.

    `model_or_dir` is a tfclm output dir, a LiteRT export's model.tflite, a `Generator`, or a `(model, tokenizer)`
    pair.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    return [sample.text for sample in _generator_of(model_or_dir, xla)(list(prompts), **options)]


def _generator_of(model_or_dir, xla: bool):
    from tfclm.generation.litert_runner import LiteRTGenerator  # it builds on this module

    if isinstance(model_or_dir, (Generator, LiteRTGenerator)):
        return model_or_dir
    if isinstance(model_or_dir, tuple):
        return Generator(*model_or_dir, xla=xla)
    path = os.path.expanduser(str(model_or_dir))
    if path.endswith(".tflite"):
        return LiteRTGenerator(path, key="model_or_dir")
    return _cached_generator(path, xla)


def chat_reply(model_or_dir, conversation, system: str | None = None, xla: bool = True, **options) -> str:
    """The assistant's reply to `conversation` (a user's text or a list of {role, content} turns)."""
    return _generator_of(model_or_dir, xla).chat([conversation], system=system, **options)[0].completion
