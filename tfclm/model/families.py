"""What tfclm knows about each TF causal-LM family, as data: one row per `model_type`.

Every rule that differs between architectures lives here, and the code asks
the table (`family(config)`) instead of testing model types itself. The
family table of docs/reference/families.md is rendered from these rows (`render_markdown`), and
tests/test_families.py checks each claim on a tiny random model of the family.

The claims were measured on transformers 4.52 TF classes:
- `left_padding`: a left-padded prompt decodes as it would alone. Families whose
  `prepare_inputs_for_generation` derives position ids from the attention mask
  (GPT-2, GPT-J, CTRL, XGLM, Mistral) or whose positions skip padding (OPT) do;
  OpenAI GPT passes no attention mask at all, and the BERT-likes count padding
  as positions. Where it is False, prompts are batched by length instead.
- `xla_generate`: transformers' XLA generation gives the eager answer. The
  BERT-likes take their position from the length of the (preallocated) cache
  under XLA, and OpenAI GPT has no cache, so those decode eagerly.
- `fp32_only`: Mistral and CTRL build their attention masks in float32 and
  fail inside TensorFlow under a bf16 or fp16 policy.
"""

from dataclasses import dataclass, field

from tfclm.errors import ConfigError

GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
OPT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
BERT_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # Phi-3 fuses q/k/v and gate/up
OWN_CLASSES = "tfclm's own TF classes (transformers has none): transformers' TF API loads them after `import tfclm`"
OWN_MISTRAL = (
    "tfclm's own TF classes, in place of transformers' TF Mistral (whose float32 mask fails under bf16 and fp16): "
    "transformers' TF API loads them after `import tfclm`"
)
# The Llama-likes whose head does more after the vocabulary projection: the chunked loss is refused for them.
SOFTCAPPED = "may soft-cap the logits after the vocabulary projection (final_logit_softcapping)"
HEAD_AFTER_PROJECTION = {
    "gemma2": SOFTCAPPED,
    "gemma3_text": SOFTCAPPED,
    "granite": "divides the logits by logits_scaling after the vocabulary projection",
}
MASK_IN_FLOAT32 = "its TF attention mask is built in float32 and fails inside TensorFlow under bf16 and fp16"
# The BERT-likes see later tokens unless built as decoders.
AS_DECODER = {"is_decoder": True}


@dataclass(frozen=True)
class Family:
    model_type: str
    name: str
    positions: str | None = "max_position_embeddings"  # the config attribute with the positions limit; None: none
    positions_after_pad: bool = False  # RoBERTa-likes number positions from the pad id + 1
    pad_id: int | None = None  # the id the TF class takes as padding whatever its config says
    left_padding: bool = True
    xla_generate: bool = True
    any_length_graph: bool = True  # traces with an unknown sequence length (the SavedModel's `logits` needs it)
    fp32_only: str = ""  # why bf16 and fp16 fail; empty: they work
    causal_settings: dict = field(default_factory=dict)  # config values without which the model sees ahead
    scratch_embeddings_std: str | None = None  # a config attribute to draw scratch token embeddings with
    lora_targets: tuple[str, ...] = ()
    body: str = ""  # the main layer under the LM head, for the chunked loss; empty: the head is more than a projection
    head_extra: str = "transforms the hidden states before the vocabulary projection"  # what more, when body is empty
    blocks: str = ""  # the path of the transformer blocks, for recomputation; empty: not supported
    block_outputs: int = 2  # how many values a block returns (its caller unpacks them)
    refused: str = ""  # why tfclm does not train it; empty: it does
    # How the TF class takes its cache, for the LiteRT export: "stacked" (GPT-2's [2, batch, heads, length, dim]
    # a layer) or "pairs" (keys and values apart); empty: no LiteRT export.
    litert_cache: str = ""
    tfclm_classes: bool = False  # the TF classes are tfclm's (tfclm.model.llama): `import tfclm` registers them
    note: str = ""

    @property
    def saved_model(self) -> bool:
        """The SavedModel serves left-padded prompts under XLA, and logits for any length."""
        return self.left_padding and self.xla_generate and self.any_length_graph

    def positions_limit(self, config) -> int | None:
        if self.positions is None:
            return None
        limit = getattr(config, self.positions, None)
        if limit is None:
            return None
        if self.positions_after_pad:
            limit -= (self.pad_id if self.pad_id is not None else config.pad_token_id or 0) + 1
        return int(limit)


