"""PyTorch safetensors read into a built TF model's variables a slice of rows at a time.

transformers' TF loader reads each tensor whole from a memory-mapped shard, then casts and transposes it into
temporaries before it assigns it, and the shard's pages stay resident until the shard is closed. Here a tensor goes
in slices of at most `slice_bytes` of the file, read with plain file reads (nothing mapped, so only the variables
and one slice are resident), cast on the way and assigned into the variable's matching rows, or columns where
PyTorch's (out, in) kernel is Keras' (in, out). What is resident past the variables is one slice, whatever the
checkpoint's size, and a bfloat16 checkpoint read into bfloat16 variables (a LoRA base, `base_precision: bf16`)
takes no more than its bytes on disk.

`streamed(source, kwargs)` hands this loader the safetensors of one `from_pretrained` call of tfclm's own
classes (transformers' loaders are wrapped once, and the wrappers pass every other call on), so everything else
(the Hub's resolution and cache, the config, the keys' reports) stays transformers'. Names are matched as
transformers matches them (`convert_tf_weight_name_to_pt_weight_name`).
"""

import contextlib
import json
import re
import struct
import threading

import numpy as np
from transformers import modeling_tf_pytorch_utils as pt_utils

from tfclm.backend import tf

SLICE_BYTES = 16 << 20
# On disk -> how the bytes are read; bfloat16 has no numpy type, so its bits come as uint16 and are bitcast.
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class SafetensorsFile:
    """One .safetensors file's header, and any run of a tensor's rows read from it without mapping the file."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        self.data_start, self.tensors = 8 + length, header

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def readable(self) -> bool:
        return all(entry["dtype"] in DTYPES for entry in self.tensors.values())

    def rows(self, name: str, start: int, stop: int) -> tf.Tensor:
        """Rows [start, stop) of tensor `name` (the whole of a 0-d one), in the file's own dtype."""
        entry = self.tensors[name]
        shape, dtype = list(entry["shape"]), np.dtype(DTYPES[entry["dtype"]])
        row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        count = (stop - start) * row if shape else 1
        out = np.empty(count, dtype)
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.data_start + entry["data_offsets"][0] + start * row * dtype.itemsize)
            if handle.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise OSError(f"{self.path} ends inside tensor {name!r}; the file is cut short, download it again")
        values = tf.constant(out.reshape([stop - start, *shape[1:]] if shape else []))
        return tf.bitcast(values, tf.bfloat16) if entry["dtype"] == "BF16" else values


