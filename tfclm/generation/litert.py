"""On-device export: a LiteRT (TensorFlow Lite) model with `prefill` and `decode` signatures and a KV cache that
the caller holds, in the layout LiteRT-LM and ai-edge-torch use.

Each signature takes `tokens` int32 [1, T] and `input_pos` int32 [T] (the
consecutive positions those tokens take), and per layer i the cache
`kv_cache_k_<i>` / `kv_cache_v_<i>` float32 [1, max_length, kv_heads,
head_dim]; it returns `logits` float32 [1, T, vocab] and the caches with the
new tokens' keys and values written at their positions. A cache slot at or
past `input_pos[0]` never counts, so a prompt shorter than a prefill
signature is padded at its end, and a slot is simply overwritten later.

The model runs as it does in TensorFlow: the cache goes in as transformers'
`past_key_values` (every slot, the unused ones masked), the model appends the
new tokens' keys and values, and those are written back into the cache at
`input_pos[0]`. A family whose window counts positions from the attention mask
(tfclm's Llama-likes) sees exactly the positions it would in TensorFlow.

Example (a model trained by `make train`):

    python -m tfclm export --model runs/default --to litert --output runs/default-litert --quantize int8
    python -m tfclm generate --model runs/default-litert/model.tflite --prompt "The list type" --greedy
"""

import json
import os

from tfclm.backend import dynamic_update_slice, tf
from tfclm.errors import ConfigError, EnvironmentFailure
from tfclm.model.chunked_loss import head_and_body
from tfclm.model.families import FAMILIES, family

MODEL_FILE = "model.tflite"
SPEC_FILE = "litert.json"
FORMAT = "tfclm-litert/1"
QUANTIZATIONS = ("none", "int8", "float16")
DEFAULT_MAX_LENGTH = 1024
DEFAULT_PREFILL_LENGTHS = (32, 128)


def check_family(model) -> str:
    """The cache layout of the model's family ("stacked" or "pairs"); a family without one: a one-line error."""
    found = family(model.config)
    if not found.litert_cache:
        covered = ", ".join(f.name for f in FAMILIES.values() if f.litert_cache)
        raise ConfigError(
            "--to", f"the LiteRT export covers {covered}, not {found.name}; export it with --to saved_model or pytorch"
        )
    return found.litert_cache


def check_lengths(max_length: int, prefill_lengths, limit: int | None) -> tuple[int, ...]:
    """The prefill lengths, sorted and deduplicated, once `max_length` fits the model's positions and each
    prefill fits the cache."""
    if limit is not None and max_length > limit:
        raise ConfigError("--max-length", f"{max_length} is past the model's {limit} positions; pass {limit} or less")
    lengths = tuple(sorted(set(prefill_lengths)))
    if not lengths or lengths[0] < 1:
        raise ConfigError("--prefill-lengths", "give one or more lengths of 1 or more, such as 32,128")
    if lengths[-1] > max_length:
        raise ConfigError(
            "--prefill-lengths", f"{lengths[-1]} is longer than the cache (--max-length {max_length}); pass shorter"
        )
    return lengths


class CacheShapes:
    """Layers, kv heads and head size, read off one cached step of the model itself (every family names them
    in its config differently)."""

    def __init__(self, lm, max_length: int):
        presents = lm(input_ids=tf.constant([[0]]), use_cache=True, training=False).past_key_values
        _, self.kv_heads, _, self.head_dim = (int(d) for d in presents[0][0].shape)
        self.layers = len(presents)
        self.max_length = max_length

    @property
    def per_layer(self) -> list[int]:
        return [1, self.max_length, self.kv_heads, self.head_dim]

    def names(self) -> list[str]:
        return cache_names(self.layers)


def cache_names(layers: int) -> list[str]:
    """The cache's input and output names, as LiteRT-LM names them: keys then values, layer by layer."""
    return [f"kv_cache_{kind}_{i}" for i in range(layers) for kind in "kv"]


