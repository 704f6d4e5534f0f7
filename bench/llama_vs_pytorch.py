"""tfclm's TF Llama against PyTorch transformers' Llama on this CPU, side by side in one run.

A Llama-architecture model of distilgpt2's size (6 layers x 768, 12 query heads and 4 key/value heads,
a SwiGLU MLP of 2,048, distilgpt2's 50,257-token vocabulary, tied embeddings; random weights) at batch
16 x 128 on random token blocks:

- training: tfclm's `CausalLMTrainer` in bf16 (mixed bfloat16, its defaults: the LM head in closed form,
  fused activations and norms) against PyTorch's `LlamaForCausalLM` under `torch.autocast("cpu",
  torch.bfloat16)` with `torch.optim.AdamW`, both at learning rate 2e-5 and weight decay 0.01;
- generation: batch-1 greedy decoding of `--new-tokens` tokens from a 16-token prompt, tfclm's XLA generator
  in float32 against PyTorch's `generate` in float32 (its KV cache).

Each variant runs in a process of its own (peak resident memory its own), the two of a pair taking turns step
by step (bench/train.py's workers), `--steps` steps each a round, `--rounds` rounds; a row prints the median
tokens/s over its rounds with their spread, and tfclm's ratio to PyTorch in the same rounds with its spread.

    .venv/bin/python bench/llama_vs_pytorch.py [--steps 5] [--rounds 3] [--warmup 2] [--new-tokens 32]
"""

import argparse
import os
import sys

import numpy as np
from train import Worker, serve, spread

import common  # noqa: F401  - tfclm first: TF_USE_LEGACY_KERAS before TensorFlow loads

SHAPE = dict(
    vocab_size=50257, hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
    num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
)  # fmt: skip
PROMPT = 16


def tfclm_train(blocks, batch):
    from train import one_step
    from transformers import LlamaConfig

    from tfclm.backend import keras
    from tfclm.config import TrainConfig
    from tfclm.data.packing import Blocks
    from tfclm.data.pipeline import fast_dataset
    from tfclm.model.llama.modeling import TFLlamaForCausalLM
    from tfclm.training.optimizer import make_optimizer
    from tfclm.training.trainer import CausalLMTrainer, set_precision

    set_precision("bf16")
    try:
        keras.utils.set_random_seed(0)
        model = TFLlamaForCausalLM(LlamaConfig(**SHAPE))
        model.build_in_name_scope()
        trainer = CausalLMTrainer(model, seed=0)
        trainer.compile(optimizer=make_optimizer(TrainConfig(learning_rate=2e-5, weight_decay=0.01), model, 10**6))
        step = one_step(trainer, fast_dataset(Blocks(blocks, len(blocks), blocks.size, 0), batch, shuffle=True, seed=0))
        step()
        return step
    finally:
        keras.mixed_precision.set_global_policy("float32")


def torch_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SHAPE))


def torch_train(blocks, batch):
    from peers.worker import torch_train

    return torch_train(torch_model(), blocks, batch, autocast=True)


def tfclm_generate(blocks, batch, new_tokens):
    from transformers import LlamaConfig

    from tfclm.backend import keras
    from tfclm.generation.generator import Generator
    from tfclm.model.llama.modeling import TFLlamaForCausalLM

    from common import id_tokenizer

    keras.utils.set_random_seed(0)
    model = TFLlamaForCausalLM(LlamaConfig(**SHAPE))
    tokenizer = id_tokenizer()
    generator = Generator(model, tokenizer, xla=True, log=lambda line: None)
    prompt = " ".join(f"w{i}" for i in blocks[0, :PROMPT])
    return lambda: generator([prompt], do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def torch_generate(blocks, batch, new_tokens):
    from peers.worker import torch_generate

    return torch_generate(torch_model(), blocks[:1, :PROMPT], new_tokens)


NEW_TOKENS = int(os.environ.get("TFCLM_BENCH_NEW_TOKENS", "32"))
VARIANTS = {
    "PyTorch bf16 autocast, training": torch_train,
    "tfclm bf16, training": tfclm_train,
    "PyTorch fp32, greedy batch 1": lambda blocks, batch: torch_generate(blocks, batch, NEW_TOKENS),
    "tfclm fp32 XLA, greedy batch 1": lambda blocks, batch: tfclm_generate(blocks, batch, NEW_TOKENS),
}
PAIRS = (
    ("PyTorch bf16 autocast, training", "tfclm bf16, training"),
    ("PyTorch fp32, greedy batch 1", "tfclm fp32 XLA, greedy batch 1"),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps a variant a round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, in each process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="tokens a generation step adds")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.warmup, args.batch, args.block, VARIANTS)
    os.environ["TFCLM_BENCH_NEW_TOKENS"] = str(args.new_tokens)
    print(
        f"{os.cpu_count()} cores; Llama 6 x 768 (GQA 12/4), batch {args.batch} x {args.block} for training, "
        f"{args.new_tokens} new tokens for generation; {args.rounds} rounds of {args.steps} steps, in turns"
    )
    print(f"{'variant':<34} {'tokens/s':>9} {'spread':>7} {'tfclm / PyTorch':>16} {'spread':>7} {'peak MB':>8}")
    for torch_name, tfclm_name in PAIRS:
        tokens = args.new_tokens if "greedy" in torch_name else args.batch * args.block
        shape = (args.warmup, args.batch, args.block)
        workers = [Worker(name, *shape, script=__file__) for name in (torch_name, tfclm_name)]
        rounds = []
        for _ in range(args.rounds):
            seconds = {w.name: [] for w in workers}
            for step in range(args.steps):
                for worker in workers[:: 1 if step % 2 else -1]:
                    seconds[worker.name].append(worker.step())
            rounds.append({name: tokens / float(np.median(s)) for name, s in seconds.items()})
        peaks = {w.name: w.close()["peak_mb"] for w in workers}
        ratios = [found[tfclm_name] / found[torch_name] for found in rounds]
        for name in (torch_name, tfclm_name):
            speeds = [found[name] for found in rounds]
            ratio = f"{np.median(ratios):>15.2f}x {spread(ratios):>7.1%}" if name == tfclm_name else " " * 24
            print(f"{name:<34} {np.median(speeds):>9.1f} {spread(speeds):>7.1%} {ratio} {peaks[name]:>8.0f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
