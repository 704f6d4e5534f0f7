"""Peak memory while loading a Hub-layout checkpoint of about 1B parameters, as a multiple of its bytes on disk.

A Llama of Llama 3.2 1B's shape (16 layers x 2,048, 32 query and 8 key/value heads, a SwiGLU MLP of 8,192,
a 128,256-token vocabulary, tied embeddings; 1.24B parameters, random weights) is saved by PyTorch
transformers as the Hub has it (sharded `model.safetensors`, `--dtype` bfloat16 or float32) in a temporary
folder. Then a fresh process a row imports tfclm and loads it: with transformers' own TF loader
(`from_pretrained` as `TFPreTrainedModel` has it), with tfclm's (`tfclm.model.streaming`, which
`from_pretrained` on tfclm's classes uses) into float32 variables, and with tfclm's into bfloat16 variables (a
frozen LoRA base's). Each reports its resident memory before the load (TensorFlow and transformers imported)
and its peak after; a row prints them, and the peak over the bytes on disk with and without what the process
held before loading. `--layers` shrinks the model for a quick look.

    .venv/bin/python bench/loading.py [--dtype bfloat16|float32] [--layers 16]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

SHAPE = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0,
)  # fmt: skip

MAKE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, LlamaConfig
folder, dtype, fields = sys.argv[1], getattr(torch, sys.argv[2]), json.loads(sys.argv[3])
torch.manual_seed(0)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(LlamaConfig(**fields), torch_dtype=dtype)
model = model.to_empty(device="cpu")
model.tie_weights()  # to_empty gives the tied head a tensor of its own
for parameter in model.parameters():  # random, not empty: the bytes on disk are a real checkpoint's
    torch.nn.init.normal_(parameter, std=0.02)
model.save_pretrained(folder, max_shard_size="1GB")
print(sum(p.numel() for p in model.parameters()))
"""

LOAD = """
import contextlib, json, resource, sys
import tfclm
from tfclm.backend import tf
from tfclm.model.llama.modeling import CLASSES, TFLlamaPreTrainedModel
from tfclm.model.loading import built_in_bfloat16
from transformers import AutoConfig

def resident_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

folder, loader, variables = sys.argv[1:]
cls = CLASSES[AutoConfig.from_pretrained(folder).model_type][1]
# transformers' own loader: from_pretrained as TFPreTrainedModel has it, past tfclm's classes' own.
load = cls.from_pretrained if loader == "tfclm" else super(TFLlamaPreTrainedModel, cls).from_pretrained
before = resident_mb()
with built_in_bfloat16() if variables == "bfloat16" else contextlib.nullcontext():
    model = load(folder)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"before_mb": before, "peak_mb": peak, "class": type(model).__name__,
                  "weights": int(sum(v.shape.num_elements() for v in model.weights)),
                  "dtype": model.weights[0].dtype.name}))
"""
# (loader, variables): transformers' own loader beside tfclm's, and tfclm's into bfloat16 variables (a LoRA base's).
ROWS = (("transformers", "float32"), ("tfclm", "float32"), ("tfclm", "bfloat16"))


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".safetensors"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="the checkpoint's")
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    args = parser.parse_args()
    fields = dict(SHAPE, num_hidden_layers=args.layers)
    env = {**os.environ, "USE_TF": "0", "USE_TORCH": "1"}
    with tempfile.TemporaryDirectory() as folder:
        made = subprocess.run([sys.executable, "-c", MAKE, folder, args.dtype, json.dumps(fields)], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        params, disk = int(made.stdout.split()[-1]), folder_bytes(folder)
        disk_mb = disk / 2**20
        print(f"{params / 1e9:.2f}B parameters, a {args.dtype} checkpoint of {disk_mb:,.0f} MB on disk")
        print("| loader | variables | before loading | peak | peak / on disk | (peak - before) / on disk |")
        print("| --- | --- | --- | --- | --- | --- |")
        for loader, variables in ROWS:
            loaded = subprocess.run([sys.executable, "-c", LOAD, folder, loader, variables], capture_output=True,
                                    text=True)  # fmt: skip
            if loaded.returncode:
                sys.exit(loaded.stderr[-3000:])
            found = json.loads(loaded.stdout.strip().splitlines()[-1])
            if found["weights"] != params or found["dtype"] != variables:
                sys.exit(f"{loader} loaded {found}, not {params} {variables} weights")
            peak, before = found["peak_mb"], found["before_mb"]
            print(f"| {loader} | {variables} | {before:,.0f} MB | {peak:,.0f} MB | {peak / disk_mb:.2f}x | "
                  f"{(peak - before) / disk_mb:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
