"""The seed recipe's own inference code, word for word, on a tfclm output dir.

It runs in a clean process in the test venv (which has PyTorch), and in one
where PyTorch is hidden, as in the venv `make install` creates: every import
finder is wrapped so that none finds torch (or accelerate and peft, which
need it), so `import torch` fails and transformers' check for torch finds
nothing, as where it is not installed.
(`sys.modules["torch"] = None` is not the same: SciPy, which MLflow brings,
then takes the None for a loaded torch and fails.)
"""

import json
import subprocess
import sys

import pytest

from helpers import ROOT, SEED_CLIENT

HIDE_TORCH = """
import sys

# torch, and what cannot be installed without it (the test venv has them for the harness's hf type).
HIDDEN = {"torch", "accelerate", "peft"}


class _Hidden:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        found = getattr(self.finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs)
        return (d for d in found if (d.metadata["Name"] or "").lower() not in HIDDEN)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [_Hidden(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
"""


@pytest.mark.parametrize("torch", [True, False], ids=["with-torch", "without-torch"])
def test_seed_inference_code_runs_unchanged(trained_dir, torch):
    out, _ = trained_dir
    hide = "" if torch else HIDE_TORCH
    report = """
import json, transformers
print(json.dumps({"torch": transformers.is_torch_available(), "framework": generator.framework,
                  "generated": generated[0]["generated_text"], "decoded": decoded[0]}))
"""
    # The tutorial's code as written, then with framework="tf", each in a process of its own kind.
    script = hide + "".join(SEED_CLIENT.format(model=out, framework=f) + report for f in ("", ', framework="tf"'))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]
    assert len(runs) == 2
    prompt = "Somatic hypermutation allows the immune system to"
    for got in runs:
        assert got["torch"] is torch and got["framework"] == "tf"
        assert got["generated"].startswith(prompt) and len(got["generated"]) > len(prompt)
        assert got["decoded"].startswith(prompt) and len(got["decoded"]) > len(prompt)
