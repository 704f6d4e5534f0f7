"""The hardware's peak FLOP/s, which model FLOPs utilisation (MFU) is taken against.

A known GPU has a declared peak: the dense (no sparsity) tensor-core rate
from NVIDIA's data sheet at the run's precision; for fp32 on Ampere and
later, TF32's, since TensorFlow runs float32 matmuls in TF32 there unless
`tf.config.experimental.enable_tensor_float_32_execution(False)` says
otherwise. Anything else (a CPU, an unknown GPU) is measured: the best of a
few matmuls at a language-model head's shape (tokens x width x a vocabulary
slice) in the run's dtype, a second or less at the start of the run. A TPU
gets no MFU unless `train.peak_tflops` names its peak.
"""

import re
import time

from tfclm.backend import tf
from tfclm.training.distribute import cluster_size, tf_config

# (pattern in the device name, {precision: TFLOP/s}); the first match wins. Dense rates, per GPU.
DECLARED_TFLOPS = (
    (r"H100 80GB HBM3|H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"\bH200\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"\bA100\b", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bL40S\b", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bT4\b", {"fp16": 65.0, "fp32": 8.1}),  # Turing: no bfloat16 or TF32 tensor cores
    (r"\bV100-SXM2\b", {"fp16": 125.0, "fp32": 15.7}),
)
DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}


def declared_tflops(device_name: str, precision: str, tf32: bool = True) -> tuple[float, str] | None:
    """(the data sheet's dense peak of a GPU named `device_name` at `precision`, the rate it is: tf32 for fp32 where
    TensorFlow uses it); None for a card not listed or a precision it has no tensor cores for."""
    for pattern, rates in DECLARED_TFLOPS:
        if re.search(pattern, device_name):
            key = "tf32" if precision == "fp32" and tf32 and "tf32" in rates else precision
            return (rates[key], key) if key in rates else None
    return None


def matmul_peak(dtype, rows: int = 2048, width: int = 768, out: int = 8192, repeats: int = 5, jit=False) -> float:
    """FLOP/s of the best of `repeats` (rows x width) @ (width x out) matmuls, after one to warm up: the fastest is
    the nearest to what the hardware can do (slower ones met other work on the machine)."""
    a = tf.cast(tf.random.normal((rows, width)), dtype)
    b = tf.cast(tf.random.normal((width, out)), dtype)
    step = tf.function(tf.matmul, jit_compile=jit)
    step(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step(a, b).numpy()  # the copy back waits for a GPU to finish
        best = min(best, time.perf_counter() - started)
    return 2 * rows * width * out / best


def _gpu_name() -> str | None:
    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "") if gpus else None


def peak_flops(setting, precision: str, strategy) -> tuple[float | None, str]:
    """(the run's peak FLOP/s, or None for no MFU; where it comes from, for the log and results.json).

    `setting` is `train.peak_tflops`: a number (one device's TFLOP/s), "auto", or None. A GPU's peak counts once a
    replica; a measured CPU peak is the whole host's (logical CPU replicas share its cores), once a host."""
    if setting is None:
        return None, "none (train.peak_tflops: null)"
    replicas, gpu = strategy.num_replicas_in_sync, _gpu_name()
    if setting != "auto":
        return setting * 1e12 * replicas, f"train.peak_tflops: {setting:g} TFLOP/s x {replicas} replica(s)"
    if tf.config.list_logical_devices("TPU"):
        return None, "none (no TPU's peak is declared here: set train.peak_tflops)"
    declared = gpu and declared_tflops(gpu, precision, tf.config.experimental.tensor_float_32_execution_enabled())
    if declared:
        tflops, rate = declared
        return tflops * 1e12 * replicas, f"declared: {gpu}, {rate} dense, {tflops:g} TFLOP/s x {replicas}"
    measured = matmul_peak(DTYPES[precision])
    count = replicas if gpu else cluster_size(tf_config())
    where = gpu or "this host's CPU"
    return (
        measured * count,
        f"measured: {DTYPES[precision].name} matmul on {where}, {measured / 1e9:,.0f} GFLOP/s x {count}",
    )
