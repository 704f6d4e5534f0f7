"""Packing speed: tfclm's packing against the recipe's `group_texts`, side by side in one run.

Both start from the same tokenized `datasets.Dataset` (ELI5-like documents of
random token ids, lengths drawn like answers: 20 to 400 tokens) and produce
128-token blocks with labels. The recipe's `group_texts` is exactly the
tutorial's: `sum(examples[k], [])` per `map` batch of 1,000 records, with
`num_proc`. tfclm's is one flat array cut by one reshape.

    .venv/bin/python bench/packing.py [--records 5000 20000 80000] [--num-proc 2]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfclm.data.packing import flat_tokens, pack  # noqa: E402

BLOCK = 128


def group_texts(examples):
    """The recipe's packing, verbatim but for the block size constant."""
    concatenated_examples = {k: sum(examples[k], []) for k in examples.keys()}
    total_length = len(concatenated_examples[list(examples.keys())[0]])
    if total_length >= BLOCK:
        total_length = (total_length // BLOCK) * BLOCK
    result = {k: [t[i : i + BLOCK] for i in range(0, total_length, BLOCK)] for k, t in concatenated_examples.items()}
    result["labels"] = result["input_ids"].copy()
    return result


def tokenized(records: int, seed: int = 0):
    import datasets

    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 400, records)
    ids = [rng.integers(0, 50257, n).tolist() for n in lengths]
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * n for n in lengths]})


def recipe(ds, num_proc):
    return ds.map(group_texts, batched=True, num_proc=num_proc, load_from_cache_file=False, keep_in_memory=True)


def tfclm_pack(ds):
    blocks = pack(flat_tokens(ds), BLOCK, len(ds))
    # Arrow hands a single-chunk column over without a copy, so the blocks can be
    # a view; copy them, so every size pays for blocks of its own, as the recipe does.
    blocks.input_ids = blocks.input_ids.copy()
    return blocks


_EVICT = np.zeros(64 << 20, dtype=np.int64)  # 512 MB: more than any CPU cache


def best_of(fn, repeats):
    """Best time of `repeats` calls, each on a cold cache: real data is not cache-hot, and a
    small input measured hot would look faster per token than a large one for no reason of its own."""
    best = float("inf")
    for _ in range(repeats):
        np.add(_EVICT, 1, out=_EVICT)
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[5000, 20000, 80000])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    print(
        f"{os.cpu_count()} cores; block {BLOCK}; best of {args.repeats} (tfclm: {args.repeats * 3}) cold-cache "
        f"calls; recipe with num_proc={args.num_proc}, no datasets cache"
    )
    print(f"{'records':>8} {'tokens':>11} {'recipe s':>9} {'tfclm s':>9} {'speed-up':>9}")
    rows = []
    for n in args.records:
        ds = tokenized(n)
        recipe_s = best_of(lambda ds=ds: recipe(ds, args.num_proc), args.repeats)
        tfclm_s = best_of(lambda ds=ds: tfclm_pack(ds), args.repeats * 3)
        blocks = tfclm_pack(ds)
        assert len(recipe(ds, 1)) <= len(blocks.input_ids)  # the recipe also drops a remainder per batch of 1,000
        rows.append((n, blocks.tokens, recipe_s, tfclm_s))
        print(f"{n:>8,} {blocks.tokens:>11,} {recipe_s:>9.3f} {tfclm_s:>9.5f} {recipe_s / tfclm_s:>8.0f}x")
    (n0, _, r0, t0), (n1, _, r1, t1) = rows[0], rows[-1]
    print(
        f"scaling from {n0:,} to {n1:,} records ({n1 / n0:.0f}x): recipe {r1 / r0:.1f}x the time, tfclm "
        f"{t1 / t0:.1f}x the time"
    )


if __name__ == "__main__":
    main()
