import numpy as np
import pytest

from tfclm.data.packing import build_blocks, pack
from tfclm.errors import ConfigError


def word_tokenizer():
    """A word-level tokenizer with known ids: <|endoftext|>=0, a=1, b=2, ... so blocks can be computed by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{chr(ord("a") + i): i + 1 for i in range(26)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )


TEXTS = ["a b c", "d e", "f g h i"]  # tokens: 1 2 3 EOS 4 5 EOS 6 7 8 9 EOS


def test_blocks_match_a_hand_computation():
    blocks = build_blocks(TEXTS, word_tokenizer(), block_size=4)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert (blocks.documents, blocks.tokens, blocks.dropped) == (3, 12, 0)
    assert blocks.attention_mask is None


def test_only_the_final_partial_block_is_dropped():
    blocks = build_blocks(TEXTS, word_tokenizer(), block_size=5)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]
    assert blocks.dropped == 2  # "i" and its EOS
    assert blocks.input_ids.size + blocks.dropped == blocks.tokens
    assert "2 tokens dropped" in blocks.summary("train")


def test_kept_remainder_is_padded_and_masked():
    blocks = build_blocks(TEXTS, word_tokenizer(), block_size=5, keep_remainder=True)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8], [9, 0, 0, 0, 0]]
    assert blocks.attention_mask.tolist() == [[1] * 5, [1] * 5, [1, 1, 0, 0, 0]]
    assert blocks.dropped == 0 and int(blocks.attention_mask.sum()) == blocks.tokens


def test_every_document_ends_with_eos_and_no_token_is_lost():
    rng = np.random.default_rng(0)
    texts = [" ".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, rng.integers(1, 30))) for _ in range(200)]
    tok = word_tokenizer()
    blocks = build_blocks(texts, tok, block_size=16, num_proc=2)
    expected = [t for text in texts for t in tok(text)["input_ids"] + [0]]
    flat = blocks.input_ids.reshape(-1).tolist()
    assert flat == expected[: len(flat)]
    assert len(expected) - len(flat) == blocks.dropped < 16
    assert flat.count(0) + expected[len(flat) :].count(0) == len(texts)


def test_too_little_text_says_how_many_tokens():
    with pytest.raises(
        ConfigError, match=r"data.block_size: the training text has 12 tokens, fewer than one block of 64"
    ):
        pack(np.arange(12, dtype=np.int32), 64, 3, "training")


def test_packing_is_linear_in_tokens():
    tokens = np.arange(1_000_000, dtype=np.int32)
    blocks = pack(tokens, 128, 1)
    assert blocks.input_ids.shape == (7812, 128) and blocks.dropped == 64
    assert blocks.input_ids[-1, -1] == 7812 * 128 - 1


def test_unpacked_documents_are_padded_or_truncated_with_padding_masked():
    from tfclm.data.pipeline import fast_dataset

    blocks = build_blocks(TEXTS, word_tokenizer(), block_size=4, pack_documents=False)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]]
    assert blocks.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert (blocks.tokens, blocks.dropped) == (12, 1)  # the last document lost its EOS to truncation
    (batch,) = list(fast_dataset(blocks, batch_size=3, shuffle=False))
    assert batch["labels"].numpy().tolist() == [
        [1, 2, 3, 0],
        [4, 5, 0, -100],
        [6, 7, 8, 9],
    ]  # EOS label kept, padding masked


@pytest.mark.parametrize("keep_remainder", [False, True])
def test_streamed_blocks_equal_built_blocks(keep_remainder):
    from tfclm.data.packing import stream_blocks

    rng = np.random.default_rng(1)
    texts = [" ".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, rng.integers(1, 40))) for _ in range(300)]
    tok = word_tokenizer()
    consumed = []

    def lazily():  # a generator: the stream is never a list
        for text in texts:
            consumed.append(1)
            yield text

    stream = stream_blocks(lazily(), tok, 16, keep_remainder=keep_remainder, chunk=32)
    first = next(stream)
    assert len(consumed) == 32  # only one chunk was read to give the first block
    streamed = [first, *stream]
    built = build_blocks(texts, tok, 16, keep_remainder=keep_remainder)
    assert np.array_equal(np.stack([ids for ids, _ in streamed]), built.input_ids)
    mask = built.attention_mask if built.attention_mask is not None else np.ones_like(built.input_ids)
    assert np.array_equal(np.stack([m for _, m in streamed]), mask)


def test_blocks_cache_round_trip_and_key(tmp_path):
    from tfclm.data.packing import blocks_key, load_blocks, save_blocks

    tok = word_tokenizer()
    train = build_blocks(TEXTS, tok, 4)
    val = build_blocks(["a b"], tok, 4, keep_remainder=True)
    path = str(tmp_path / "cache" / "blocks.npz")
    save_blocks(path, {"train": train, "validation": val})
    loaded = load_blocks(path, ("train", "validation"))
    assert loaded["train"].input_ids.tolist() == train.input_ids.tolist() and loaded["train"].attention_mask is None
    assert (
        loaded["validation"].attention_mask.tolist() == val.attention_mask.tolist() and loaded["validation"].tokens == 3
    )
    key = blocks_key(TEXTS, ["a b"], tok, 4, True)
    assert key == blocks_key(TEXTS, ["a b"], tok, 4, True)
    assert (
        len(
            {
                key,
                blocks_key(TEXTS, ["a b c"], tok, 4, True),
                blocks_key(TEXTS, ["a b"], tok, 8, True),
                blocks_key(TEXTS, ["a b"], tok, 4, False),
            }
        )
        == 4
    )


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "saved", "txt"])
def test_every_source_kind_gives_the_hand_computed_blocks(tmp_path, kind):
    """Nested records -> documents -> blocks, token by token: "a b c" "d e" "f g h i" with EOS (0) after each."""
    import json

    import datasets

    from tfclm.config import DataConfig
    from tfclm.data.sources import load_documents

    records = [{"meta": {"body": ["a b", "c"]}}, {"meta": {"body": ["d e"]}}, {"meta": {"body": ["f g", "h i"]}}]
    flat = [{"body": " ".join(r["meta"]["body"])} for r in records]
    column = "meta.body"
    if kind == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(records))
    elif kind == "parquet":
        path = tmp_path / "d.parquet"
        datasets.Dataset.from_list(records).to_parquet(str(path))
    elif kind == "saved":
        path = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(path))
    elif kind == "csv":  # a flat format: the text is a plain column
        path, column = tmp_path / "d.csv", "body"
        path.write_text("body\n" + "".join(f"{r['body']}\n" for r in flat))
    else:
        path, column = tmp_path / "d.txt", "text"
        path.write_text("".join(f"{r['body']}\n" for r in flat))
    documents = load_documents(DataConfig(dataset=str(path), text_column=column, txt_document="line"))
    assert documents == ["a b c", "d e", "f g h i"]
    blocks = build_blocks(documents, word_tokenizer(), block_size=5)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]  # boundaries and EOS
    assert blocks.dropped == 2  # "i" and its EOS: the partial final block
    from tfclm.data.pipeline import fast_dataset

    (batch,) = list(fast_dataset(blocks, batch_size=2, shuffle=False))
    assert batch["labels"].numpy().tolist() == blocks.input_ids.tolist()  # labels = input_ids, EOS included
