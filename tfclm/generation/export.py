"""Ways out of TensorFlow-transformers: PyTorch weights, a SavedModel for TF Serving, LiteRT for devices.

transformers v5 has no TF classes, so a model trained with tfclm must not be
stranded there. `to_pytorch` converts the TF weights directly (numpy +
safetensors) into PyTorch's names and layouts, loadable by
`AutoModelForCausalLM.from_pretrained` with no TensorFlow installed.
`to_saved_model` writes a TensorFlow SavedModel with a `logits` and an
XLA-compiled `generate` signature, servable with no transformers at all. `to_litert` writes a LiteRT model with
a KV cache for on-device decoding. None touches the model directory it reads.
"""

import contextlib
import json
import os
import shutil
import tempfile

from tfclm.backend import tf
from tfclm.errors import ConfigError
from tfclm.files import TOKENIZER_FILES, check_apart, check_dir_target
from tfclm.generation import litert
from tfclm.generation.sampling import SamplingLogitsProcessor
from tfclm.model.adapter_files import read_adapter_config
from tfclm.model.families import family
from tfclm.model.loading import load_trained, n_positions
from tfclm.model.lora import CONFIG_FILE, is_adapter_dir, merge
from tfclm.model.pytorch_names import pytorch_state_dict


def _check_output(output: str, force: bool, model_dir: str) -> None:
    """Before anything loads: `output` is a place for a folder, apart from every folder the export reads (the
    model dir and, for a LoRA adapter dir, its base), and new unless --force."""
    check_dir_target(output, "--output", "--output")
    reads = {"the model dir": model_dir}
    if os.path.isdir(model_dir) and is_adapter_dir(model_dir):
        reads["the adapter's base model"] = read_adapter_config(model_dir, "--model")[1]
    check_apart(output, reads, "--output")
    if os.path.exists(output) and not force:
        raise ConfigError("--output", f"{output!r} already exists; choose a new path, or pass --force to replace it")


def _check_serving(model) -> None:
    found = family(model.config)
    if not found.saved_model:
        raise ConfigError(
            "--to",
            f"the SavedModel serves left-padded prompts through XLA and logits for any length, which {found.name} "
            f"cannot ({found.note}); export it with --to pytorch",
        )


@contextlib.contextmanager
def _staged(output: str):
    """A folder beside `output` to write the export into; moved into place only when all of it is written, so
    `output` is never half written (and a failed export leaves nothing)."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        yield staging
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_tokenizer(model_dir: str, target: str, tokenizer) -> None:
    """The tokenizer's files as they are; a PEFT adapter dir without them: the base's tokenizer, saved."""
    found = [name for name in TOKENIZER_FILES if os.path.exists(os.path.join(model_dir, name))]
    for name in found:
        shutil.copy2(os.path.join(model_dir, name), os.path.join(target, name))
    if not found:
        tokenizer.save_pretrained(target)


def _load(model_dir: str, merge_lora: bool):
    """The model to export: a LoRA adapter dir's base with the adapters folded in, when --merge-lora asks."""
    if merge_lora and os.path.isdir(model_dir) and not is_adapter_dir(model_dir):  # a missing dir: load_trained says
        raise ConfigError(
            "--merge-lora", f"{model_dir!r} holds no LoRA adapter ({CONFIG_FILE}); leave --merge-lora out"
        )
    if not merge_lora and os.path.isdir(model_dir) and is_adapter_dir(model_dir):
        raise ConfigError(
            "--merge-lora",
            f"{model_dir!r} is a LoRA adapter dir; add --merge-lora to export the base with the adapters folded in "
            f"(PEFT loads the adapter dir itself: PeftModel.from_pretrained(base, {model_dir!r}))",
        )
    model, tokenizer = load_trained(model_dir)
    if merge_lora:
        merge(model)
    return model, tokenizer


