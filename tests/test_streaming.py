"""tfclm's safetensors loader (`tfclm.model.streaming`) against transformers' own TF loader: the same values in
every variable, to the bit, and the same report of missing, unexpected and mismatched keys."""

import json
import os
import struct

import numpy as np
import pytest

from tfclm.backend import tf
from tfclm.model import streaming
from tfclm.model.llama.modeling import CLASSES, TFLlamaPreTrainedModel
from tfclm.model.loading import built_in_bfloat16

from helpers import pytorch_model

CHECKPOINTS = {
    "float32, one file, untied head": (dict(model_type="llama", tie_word_embeddings=False), None, {}),
    "bfloat16, sharded, tied head": (
        dict(model_type="qwen2", tie_word_embeddings=True),
        "bfloat16",
        {"max_shard_size": "40KB"},
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, tmp_path_factory):
    import torch

    fields, dtype, save = CHECKPOINTS[request.param]
    folder = tmp_path_factory.mktemp("checkpoint")
    pytorch_model(fields, folder, dtype=getattr(torch, dtype) if dtype else None, **save)
    return str(folder), CLASSES[fields["model_type"]][1]


def transformers_own(cls, folder, **kwargs):
    """from_pretrained as transformers' TFPreTrainedModel has it, past tfclm's classes' own."""
    return super(TFLlamaPreTrainedModel, cls).from_pretrained(folder, **kwargs)


def values(model) -> dict:
    return {w.name.split("/", 1)[1]: w.numpy() for w in model.weights}


def assert_same(ours, theirs):
    ours, theirs = values(ours), values(theirs)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and np.array_equal(ours[name], theirs[name]), name


def safetensors_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))


def test_from_pretrained_gives_transformers_own_loaders_weights_and_report(checkpoint):
    folder, cls = checkpoint
    ours, our_info = cls.from_pretrained(folder, output_loading_info=True)
    theirs, their_info = transformers_own(cls, folder, output_loading_info=True)
    assert_same(ours, theirs)
    assert our_info == their_info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}


def test_rows_and_columns_a_few_at_a_time_and_into_bfloat16_variables(checkpoint):
    folder, cls = checkpoint
    reference = transformers_own(cls, folder)
    model = cls(reference.config)
    model.build_in_name_scope()
    # 100 bytes: one or two rows a slice, so every kernel goes in many column slices and every embedding in rows.
    streaming.load_files(model, safetensors_files(folder), slice_bytes=100)
    assert_same(model, reference)
    with built_in_bfloat16():
        ours, theirs = cls.from_pretrained(folder), transformers_own(cls, folder)
    assert {w.dtype for w in ours.weights} == {tf.bfloat16}
    assert_same(ours, theirs)


def test_under_a_distribution_strategy_whole_tensors_go_in(checkpoint):
    folder, cls = checkpoint
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        ours = cls.from_pretrained(folder)
    assert_same(ours, transformers_own(cls, folder))


def rewrite(folder: str, change) -> None:
    """model.safetensors with `change(tensors)` applied, as PyTorch's save_pretrained writes it."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = change(load_file(path))
    save_file(tensors, path, metadata={"format": "pt"})


def one_file(tmp_path, change):
    folder = str(tmp_path)
    pytorch_model(dict(model_type="llama", tie_word_embeddings=False), folder)
    rewrite(folder, change)
    return folder, CLASSES["llama"][1]


def test_missing_and_unexpected_keys_are_reported_as_transformers_reports_them(tmp_path):
    import torch

    def change(tensors):
        tensors.pop("model.layers.1.mlp.up_proj.weight")
        return {**tensors, "model.layers.9.self_attn.q_proj.weight": torch.ones(2, 2)}

    folder, cls = one_file(tmp_path, change)
    ours, our_info = cls.from_pretrained(folder, output_loading_info=True)
    theirs, their_info = transformers_own(cls, folder, output_loading_info=True)
    assert our_info == their_info
    assert our_info["missing_keys"] == ["model.layers.1.mlp.up_proj.weight"]
    assert our_info["unexpected_keys"] == ["model.layers.9.self_attn.q_proj.weight"]
    loaded = {k: v for k, v in values(ours).items() if "layers.1/mlp/up_proj" not in k}
    assert all(np.array_equal(v, values(theirs)[k]) for k, v in loaded.items())


def test_a_tensor_of_another_shape_is_refused_by_name_or_listed_when_asked(tmp_path):
    import torch

    folder, cls = one_file(tmp_path, lambda t: {**t, "lm_head.weight": torch.zeros(7, 32)})
    said = r"lm_head.weight is \[7, 32\] in the checkpoint but \[32, 96\] in the model; pass ignore_mismatched_sizes"
    with pytest.raises(ValueError, match=said):
        cls.from_pretrained(folder)
    _, info = cls.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True)
    _, theirs = transformers_own(cls, folder, ignore_mismatched_sizes=True, output_loading_info=True)
    assert [m[0] for m in info["mismatched_keys"]] == [m[0] for m in theirs["mismatched_keys"]] == ["lm_head.weight"]


def test_a_tensor_in_a_dtype_it_does_not_read_hands_the_file_to_transformers(tmp_path):
    import torch

    folder, cls = one_file(tmp_path, lambda t: {**t, "model.step": torch.tensor([3], dtype=torch.int64)})
    ours, info = cls.from_pretrained(folder, output_loading_info=True)
    assert info["unexpected_keys"] == ["model.step"]
    assert_same(ours, transformers_own(cls, folder))


def test_a_file_cut_short_names_the_file_and_the_fix(tmp_path):
    folder, cls = one_file(tmp_path, lambda t: t)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    last = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
    os.truncate(path, 8 + length + last - 4)
    from transformers import AutoConfig

    model = cls(AutoConfig.from_pretrained(folder))
    model.build_in_name_scope()
    with pytest.raises(OSError, match="ends inside tensor .*; the file is cut short, download it again"):
        streaming.load_files(model, [path])