class LiteRTModule(tf.Module):
    """The signatures' computation around a TF causal LM: `signature(T)` is a tf.function for T tokens a call."""

    def __init__(self, lm, max_length: int, layout: str):
        super().__init__()
        self.lm = lm
        self.shapes = CacheShapes(lm, max_length)
        self.layout = layout
        self.body, self.head = None, None
        found = family(lm.config)
        if found.body:
            self.body = getattr(lm, found.body)
            self.head = head_and_body(lm)[1]

    def _past(self, caches: list) -> list:
        """The cache as the model takes `past_key_values`: [batch, heads, length, dim] for keys and for values."""
        pairs = [
            (tf.transpose(caches[2 * i], [0, 2, 1, 3]), tf.transpose(caches[2 * i + 1], [0, 2, 1, 3]))
            for i in range(self.shapes.layers)
        ]
        return [tf.stack(pair) for pair in pairs] if self.layout == "stacked" else pairs

    def step(self, tokens, input_pos, caches: list) -> dict:
        length, start = tf.shape(tokens)[1], input_pos[0]
        # Slots before the first new position count; the rest hold nothing yet, or what a padded prefill left.
        filled = tf.cast(tf.range(self.shapes.max_length) < start, tf.int32)[None]
        mask = tf.concat([filled, tf.ones([1, length], tf.int32)], axis=1)
        inputs = dict(input_ids=tokens, attention_mask=mask, position_ids=input_pos[None], training=False)
        logits, presents = self._logits_and_presents(inputs, self._past(caches))
        outputs = {"logits": tf.cast(logits, tf.float32)}
        corner = tf.stack([0, start, 0, 0])
        for i, present in enumerate(presents):
            for j, kind in enumerate("kv"):
                new = tf.transpose(present[j][:, :, self.shapes.max_length :], [0, 2, 1, 3])
                # DYNAMIC_UPDATE_SLICE is a LiteRT builtin: the cache is written in place, not rebuilt.
                outputs[f"kv_cache_{kind}_{i}"] = dynamic_update_slice(caches[2 * i + j], new, corner)
        return outputs

    def _logits_and_presents(self, inputs: dict, past: list):
        """Where the head is a plain projection, the logits as one 2-D matmul with the body's hidden states: a
        tied head then reads the token embeddings' own buffer, where the model's batched matmul made the
        converter store a second copy of the table (GPT-2: 154 MB more)."""
        if self.head is None:
            out = self.lm(**inputs, past_key_values=past, use_cache=True)
            return out.logits, out.past_key_values
        out = self.body(**inputs, past_key_values=past)
        logits = tf.matmul(out[0][0], self.head.weight, transpose_b=self.head.transposed)
        for bias in self.head.biases:
            logits += tf.reshape(bias, [-1])
        return logits[None], out[1]

    def signature(self, length: int):
        specs = [
            tf.TensorSpec([1, length], tf.int32, name="tokens"),
            tf.TensorSpec([length], tf.int32, name="input_pos"),
        ]
        specs += [tf.TensorSpec(self.shapes.per_layer, tf.float32, name=name) for name in self.shapes.names()]

        def run(tokens, input_pos, *caches):
            return self.step(tokens, input_pos, list(caches))

        run.__name__ = signature_name(length)  # LiteRT names each signature after its function
        return tf.function(run, input_signature=specs, autograph=False)


def signature_name(length: int) -> str:
    return "decode" if length == 1 else f"prefill_{length}"


def convert(module: LiteRTModule, prefill_lengths, quantize: str) -> bytes:
    """The .tflite bytes: one prefill signature per length and `decode`, builtin ops only (no TF ops: the
    interpreter on a device has none)."""
    functions = [module.signature(n).get_concrete_function() for n in dict.fromkeys((*prefill_lengths, 1))]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights, float activations
    if quantize == "int8" and getattr(module.lm.config, "tie_word_embeddings", False):
        # The lookup quantizes a tied table with one scale and the head with a scale per row: two int8 copies of
        # the largest weight. One scale for every dense layer lets them share one copy (the default model's file
        # 26% of float, not 37%; its perplexity 0.08% above float's, against 0.07% below).
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises its own ConverterError, and others from MLIR
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EnvironmentFailure(f"the LiteRT converter failed: {first}") from None


def spec(module: LiteRTModule, prefill_lengths, quantize: str, tokenizer) -> dict:
    """What litert.json says of the file: enough to drive it without reading the .tflite's signatures."""
    shapes = module.shapes
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "format": FORMAT,
        "model_type": module.lm.config.model_type,
        "max_length": shapes.max_length,
        "prefill_lengths": list(prefill_lengths),
        "signatures": {signature_name(n): n for n in (*prefill_lengths, 1)},
        "layers": shapes.layers,
        "kv_heads": shapes.kv_heads,
        "head_dim": shapes.head_dim,
        "cache_shape": shapes.per_layer,
        "cache_dtype": "float32",
        "vocab_size": int(module.lm.config.vocab_size),
        "quantize": quantize,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": pad,
    }


def write_spec(path: str, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")


def read_spec(model_file: str, key: str = "--model") -> dict:
    path = os.path.join(os.path.dirname(os.path.abspath(model_file)), SPEC_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        raise ConfigError(
            key, f"{model_file!r} has no readable {SPEC_FILE} beside it; export it again with --to litert"
        ) from None
    if content.get("format") != FORMAT:
        raise ConfigError(key, f"{path!r} is not a {FORMAT} description; export the model again with --to litert")
    return content