def to_pytorch(model_dir: str, output: str, force: bool = False, merge_lora: bool = False) -> str:
    from safetensors.numpy import save_file

    _check_output(output, force, model_dir)
    model, tokenizer = _load(model_dir, merge_lora)
    with _staged(output) as staging:
        state = pytorch_state_dict(model)
        save_file(state, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config["architectures"] = [type(model).__name__.removeprefix("TF")]
        if "lm_head.weight" in state:
            # TF XGLM keeps a head of its own while its config says tied: PyTorch would tie it back to the embeddings.
            config["tie_word_embeddings"] = False
        config.pop("transformers_version", None)
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        if os.path.exists(os.path.join(model_dir, "generation_config.json")):
            shutil.copy2(os.path.join(model_dir, "generation_config.json"), staging)
        _copy_tokenizer(model_dir, staging, tokenizer)
    return output


def to_tf(model_dir: str, output: str, force: bool = False, merge_lora: bool = False) -> str:
    """A TF save_pretrained folder (weights, config, tokenizer): with --merge-lora, a LoRA run as a full model."""
    _check_output(output, force, model_dir)
    model, tokenizer = _load(model_dir, merge_lora)
    with _staged(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return output


class ServingModule(tf.Module):
    """What the SavedModel serves: `logits`, and `generate` compiled with XLA.

    `generate` takes prompts left-padded to `prompt_length` and always runs
    `max_new_tokens` steps inside XLA (shapes must be static there); its
    `max_new_tokens` input trims the answer. `do_sample` switches between
    greedy decoding and sampling (top-k, top-p, temperature fixed at export)
    at run time: the sampling noise is scaled by it, and the filtering never
    changes the likeliest token.
    """

    def __init__(
        self,
        lm,
        prompt_length: int,
        max_new_tokens: int,
        top_k: int,
        top_p: float,
        temperature: float,
        pad_id: int,
        eos_id: int,
    ):
        super().__init__()
        self.lm = lm
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self._sampling = (top_k, top_p, temperature)
        self._ids = (pad_id, eos_id)
        ragged = tf.TensorSpec([None, None], tf.int32)
        prompts = tf.TensorSpec([None, prompt_length], tf.int32)
        self.logits = tf.function(self._logits, input_signature=[ragged, ragged])
        self._decode = tf.function(self._decode_all, jit_compile=True)
        self.generate = tf.function(
            self._generate,
            input_signature=[
                prompts,
                prompts,
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.bool),
                tf.TensorSpec([2], tf.int32),
            ],
        )

    def _logits(self, input_ids, attention_mask):
        return {
            "logits": tf.cast(
                self.lm(input_ids=input_ids, attention_mask=attention_mask, training=False).logits, tf.float32
            )
        }

    def _decode_all(self, input_ids, attention_mask, do_sample, seed):
        top_k, top_p, temperature = self._sampling
        sampler = SamplingLogitsProcessor(top_k, top_p, temperature, seed, self.prompt_length, enabled=do_sample)
        pad_id, eos_id = self._ids
        return self.lm.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            logits_processor=[sampler],
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )

    def _generate(self, input_ids, attention_mask, max_new_tokens, do_sample, seed):
        sequences = self._decode(input_ids, attention_mask, do_sample, seed)
        keep = self.prompt_length + tf.minimum(max_new_tokens, self.max_new_tokens)
        return {"sequences": sequences[:, :keep], "new_tokens": sequences[:, self.prompt_length : keep]}


SERVING_README = """# {name}: a SavedModel of a tfclm causal LM

Signatures (load with `tf.saved_model.load(path)`; no transformers needed):

- `logits(input_ids, attention_mask)`: int32 `[batch, length]` -> `logits` float32 `[batch, length, {vocab}]`.
- `generate(input_ids, attention_mask, max_new_tokens, do_sample, seed)`: prompts left-padded to
  exactly {prompt_length} tokens (pad id {pad_id}, attention mask 0 on padding); `max_new_tokens` int32
  scalar, at most {max_new_tokens}; `do_sample` bool (false: greedy; true: top-k {top_k}, top-p {top_p},
  temperature {temperature}); `seed` int32 `[2]` (the same seed gives the same text). Returns `sequences`
  `[batch, {prompt_length} + max_new_tokens]` and `new_tokens`; a finished text continues with pad id
  {pad_id} after its EOS ({eos_id}). Compiled with XLA on first use.

The tokenizer is `tokenizer.json` beside this file (`tokenizers.Tokenizer.from_file`).

Serve it with TF Serving (`tensorflow_model_server --rest_api_port=8501 --model_name={name}
--model_base_path=/models/{name}`, with this directory as `/models/{name}/1`), then:

    curl -d '{{"signature_name": "generate", "inputs": {{"input_ids": [[{example_ids}]],
      "attention_mask": [[{example_mask}]], "max_new_tokens": 20, "do_sample": false, "seed": [0, 0]}}}}' \\
      http://localhost:8501/v1/models/{name}:predict
"""