def _bert_like(model_type: str, name: str, roberta: bool) -> Family:
    return Family(
        model_type,
        name,
        positions_after_pad=roberta,
        # TF's RoBERTa embeddings hard-code padding_idx = 1 and skip that id when they number positions.
        pad_id=1 if roberta else None,
        left_padding=False,
        xla_generate=False,
        causal_settings=AS_DECODER,
        lora_targets=BERT_TARGETS,
        note="built with is_decoder: true (without it, it sees later tokens)"
        + ("; id 1 is padding, so a trained tokenizer puts its pad token there" if roberta else ""),
    )


FAMILIES = {
    f.model_type: f
    for f in (
        Family(
            "gpt2",
            "GPT-2",
            blocks="transformer.h",
            block_outputs=2,
            positions="n_positions",
            lora_targets=GPT2_TARGETS,
            body="transformer",
            litert_cache="stacked",
        ),
        Family(
            "gpt-sw3",
            "GPT-SW3",
            blocks="transformer.h",
            block_outputs=2,
            positions="n_positions",
            lora_targets=GPT2_TARGETS,
            body="transformer",
            note="GPT-2's classes",
        ),
        Family(
            "openai-gpt",
            "OpenAI GPT",
            blocks="transformer.h",
            block_outputs=2,
            body="transformer",
            positions="n_positions",
            left_padding=False,
            xla_generate=False,
            lora_targets=GPT2_TARGETS,
            note="its generation passes no attention mask and keeps no cache",
        ),
        Family(
            "gptj",
            "GPT-J",
            blocks="transformer.h",
            block_outputs=2,
            body="transformer",
            positions="n_positions",
            lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
        ),
        Family(
            "opt",
            "OPT",
            blocks="model.decoder.layers",
            block_outputs=3,
            body="model",
            scratch_embeddings_std="init_std",
            lora_targets=OPT_TARGETS,
            note="scratch embeddings drawn with init_std (TF OPT draws them with the pad id as the spread)",
        ),
        Family(
            "xglm",
            "XGLM",
            blocks="model.layers",
            block_outputs=4,
            body="model",
            scratch_embeddings_std="init_std",
            any_length_graph=False,
            lora_targets=OPT_TARGETS,
            note="scratch embeddings drawn with init_std (TF XGLM draws them with the pad id as the spread); no "
            "SavedModel: its TF causal mask needs a known sequence length",
        ),
        *(
            Family(
                model_type,
                name,
                blocks="model.layers",
                block_outputs=2,
                body="" if model_type in HEAD_AFTER_PROJECTION else "model",
                head_extra=HEAD_AFTER_PROJECTION.get(model_type, Family.head_extra),
                lora_targets=PHI3_TARGETS if model_type == "phi3" else LLAMA_TARGETS,
                tfclm_classes=True,
                litert_cache="pairs",
                note=OWN_MISTRAL if model_type == "mistral" else OWN_CLASSES,
            )
            for model_type, name in (
                ("llama", "Llama"),
                ("mistral", "Mistral"),
                ("qwen2", "Qwen 2"),
                ("qwen3", "Qwen 3"),
                ("gemma", "Gemma"),
                ("gemma2", "Gemma 2"),
                ("gemma3_text", "Gemma 3 (text)"),
                ("phi3", "Phi-3"),
                ("olmo2", "OLMo 2"),
                ("granite", "Granite"),
            )
        ),
        Family(
            "ctrl",
            "CTRL",
            blocks="transformer.h",
            block_outputs=2,
            body="transformer",
            positions="n_positions",
            fp32_only=MASK_IN_FLOAT32,
            lora_targets=("Wq", "Wk", "Wv", "dense", "ffn.0", "ffn.2"),
        ),
        _bert_like("bert", "BERT", roberta=False),
        _bert_like("rembert", "RemBERT", roberta=False),
        _bert_like("roberta", "RoBERTa", roberta=True),
        _bert_like("roberta-prelayernorm", "RoBERTa-PreLayerNorm", roberta=True),
        _bert_like("camembert", "CamemBERT", roberta=True),
        _bert_like("xlm-roberta", "XLM-RoBERTa", roberta=True),
        Family(
            "roformer",
            "RoFormer",
            refused="its TF causal LM attends to later tokens even with is_decoder: true, and transformers "
            "cannot generate with it",
        ),
        Family(
            "xlnet",
            "XLNet",
            positions=None,
            refused="its TF generation predicts from the query stream, which causal-LM training leaves untrained",
        ),
        Family(
            "transfo-xl",
            "Transformer-XL",
            positions=None,
            refused="deprecated in transformers; its TF model takes no attention mask and returns no logits",
        ),
        Family(
            "xlm",
            "XLM",
            refused="its TF model fails whenever an attention mask is passed (transformers' bug: 'alen')",
        ),
    )
}

