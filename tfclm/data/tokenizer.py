"""The tokenizer: the model's own, or a byte-level BPE trained on the corpus.

A trained tokenizer is cached in the output dir under a key made of the
training text and the vocabulary size, so a rerun on the same data reuses it.
"""

import hashlib
import logging
import os

from tfclm.config import Config
from tfclm.errors import ConfigError, first_line
from tfclm.files import save_pretrained_atomic

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# A pad token of its own, right after EOS (id 1), for models that take id 1 as padding whatever their config says.
PAD = "<|pad|>"
# GPT-2 takes no token_type_ids; a PreTrainedTokenizerFast returns them
# unless told which inputs the model has.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def train_bpe(texts, vocab_size: int, own_pad: bool = False):
    """A GPT-2 style byte-level BPE over `texts`, wrapped for transformers; it pads with EOS unless `own_pad`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD] if own_pad else [EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts) if hasattr(texts, "__len__") else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD if own_pad else EOS,
        model_input_names=MODEL_INPUT_NAMES,
    )


def _cache_key(texts: list[str], vocab_size: int, own_pad: bool) -> str:
    digest = hashlib.sha256(f"bpe-v1|{vocab_size}|{len(texts)}{'|pad' if own_pad else ''}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def trained_tokenizer(
    texts: list[str], vocab_size: int, cache_root: str, cache_writes: list | None = None, own_pad: bool = False
):
    """Train a BPE on `texts`, or load the one an earlier run trained on the same text.

    With `cache_writes`, the new tokenizer's save is appended there for the caller to run once the run goes
    ahead, rather than done now.
    """
    from transformers import PreTrainedTokenizerFast

    cache_dir = os.path.join(cache_root, f"bpe-{vocab_size}-{_cache_key(texts, vocab_size, own_pad)}")
    if os.path.exists(os.path.join(cache_dir, "tokenizer.json")):
        logger.info(f"tokenizer: reusing the BPE cached in {cache_dir}")
        return PreTrainedTokenizerFast.from_pretrained(cache_dir)
    tokenizer = train_bpe(texts, vocab_size, own_pad)
    logger.info(f"tokenizer: trained a byte-level BPE of {len(tokenizer)} tokens, cached in {cache_dir}")
    if cache_writes is None:
        save_pretrained_atomic([tokenizer], cache_dir)
    else:
        cache_writes.append(lambda: save_pretrained_atomic([tokenizer], cache_dir))
    return tokenizer


# The files a saved tokenizer is read from, one of which a local tokenizer dir must hold.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def pretrained_tokenizer(name_or_path: str, trust_remote_code: bool, key: str):
    from transformers import AutoTokenizer

    if os.path.isdir(name_or_path) and not any(os.path.exists(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        raise ConfigError(
            key,
            f"{name_or_path!r} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save the tokenizer the model was "
            "trained with beside it (tokenizer.save_pretrained)",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors for one cause
        raise ConfigError(
            key,
            f"could not load a tokenizer from {name_or_path!r}: {first_line(exc)}; check the id or directory",
        ) from None
    if tokenizer.eos_token is None:
        raise ConfigError(
            key, f"the tokenizer of {name_or_path!r} has no eos token; a causal LM needs one to separate documents"
        )
    if tokenizer.pad_token is None:
        # Padding only fills batches for generation and evaluation; labels of
        # padding are masked by the attention mask, never by token id.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(
    config: Config, train_texts, cache_dir: str | None = None, cache_writes: list | None = None, own_pad: bool = False
):
    """The configured tokenizer, or a BPE trained on `train_texts` (a list, cached; or an iterator, streamed).

    `own_pad` gives a trained BPE a pad token of its own at id 1.
    """
    if config.tokenizer.name_or_path:
        return pretrained_tokenizer(
            config.tokenizer.name_or_path, config.model.trust_remote_code, "tokenizer.name_or_path"
        )
    if config.model.name_or_path:
        return pretrained_tokenizer(config.model.name_or_path, config.model.trust_remote_code, "model.name_or_path")
    if not isinstance(train_texts, list):
        tokenizer = train_bpe(train_texts, config.tokenizer.vocab_size, own_pad)
        logger.info(
            f"tokenizer: trained a byte-level BPE of {len(tokenizer)} tokens on the stream (not cached: a stream has "
            f"no fingerprint short of reading it)"
        )
        return tokenizer
    return trained_tokenizer(
        train_texts,
        config.tokenizer.vocab_size,
        cache_dir or os.path.join(config.output_dir, "cache"),
        cache_writes,
        own_pad,
    )