def to_saved_model(
    model_dir: str,
    output: str,
    force: bool = False,
    prompt_length: int = 64,
    max_new_tokens: int = 64,
    top_k: int = 50,
    top_p: float = 0.95,
    temperature: float = 1.0,
    merge_lora: bool = False,
) -> str:
    _check_output(output, force, model_dir)
    model, tokenizer = _load(model_dir, merge_lora)
    _check_serving(model)
    limit = n_positions(model)
    if limit is not None and prompt_length + max_new_tokens > limit:
        raise ConfigError(
            "--max-new-tokens",
            f"--prompt-length {prompt_length} plus --max-new-tokens {max_new_tokens} exceed the model's {limit} "
            f"positions; lower either",
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    module = ServingModule(
        model, prompt_length, max_new_tokens, top_k, top_p, temperature, pad_id, tokenizer.eos_token_id
    )
    with _staged(output) as staging:
        signatures = {
            "logits": module.logits.get_concrete_function(),
            "generate": module.generate.get_concrete_function(),
        }
        tf.saved_model.save(module, staging, signatures=signatures)
        _copy_tokenizer(model_dir, staging, tokenizer)
        example = [pad_id] * (prompt_length - 2) + [1, 2]
        readme = SERVING_README.format(
            name=os.path.basename(os.path.abspath(output)),
            vocab=model.config.vocab_size,
            prompt_length=prompt_length,
            max_new_tokens=max_new_tokens,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            pad_id=pad_id,
            eos_id=tokenizer.eos_token_id,
            example_ids=", ".join(map(str, example)),
            example_mask=", ".join("1" if i >= prompt_length - 2 else "0" for i in range(prompt_length)),
        )
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(readme)
    return output


def to_litert(
    model_dir: str,
    output: str,
    force: bool = False,
    max_length: int | None = None,
    prefill_lengths: tuple[int, ...] | None = None,
    quantize: str = "none",
    text_file: str | None = None,
    merge_lora: bool = False,
) -> dict:
    """`output`/model.tflite with prefill and decode signatures (see tfclm.generation.litert), its litert.json
    and the tokenizer; returns the file's size, and with held-out text the perplexity of the export against
    the TF model's on the same blocks."""
    from tfclm.generation import litert_runner

    if quantize not in litert.QUANTIZATIONS:
        raise ConfigError("--quantize", f"is one of {', '.join(litert.QUANTIZATIONS)}, not {quantize!r}")
    _check_output(output, force, model_dir)
    model, tokenizer = _load(model_dir, merge_lora)
    layout = litert.check_family(model)
    limit = n_positions(model)
    max_length = max_length or min(limit or litert.DEFAULT_MAX_LENGTH, litert.DEFAULT_MAX_LENGTH)
    if prefill_lengths is None:  # the defaults, cut to a short cache
        prefill_lengths = [min(n, max_length) for n in litert.DEFAULT_PREFILL_LENGTHS]
    lengths = litert.check_lengths(max_length, prefill_lengths, limit)
    blocks = litert_runner.held_out_blocks(model_dir, tokenizer, text_file, lengths[-1])
    module = litert.LiteRTModule(model, max_length, layout)
    content = litert.convert(module, lengths, quantize)
    report = {"bytes": len(content), "float32_weight_bytes": 4 * int(model.count_params()), "quantize": quantize}
    with _staged(output) as staging:
        path = os.path.join(staging, litert.MODEL_FILE)
        with open(path, "wb") as handle:
            handle.write(content)
        litert.write_spec(os.path.join(staging, litert.SPEC_FILE), litert.spec(module, lengths, quantize, tokenizer))
        if os.path.exists(os.path.join(model_dir, "generation_config.json")):
            shutil.copy2(os.path.join(model_dir, "generation_config.json"), staging)
        _copy_tokenizer(model_dir, staging, tokenizer)
        if blocks is not None:
            report.update(litert_runner.compare_perplexity(model, path, tokenizer, blocks))
    return report