TRAINED = tuple(t for t, f in FAMILIES.items() if not f.refused)


def remote_code_family(model_type: str) -> Family:
    """A model whose code comes with it: nothing is known, so generation takes the safe way (by length, eager)."""
    return Family(model_type, model_type, left_padding=False, xla_generate=False, note="remote code, untested")


def lookup(model_type: str, key: str, trust_remote_code: bool = False) -> Family:
    """The family of `model_type`; a family tfclm refuses, or one it does not know, is a one-line error.

    With `trust_remote_code` an unknown type is the model's own code, and is taken as it comes.
    """
    found = FAMILIES.get(model_type)
    if found is None:
        if trust_remote_code:
            return remote_code_family(model_type)
        raise ConfigError(
            key,
            f"tfclm does not know the {model_type!r} architecture; use one of {', '.join(TRAINED)} (or a model "
            f"with its own code and model.trust_remote_code: true)",
        )
    if found.refused:
        raise ConfigError(key, f"{found.name} is not supported: {found.refused}; use one of {', '.join(TRAINED)}")
    return found


def check(
    model_type: str,
    key: str,
    precision: str = "fp32",
    trust_remote_code: bool = False,
    chunked_loss: bool = False,
    recompute: bool = False,
) -> Family:
    """The family, once it is known to train at `precision` (and with the chunked loss and recomputation, if
    asked)."""
    found = lookup(model_type, key, trust_remote_code)
    if recompute and not found.blocks:
        raise ConfigError(
            "train.recompute",
            f"tfclm does not know how to find {found.name}'s transformer blocks; set train.recompute to none",
        )
    if chunked_loss and not found.body:
        raise ConfigError(
            "train.loss_chunk_tokens",
            f"{found.name}'s LM head {found.head_extra}, so tfclm cannot split it by tokens; set "
            f"train.loss_chunk_tokens to 0",
        )
    if precision != "fp32" and found.fp32_only:
        raise ConfigError(
            "train.precision", f"{found.name} trains in fp32 only: {found.fp32_only}; set train.precision to fp32"
        )
    return found


def family(config) -> Family:
    """The row for a loaded model's config; a model type not in the table is remote code."""
    return FAMILIES.get(config.model_type) or remote_code_family(config.model_type)


README_START = "<!-- families:start (generated by `python -m tfclm families --markdown`) -->"
README_END = "<!-- families:end -->"
COLUMNS = (
    "family (`model_type`)",
    "trains in",
    "chunked loss, recompute",
    "batched generation",
    "export",
    "LoRA targets",
    "notes",
)


def _row(f: Family) -> tuple[str, ...]:
    name = f"{f.name} (`{f.model_type}`)"
    if f.refused:
        return (name, "refused", "", "", "", "", f.refused)
    precision = "fp32" if f.fp32_only else "fp32, bf16, fp16"
    batched = f"{'left-padded' if f.left_padding else 'by prompt length'}, {'XLA' if f.xla_generate else 'eager'}"
    export = ", ".join(["PyTorch"] + ["SavedModel"] * f.saved_model + ["LiteRT"] * bool(f.litert_cache))
    notes = "; ".join(part for part in (f.note, f.fp32_only and f"fp32 only: {f.fp32_only}") if part)
    chunked = f"{'yes' if f.body else 'no'}, {'yes' if f.blocks else 'no'}"
    return (name, precision, chunked, batched, export, ", ".join(f"`{t}`" for t in f.lora_targets), notes)


def render_markdown() -> str:
    """The family table of docs/reference/families.md."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(f)) + " |" for f in FAMILIES.values()]
    return "\n".join(lines) + "\n"


def render_text() -> str:
    """One paragraph a family, for `python -m tfclm families`."""
    out = []
    for row in map(_row, FAMILIES.values()):
        name, details = row[0].replace("`", ""), [f"{k}: {v}" for k, v in zip(COLUMNS[1:], row[1:]) if v]
        out.append(f"{name}\n" + "".join(f"    {line.replace('`', '')}\n" for line in details))
    return "".join(out)
