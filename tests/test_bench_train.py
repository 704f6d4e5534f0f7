"""bench/train.py's workers: variants in processes of their own that take turns step by step with the recipe."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

pytestmark = pytest.mark.slow  # each worker is a TensorFlow process building distilgpt2


@pytest.fixture()
def bench():
    sys.path.insert(0, BENCH)
    try:
        import train

        yield train
    finally:
        sys.path.remove(BENCH)


def test_a_worker_runs_exactly_the_steps_asked_for_and_reports_its_own_peak(bench):
    worker = bench.Worker("tfclm bf16", 1, 2, 16)
    seconds = [worker.step() for _ in range(3)]
    found = worker.close()
    assert all(s > 0 for s in seconds)
    assert found["steps"] == 3
    assert found["peak_mb"] > 500  # TensorFlow, and distilgpt2's 82M parameters with Adam's slots
    assert worker.process.returncode == 0


def test_a_worker_that_fails_names_its_variant_and_shows_why(bench):
    with pytest.raises(RuntimeError) as failed:
        bench.Worker("no such variant", 1, 2, 16)
    message = str(failed.value)
    assert message.startswith("no such variant ended (exit 1):")
    assert "KeyError: 'no such variant'" in message


def test_the_speed_table_pairs_each_variant_with_the_recipe():
    command = [sys.executable, "train.py", "--only", "speed", "--steps", "2", "--rounds", "2", "--warmup", "1"]
    command += ["--batch", "2", "--block", "16", "--variants", "tfclm bf16", "--probe-repeats", "1"]
    done = subprocess.run(command, cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "2 rounds of 2 timed steps a variant, each in turn with the recipe's, after 1 warm-up steps" in lines[0]
    row = re.compile(r"^(.+?) +([\d.]+) +([\d.]+)% +([\d.]+)x +([\d.]+)% +\d+% +(\d+) +\d+%$")
    rows = {m[1]: m.groups()[1:] for m in map(row.match, lines[3:]) if m}
    assert list(rows) == ["recipe as written (fp32)", "tfclm bf16"]
    assert rows["recipe as written (fp32)"][2:4] == ("1.00", "0.0")  # its own base, in every round
    for tokens_per_second, _, ratio, _, peak_mb in rows.values():
        assert float(tokens_per_second) > 0 and float(ratio) > 0 and int(peak_mb) > 500
