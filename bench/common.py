"""What the benchmarks share: the distilgpt2 architecture with random weights, and a tokenizer over its ids."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfclm  # noqa: E402,F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

VOCAB = 50257


def distilgpt2(seed: int = 0, dropout: float = 0.1, **shape):
    """GPT2Config(n_layer=6): distilgpt2's shape, 82M parameters, no download; GPT-2's dropout unless told.
    `shape` changes GPT2Config's sizes (n_layer, n_embd, n_head, n_positions)."""
    import tf_keras as keras
    from transformers import GPT2Config, TFGPT2LMHeadModel

    keras.utils.set_random_seed(seed)
    sizes = {"n_layer": 6, **shape}
    model = TFGPT2LMHeadModel(GPT2Config(**sizes, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout))
    model.build_in_name_scope()
    return model


def id_tokenizer():
    """A word-level tokenizer whose words are the ids: the model, not the tokenizer, is measured."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<|endoftext|>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
