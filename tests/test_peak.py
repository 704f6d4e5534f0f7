"""The peak FLOP/s that MFU is taken against: a known GPU's data sheet, a measured matmul elsewhere, or the user's."""

import os

import pytest

from helpers import DEFAULT_CONFIG, TINY, run_cli, sets


@pytest.mark.parametrize(
    "name, precision, tf32, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", True, (989.4, "bf16")),
        ("NVIDIA H100 80GB HBM3", "fp32", True, (494.7, "tf32")),  # TensorFlow's float32 matmuls run in TF32
        ("NVIDIA H100 80GB HBM3", "fp32", False, (66.9, "fp32")),
        ("NVIDIA H100 PCIe", "bf16", True, (756.5, "bf16")),
        ("NVIDIA H200", "fp16", True, (989.4, "fp16")),
        ("NVIDIA A100-SXM4-80GB", "bf16", True, (312.0, "bf16")),
        ("NVIDIA L40S", "bf16", True, (362.1, "bf16")),  # not the L4's
        ("NVIDIA L4", "bf16", True, (121.0, "bf16")),
        ("NVIDIA A10", "fp32", True, (62.5, "tf32")),
        ("Tesla T4", "fp32", True, (8.1, "fp32")),  # no TF32 before Ampere
        ("Tesla T4", "bf16", True, None),  # no bfloat16 tensor cores: measured instead
        ("NVIDIA A10G", "bf16", True, None),  # not the A10, and not listed
        ("NVIDIA GeForce RTX 4090", "bf16", True, None),
    ],
)
def test_a_gpus_declared_peak_is_its_data_sheets_dense_rate(name, precision, tf32, expected):
    from tfclm.training.peak import declared_tflops

    assert declared_tflops(name, precision, tf32) == expected


def test_the_peak_is_the_users_number_none_or_measured_here():
    from tfclm.backend import tf
    from tfclm.training.peak import peak_flops

    strategy = tf.distribute.get_strategy()
    assert peak_flops(2.5, "bf16", strategy) == (2.5e12, "train.peak_tflops: 2.5 TFLOP/s x 1 replica(s)")
    assert peak_flops(None, "fp32", strategy) == (None, "none (train.peak_tflops: null)")
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):  # this machine has no GPU
        flops, source = peak_flops("auto", precision, strategy)
        assert flops > 1e9 and source.startswith(f"measured: {dtype} matmul on this host's CPU, ")
        assert source.endswith(f"{flops / 1e9:,.0f} GFLOP/s x 1")


@pytest.mark.parametrize(
    "value, message",
    [
        ("-1", "Error: train.peak_tflops: must be a positive number of TFLOP/s (such as 989.4, an H100's bf16), auto"),
        ("0", "Error: train.peak_tflops: must be a positive number of TFLOP/s"),
        ("fast", "Error: train.peak_tflops: must be a number or one of 'auto' or null, got 'fast'"),
    ],
)
def test_a_bad_peak_is_refused_before_anything_is_written(tmp_path, value, message):
    out = tmp_path / "out"
    result = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *TINY, *sets(f"train.peak_tflops={value}"), "--output-dir", str(out)]
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not os.path.exists(out)


def test_a_fit_reports_mfu_against_the_peak_it_was_given(tmp_path):
    import json

    from transformers import TFAutoModelForCausalLM

    from tfclm.training.flops import flops_per_token

    out = str(tmp_path / "out")
    args = [*TINY, *sets("train.peak_tflops=0.001", "train.max_steps=4"), "--output-dir", out]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 0, result.output
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["peak_flops"] == 1e9 and results["peak_source"] == "train.peak_tflops: 0.001 TFLOP/s x 1 replica(s)"
    per_token = flops_per_token(TFAutoModelForCausalLM.from_pretrained(out), 128)
    # results.json rounds tokens/s to 0.1: that rounding is the only difference.
    assert results["mfu"] == pytest.approx(per_token * results["tokens_per_second"] / 1e9, abs=per_token * 0.05 / 1e9)
    assert f"MFU {results['mfu']:.1%}" in result.output