def _row_slices(rows: int, row_bytes: int, slice_bytes: int):
    step = max(1, slice_bytes // max(row_bytes, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _sliceable(variable) -> bool:
    # A mirrored or sharded variable (a tf.distribute strategy's) takes whole values only.
    return isinstance(variable, tf.Variable) and not tf.distribute.has_strategy()


def _assign(variable, source: SafetensorsFile, name: str, transpose, slice_bytes: int) -> None:
    """Tensor `name` into `variable`, a slice of rows at a time (PyTorch's rows are a kernel's columns)."""
    shape, target = source.shape(name), getattr(variable, "_variable", variable)  # an AutoCastVariable's own
    simple = transpose is pt_utils.TransposeType.SIMPLE
    if not shape or not _sliceable(target):
        whole = source.rows(name, 0, shape[0] if shape else 0)
        target.assign(tf.cast(pt_utils.apply_transpose(transpose, whole, variable.shape), target.dtype))
        return
    row_bytes = source.tensors[name]["data_offsets"][1] - source.tensors[name]["data_offsets"][0]
    for start, stop in _row_slices(shape[0], row_bytes // shape[0], slice_bytes):
        values = tf.cast(source.rows(name, start, stop), target.dtype)
        if simple:
            values = tf.transpose(values)
        begin = [0, start] if simple else [start] + [0] * (len(shape) - 1)
        # The op itself: `variable[a:b].assign` reads the variable first, and the read's hold on its buffer
        # makes the assignment copy the whole variable (1 GB more for a 1B model's embedding).
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=target.handle, begin=begin, end=[b + v for b, v in zip(begin, values.shape)],
            strides=[1] * len(shape), value=values,
        )  # fmt: skip


def _fits(variable, shape: tuple[int, ...], transpose) -> bool:
    if transpose is pt_utils.TransposeType.SIMPLE and len(shape) == 2:
        return tuple(variable.shape) == shape[::-1]
    return transpose is pt_utils.TransposeType.NO and tuple(variable.shape) == shape


def _pt_name(weight, keys, drop: str, prefix: str, rename):
    """The checkpoint key for `weight` and how it is transposed, as transformers' own loader finds them (`drop`:
    the base model's prefix where the checkpoint's keys lack it)."""
    name, transpose = pt_utils.convert_tf_weight_name_to_pt_weight_name(
        weight.name, start_prefix_to_remove=drop, tf_weight_shape=weight.shape, name_scope=prefix
    )
    if rename is not None:
        aliases = rename(name)
        name = next((alias for alias in aliases if alias in keys), aliases[0])
    return name, transpose


def load_files(model, files, *, ignore_mismatched_sizes=False, _prefix=None, tf_to_pt_weight_rename=None,
               slice_bytes=SLICE_BYTES, **_unused) -> dict:  # fmt: skip
    """Every tensor of the safetensors `files` (paths, or SafetensorsFile already read) that names one of the
    built `model`'s weights, into that weight; transformers' loading info back (missing, unexpected and
    mismatched keys)."""
    sources = [f if isinstance(f, SafetensorsFile) else SafetensorsFile(f) for f in files]
    where = {name: source for source in sources for name in source.tensors}
    unexpected, missing, mismatched = set(where), [], []
    drop = "" if any(k.startswith(model.base_model_prefix) for k in where) else model.base_model_prefix + "."
    for weight in model.trainable_weights + model.non_trainable_weights:
        name, transpose = _pt_name(weight, where, drop, _prefix or "", tf_to_pt_weight_rename)
        if name not in where:
            missing.append(name)
            continue
        shape = where[name].shape(name)
        if not _fits(weight, shape, transpose):
            if not ignore_mismatched_sizes:
                raise ValueError(
                    f"{name} is {list(shape)} in the checkpoint but {weight.shape.as_list()} in the model; pass "
                    f"ignore_mismatched_sizes=True to from_pretrained to start it afresh"
                )
            mismatched.append((name, shape, tuple(weight.shape)))
            continue
        _assign(weight, where[name], name, transpose, slice_bytes)
        unexpected.discard(name)
    return {
        "missing_keys": _unignored(missing, model._keys_to_ignore_on_load_missing),
        "unexpected_keys": _unignored(sorted(unexpected), model._keys_to_ignore_on_load_unexpected),
        "mismatched_keys": mismatched,
    }


def _unignored(names: list, patterns) -> list:
    return [n for n in names if not any(re.search(p, n) for p in patterns or ())]


# The `from_pretrained` call of this thread that tfclm's loader serves, if any: (source, its kwargs).
_ACTIVE = threading.local()
_INSTALL = threading.Lock()


def _single_file(archive) -> list[str]:
    from transformers.utils import cached_file

    source, kwargs = _ACTIVE.call
    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    return [cached_file(source, "model.safetensors", subfolder=kwargs.get("subfolder", ""), **hub)]


def _loader(files_of, original):
    """transformers' loader's signature: tfclm's loader inside `streamed`, wherever every tensor is in a dtype it
    reads; transformers' own everywhere else."""

    def load(tf_model, archive, *args, output_loading_info=False, **kwargs):
        sources = [SafetensorsFile(p) for p in files_of(archive)] if getattr(_ACTIVE, "call", None) else []
        if not sources or not all(source.readable() for source in sources):
            return original(tf_model, archive, *args, output_loading_info=output_loading_info, **kwargs)
        info = load_files(tf_model, sources, **kwargs)
        pt_utils._log_key_warnings(
            info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"], class_name=type(tf_model).__name__
        )
        return (tf_model, info) if output_loading_info else tf_model

    return load


_LOADERS = {"load_pytorch_state_dict_in_tf2_model": _single_file, "load_sharded_pytorch_safetensors_in_tf2_model": list}


@contextlib.contextmanager
def streamed(source: str, kwargs: dict):
    """While this thread's `from_pretrained(source, **kwargs)` runs, its PyTorch safetensors go through
    `load_files`. transformers looks its loaders up in `modeling_tf_pytorch_utils` when it needs them, so they
    are wrapped there once; the wrappers hand every other call, another thread's included, to transformers'."""
    with _INSTALL:
        if not getattr(pt_utils, "_tfclm_streamed", False):
            for name, files_of in _LOADERS.items():
                setattr(pt_utils, name, _loader(files_of, getattr(pt_utils, name)))
            pt_utils._tfclm_streamed = True
    outer, _ACTIVE.call = getattr(_ACTIVE, "call", None), (source, kwargs)
    try:
        yield
    finally:
        _ACTIVE.call = outer
