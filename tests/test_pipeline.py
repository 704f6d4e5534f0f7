import numpy as np

from tfclm.data.packing import Blocks


def blocks(n=10, size=8, eos=0):
    ids = (np.arange(n * size, dtype=np.int32).reshape(n, size) % 7) + 1
    ids[:, 3] = eos  # every block holds an EOS at position 3
    return Blocks(ids, documents=n, tokens=n * size, dropped=0)


def gpt2_tokenizer():
    from tfclm.data.tokenizer import train_bpe

    return train_bpe(["a small text for a small tokenizer"] * 3, 270)


def test_fast_batches_follow_the_contract_and_keep_eos_labels():
    from tfclm.data.pipeline import BATCH_KEYS, fast_dataset

    data = blocks()
    train = list(fast_dataset(data, batch_size=4, shuffle=True, seed=1))
    assert len(train) == 2  # 10 blocks, batch 4: training drops the partial batch
    for batch in train:
        assert tuple(sorted(batch)) == tuple(sorted(BATCH_KEYS))
        assert batch["input_ids"].dtype.name == "int32" and batch["input_ids"].shape == (4, 8)
        assert np.array_equal(batch["labels"], batch["input_ids"])
        assert np.all(batch["labels"].numpy()[:, 3] == 0)  # EOS keeps its label
    evaluation = list(fast_dataset(data, batch_size=4, shuffle=False))
    assert [int(b["input_ids"].shape[0]) for b in evaluation] == [4, 4, 2]  # evaluation keeps every block


def test_fast_shuffle_is_seeded():
    from tfclm.data.pipeline import fast_dataset

    numbered = Blocks(np.repeat(np.arange(16, dtype=np.int32)[:, None], 8, axis=1), 16, 128, 0)  # block i holds i

    def order(seed, epochs=1, skip=0):
        batches = fast_dataset(numbered, 4, True, seed, epochs, skip)
        return [row for b in batches for row in b["input_ids"].numpy()[:, 0].tolist()]

    # Each epoch is the permutation fixed by (seed, epoch): the same seed gives the same order, others differ.
    assert order(3) == np.random.default_rng([3, 0]).permutation(16).tolist()
    assert order(3) != list(range(16)) and order(4) != order(3)
    two = order(3, epochs=2)
    assert two[16:] == np.random.default_rng([3, 1]).permutation(16).tolist() and two[16:] != two[:16]
    assert order(3, epochs=2, skip=3) == two[12:]  # a resumed run skips exactly the batches it trained on


def test_padding_of_a_kept_remainder_is_masked_in_labels():
    from tfclm.data.pipeline import fast_dataset

    ids = np.array([[5, 6, 0, 7], [8, 0, 0, 0]], dtype=np.int32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.int32)
    (batch,) = list(fast_dataset(Blocks(ids, 2, 6, 0, mask), 2, shuffle=False))
    assert batch["labels"].numpy().tolist() == [[5, 6, 0, 7], [8, 0, -100, -100]]


def test_recipe_collator_keeps_eos_labels_that_the_stock_one_masks():
    from transformers import DataCollatorForLanguageModeling

    from tfclm.data.pipeline import CausalLMCollator

    tokenizer = gpt2_tokenizer()
    eos = tokenizer.eos_token_id
    features = [{"input_ids": [5, 6, eos, 7]}, {"input_ids": [8, eos]}]
    stock = DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="tf")(features)
    assert stock["labels"].numpy().tolist()[0] == [5, 6, -100, 7]  # the recipe's bug: EOS masked
    ours = CausalLMCollator(tokenizer)(features)
    assert ours["labels"].numpy().tolist() == [[5, 6, eos, 7], [8, eos, -100, -100]]


def test_recipe_dataset_matches_the_fast_one():
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.data.pipeline import fast_dataset, recipe_dataset

    tokenizer = gpt2_tokenizer()
    model = TFGPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=16))
    data = blocks(6)
    recipe = list(recipe_dataset(model, data, tokenizer, batch_size=4, shuffle=False))
    fast = list(fast_dataset(data, batch_size=4, shuffle=False))
    assert len(recipe) == len(fast) == 2
    for a, b in zip(recipe, fast):
        for key in ("input_ids", "attention_mask", "labels"):
            assert a[key].numpy().tolist() == b[key].numpy().tolist()


def test_an_epoch_holds_whole_optimizer_steps():
    from tfclm.data.pipeline import epoch_order

    # 22 blocks in batches of 2 make 11 micro-batches: with 2 per optimizer step, each epoch keeps 10,
    # so that no step takes one micro-batch from one epoch and one from the next.
    order = epoch_order(22, 2, seed=1, epochs=2, multiple=2)
    assert order.shape == (20, 2)
    assert sorted(order[:10].ravel().tolist()) == sorted(np.random.default_rng([1, 0]).permutation(22)[:20].tolist())
