"""Bad input and a failing machine: one line, the right exit code, no traceback, and no file lost or changed.

Each case hashes the directories it touches before and after.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import DEFAULT_CONFIG, ROOT, TINY, fit_command, run_cli, sets, tree


def error_line(result, code=2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture()
def model_copy(trained_dir, tmp_path):
    """A trained output dir of this test's own, beside a file of the user's."""
    out = str(tmp_path / "model")
    shutil.copytree(trained_dir[0], out, ignore=shutil.ignore_patterns("cache", "logs"))
    open(os.path.join(out, "my-notes.txt"), "w").write("the user's own file\n")
    return out


@pytest.mark.parametrize("where", ["the model dir", "inside it", "its parent"])
def test_export_never_touches_the_model_dir(model_copy, tmp_path, where):
    output = {"the model dir": model_copy, "inside it": f"{model_copy}/pt", "its parent": str(tmp_path)}[where]
    before = tree(tmp_path)
    line = error_line(run_cli(["export", "--model", model_copy, "--to", "pytorch", "--output", output, "--force"]))
    assert "--output" in line and "is, lies in or holds the model dir" in line
    assert tree(tmp_path) == before


def test_an_output_dir_that_is_a_file_or_under_one(tmp_path):
    afile = tmp_path / "results"
    afile.write_text("not a directory\n")
    before = tree(tmp_path)
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--output-dir", str(afile)]))
    assert "output_dir" in line and "is a file, not a directory" in line
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--output-dir", f"{afile}/run"]))
    assert "lies under" in line and "which is a file" in line
    assert tree(tmp_path) == before


def test_a_second_run_into_a_dir_in_use_is_refused(model_copy):
    from tfclm.files import DirLock

    held = DirLock(model_copy).acquire()  # another run holds it, as a running fit does
    try:
        before = tree(model_copy)
        line = error_line(
            run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--max-steps", "50", "--output-dir", model_copy])
        )
    finally:
        held.release()
    assert f"is in use by another tfclm run (PID {os.getpid()})" in line
    assert tree(model_copy) == before


@pytest.mark.parametrize(
    "args, named",
    [
        (["--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
        (["--prompt-file", "BAD_UTF8"], "Invalid value for --prompt-file: "),
    ],
)
def test_generate_bad_input(model_copy, tmp_path, args, named):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"The list \xff\xfe type\n")
    args = [str(bad) if a == "BAD_UTF8" else a for a in args]
    before = tree(tmp_path)
    line = error_line(run_cli(["generate", "--model", model_copy, "--prompt", "The", *args]))
    assert named in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "args, named",
    [
        (["--text-file", "EMPTY"], "--text-file: "),
        (["--block-size", "1024"], "--block-size: 1024 is longer than the model's 256 positions"),
        (["--config", "/no/such/run.yaml"], "--config: '/no/such/run.yaml' does not exist"),
        (["--stride", "300"], "--stride: 300 is longer than the window of 256 tokens; pass 256 or less"),
        (["--stride", "8", "--max-length", "512"], "--max-length: 512 is longer than the model's 256 positions"),
        (["--config", "/no/such/run.yaml", "--text-file", "EMPTY"], "--config: '/no/such/run.yaml' does not exist"),
    ],
)
def test_evaluate_bad_input(model_copy, tmp_path, args, named):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    before = tree(tmp_path)
    line = error_line(run_cli(["evaluate", "--model", model_copy, *args]))
    assert named in line
    assert tree(tmp_path) == before


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(model_copy, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_copy)
    tokenizer.add_tokens([f"<extra-{i}>" for i in range(5)])
    tokenizer.save_pretrained(model_copy)
    before = tree(tmp_path)
    for command in (["generate", "--prompt", "The"], ["evaluate"]):
        line = error_line(run_cli([*command, "--model", model_copy]))
        assert "tokens, more than the model's" in line and "embeddings" in line
    assert tree(tmp_path) == before


def test_a_model_dir_without_its_tokenizer(model_copy, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        os.unlink(os.path.join(model_copy, name))
    before = tree(tmp_path)
    for command in (["generate", "--prompt", "The"], ["evaluate"]):
        line = error_line(run_cli([*command, "--model", model_copy]))
        assert f"--model: {model_copy!r} holds no tokenizer (tokenizer.json" in line and "beside it" in line
    assert tree(tmp_path) == before


def _fit_process(out, *extra, preexec=None):
    command = fit_command(*TINY, "--output-dir", out, *extra)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def child():
        # A shell's background job (`make test &`) starts with SIGINT ignored, and Python then never turns it into
        # KeyboardInterrupt: the fit gets SIGINT's default, as from a terminal.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec is not None:
            preexec()

    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, preexec_fn=child
    )


@pytest.mark.slow
@pytest.mark.parametrize("limit_kib, failing", [(64, "the tokenizer cache"), (600, "the first checkpoint")])
def test_a_file_size_limit_is_an_environment_failure(tmp_path, limit_kib, failing):
    import resource

    def small_files():
        # Writes past the limit fail with EFBIG instead of killing the process (SIGXFSZ ignored).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    out = str(tmp_path / "run")
    process = _fit_process(out, "--max-steps", "3", *sets("train.checkpoint_steps=1"), preexec=small_files)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("Error:")]
    assert "File too large" in line and "ulimit -f" in line
    checkpoints = os.path.join(out, "checkpoints")
    left = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    assert left == [], left  # no ckpt-N_temp/ and no run state without its checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupt_says_how_to_resume(tmp_path, signum, code):
    out = str(tmp_path / "run")
    # 400 steps (epochs enough to reach them; 20 documents make 9 steps an epoch): the signal lands mid-run even
    # when a loaded machine runs this test's polling late.
    process = _fit_process(
        out, *sets("train.checkpoint_steps=2", "data.max_documents=20"), "--max-steps", "400", "--epochs", "50"
    )
    index = os.path.join(out, "checkpoints", "checkpoint")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None and not os.path.exists(index):
            time.sleep(0.1)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"Error: interrupted ({signal.Signals(signum).name}); rerun the same command to resume from its last checkpoint"
    )


def test_output_files_get_the_users_permissions(tmp_path):
    from tfclm.files import atomic_write_text

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(str(tmp_path / "results.json"), "{}\n")
    assert os.stat(tmp_path / "results.json").st_mode & 0o777 == 0o666 & ~umask


def test_the_model_card_says_validation_once():
    from tfclm.hub.modelcard import model_card

    results = {"data": {"validation": "validation: a seeded 20% of the documents (5 of 24)"}}
    card = model_card("me/x", {"data": {"dataset": "x.txt", "validation_split": 0.2}}, results)
    assert "- validation: a seeded 20% of the documents (5 of 24)" in card and "validation: validation" not in card


def test_a_garbled_checkpoint_state_file_never_restarts_a_finished_run(model_copy):
    from helpers import TINY_BUILTIN

    with open(os.path.join(model_copy, "checkpoints", "checkpoint"), "w") as handle:
        handle.write("model_checkpoint_path: \x00\x01 not a state file {{{\n")
    before = tree(model_copy)
    line = error_line(
        run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", model_copy])
    )
    assert "already holds a finished run (40 steps" in line
    after = tree(model_copy)
    assert {name: after[name] for name in before} == before  # every file as it was...
    assert all(name.startswith("cache/") for name in set(after) - set(before))  # ...and new ones only in the cache


def _damage(path: str, how: str) -> None:
    if how == "truncated":  # a disk that filled up mid-write
        with open(path, "r+b") as handle:
            handle.truncate(100)
    elif how == "zero bytes":
        open(path, "wb").close()
    elif how == "missing":
        os.unlink(path)
    else:  # random bytes where the index was
        with open(path, "wb") as handle:
            handle.write(bytes(range(256)) * 8)


def _damage_last_checkpoint(model_dir: str, how: str) -> list[int]:
    """Damage ckpt-40 as `how` says ("truncated .data", ...); returns the steps of the checkpoints there."""
    checkpoints = os.path.join(model_dir, "checkpoints")
    steps = sorted(int(n[5:-6]) for n in os.listdir(checkpoints) if n.startswith("ckpt-") and n.endswith(".index"))
    assert steps[-1] == 40 and len(steps) == 2
    damage, suffix = how.rsplit(" ", 1)
    (name,) = [n for n in os.listdir(checkpoints) if n.startswith(f"ckpt-40{suffix}")]
    _damage(os.path.join(checkpoints, name), damage)
    return steps


@pytest.mark.parametrize("how", ["truncated .data", "zero bytes .data", "missing .data", "random .index"])
def test_every_kind_of_damaged_checkpoint_is_passed_over(model_copy, how):
    from tfclm.training.checkpoints import newest_readable

    steps = _damage_last_checkpoint(model_copy, how)
    assert newest_readable(os.path.join(model_copy, "checkpoints")) == steps[0]


def test_a_damaged_checkpoint_gives_way_to_the_one_before(model_copy):
    import json

    from helpers import TINY_BUILTIN

    expected = json.load(open(os.path.join(model_copy, "results.json")))["weights_sha256"]
    steps = _damage_last_checkpoint(model_copy, "truncated .data")
    os.unlink(os.path.join(model_copy, "results.json"))  # as a run killed before it wrote its results
    result = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", model_copy]
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint: ckpt-40 cannot be read" in result.output
    assert f"resuming from the checkpoint at optimizer step {steps[0]} of 40" in result.output
    results = json.load(open(os.path.join(model_copy, "results.json")))
    assert results["resumed_from_step"] == steps[0] and results["weights_sha256"] == expected  # the same run, exactly


def test_overwrite_with_a_bad_input_loses_nothing(model_copy):
    from helpers import TINY_BUILTIN

    before = tree(model_copy)
    args = [*TINY_BUILTIN, *sets("data.dataset=/no/such/corpus.txt"), "--overwrite", "--output-dir", model_copy]
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *args]))
    assert "data.dataset" in line and "does not exist" in line
    assert tree(model_copy) == before  # the old run's checkpoints and results are all still there


def test_a_finished_run_without_checkpoints_is_not_overwritten(model_copy):
    from helpers import TINY_BUILTIN

    shutil.rmtree(os.path.join(model_copy, "checkpoints"))
    before = tree(model_copy)
    base = ["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", model_copy]
    assert "with other settings (train.learning_rate)" in error_line(run_cli([*base, "--learning-rate", "0.5"]))
    assert "already holds a finished run (results.json, no checkpoints" in error_line(run_cli(base))
    # The peak that MFU is taken against changes no training: not another run's settings.
    peak = error_line(run_cli([*base, *sets("train.peak_tflops=5")]))
    assert "already holds a finished run (results.json, no checkpoints" in peak
    assert tree(model_copy) == before


def test_a_dir_of_someone_elses_files_is_refused(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("\\section{Introduction}\n")
    before = tree(tmp_path)
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--output-dir", str(mine)]))
    assert "holds files tfclm did not write (chapter1.tex)" in line
    assert tree(tmp_path) == before


def test_a_run_refused_on_its_data_leaves_no_new_dir(tmp_path):
    args = ["fit", "--config", DEFAULT_CONFIG, *TINY, *sets("data.dataset=/no/such/corpus.txt")]
    line = error_line(run_cli([*args, "--output-dir", f"{tmp_path}/new"]))
    assert "data.dataset" in line and "does not exist" in line
    assert os.listdir(tmp_path) == []  # not even the new dir's lock file stays


@pytest.mark.parametrize("kind", ["jsonl", "csv", "jsonl streamed"])
def test_a_data_file_that_is_not_utf8(tmp_path, kind):
    source = tmp_path / f"data.{kind.split()[0]}"
    good = [f'{{"text": "line {i} of good text"}}\n' for i in range(20)] if kind != "csv" else ["text\n"]
    bad = b'{"text": "bad \xff\xfe byte"}\n' if kind != "csv" else b"bad \xff byte\n"
    source.write_bytes("".join(good).encode() + bad)
    stream = sets("data.streaming=true") + ["--max-steps", "5"] if "streamed" in kind else []
    before = tree(tmp_path)
    args = ["fit", "--config", DEFAULT_CONFIG, *TINY, *sets(f"data.dataset={source}"), *stream]
    line = error_line(run_cli([*args, "--output-dir", str(tmp_path / "run")]))
    assert f"data.dataset: '{source}' is not UTF-8 text" in line
    assert tree(tmp_path) == before


def test_a_bad_repo_id_fails_at_once(model_copy):
    started = time.monotonic()
    before = tree(model_copy)
    line = error_line(run_cli(["push", "--model", model_copy, "--repo-id", "not a repo id!!"]))
    assert "--repo-id: 'not a repo id!!' is not a Hub repo id" in line and "user/name" in line
    assert time.monotonic() - started < 5  # no retries with backoff for what no retry can fix
    assert tree(model_copy) == before


def test_a_short_token_masks_nothing_else():
    from tfclm.hub.uploads import Uploader

    uploader = Uploader("me/x", token="a", log=lambda line: None)
    long_token = Uploader("me/x", token="hf_abcdefghijklmnop", log=lambda line: None)
    try:
        assert uploader._safe(ValueError("a bad request at the Hub")) == "ValueError: a bad request at the Hub"
        assert long_token._safe(ValueError("denied for hf_abcdefghijklmnop")) == "ValueError: denied for ***"
    finally:
        uploader.close()
        long_token.close()


def test_a_rerun_after_the_last_checkpoint_keeps_the_whole_run(model_copy):
    """A run killed after its final checkpoint, before its results: the rerun writes the same results and curves."""
    import json

    from helpers import TINY_BUILTIN

    original = json.load(open(os.path.join(model_copy, "results.json")))
    os.unlink(os.path.join(model_copy, "results.json"))
    os.unlink(os.path.join(model_copy, "training_curves.png"))
    os.mkdir(os.path.join(model_copy, ".tmp-save-k1ll3d"))  # what a kill during the model's save leaves
    result = run_cli(
        ["fit", "--config", DEFAULT_CONFIG, *TINY_BUILTIN, "--max-steps", "40", "--output-dir", model_copy]
    )
    assert result.exit_code == 0, result.output
    assert "resuming from the checkpoint at optimizer step 40 of 40" in result.output
    results = json.load(open(os.path.join(model_copy, "results.json")))
    kept = ("train_loss", "eval_loss_before", "perplexity_before", "eval_loss", "epochs", "history", "step_history")
    assert {key: results[key] for key in kept} == {key: original[key] for key in kept}
    assert results["weights_sha256"] == original["weights_sha256"] and results["resumed_from_step"] == 40
    assert os.path.getsize(os.path.join(model_copy, "training_curves.png")) > 0
    assert not [name for name in os.listdir(model_copy) if name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "setting, named",
    [
        ("data.block_size=512", "data.block_size: 512 is longer than the model's 256 positions"),
        ("train.batch_size=4096", "train.batch_size: the training text makes"),
    ],
)
def test_a_run_refused_after_reading_its_data_writes_nothing(tmp_path, setting, named):
    """Refusals that need the data (and the trained tokenizer) still come before any file is written."""
    line = error_line(
        run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, *sets(setting), "--output-dir", f"{tmp_path}/new"])
    )
    assert named in line
    assert os.listdir(tmp_path) == []  # no tokenizer or blocks cache, no new dir


def test_overwrite_refused_after_reading_the_data_loses_nothing(model_copy):
    from helpers import TINY_BUILTIN

    before = tree(model_copy)
    args = [*TINY_BUILTIN, *sets("data.block_size=512"), "--overwrite", "--output-dir", model_copy]
    assert "data.block_size: 512 is longer" in error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *args]))
    assert tree(model_copy) == before


@pytest.fixture()
def small_disk(tmp_path):
    """A filesystem of its own for the test: a 1 MiB tmpfs, mounted read-write (`small_disk("rw")`) or read-only."""
    mounted = []

    def mount(mode):
        where = tmp_path / f"disk-{mode}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size=1m,{mode}", "tmpfs", str(where)], capture_output=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "--lazy", str(where)], check=True)  # lazy: a file a failed run left open


def test_too_little_free_space_is_found_before_any_write(small_disk):
    disk = small_disk("rw")
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--output-dir", f"{disk}/run"]), code=1)
    assert "output_dir:" in line and "MB free" in line and "free some disk space or choose another --output-dir" in line
    assert os.listdir(disk) == []


def test_a_full_disk_at_the_first_write_leaves_nothing(small_disk):
    disk = small_disk("rw")
    filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError, match="No space left"):  # the disk fills up to its last byte
        while True:
            os.write(filler, b"x" * 4096)
    os.close(filler)
    before = tree(disk)
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--output-dir", f"{disk}/run"]), code=1)
    assert "No space left on device" in line and "free some disk space" in line
    assert tree(disk) == before and os.listdir(disk) == ["filler"]


def test_a_read_only_output_dir_is_an_environment_failure(small_disk):
    disk = small_disk("ro")
    line = error_line(run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, "--output-dir", f"{disk}/run"]), code=1)
    assert "Read-only file system" in line and "choose a directory on a writable filesystem" in line
    assert os.listdir(disk) == []


REMOTE_CONFIG = """
from transformers import GPT2Config


class CannotSampleConfig(GPT2Config):
    model_type = "cannot-sample"
"""
REMOTE_MODEL = """
from transformers import TFGPT2LMHeadModel

from .configuration_cannot_sample import CannotSampleConfig


class TFCannotSampleLM(TFGPT2LMHeadModel):
    config_class = CannotSampleConfig

    def generate(self, *args, **kwargs):
        raise RuntimeError("this model cannot generate")
"""


def model_with_its_own_code(folder) -> str:
    """A GPT-2 whose own code (trust_remote_code) trains but cannot generate."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    from tfclm.data.tokenizer import train_bpe

    tokenizer = train_bpe(["The list type holds items in order. Return the value."] * 20, 300)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=256, vocab_size=len(tokenizer))
    model = TFGPT2LMHeadModel(config)
    model.build_in_name_scope()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "configuration_cannot_sample.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_cannot_sample.py").write_text(REMOTE_MODEL)
    saved = json.loads((folder / "config.json").read_text())
    saved["model_type"] = "cannot-sample"
    saved["auto_map"] = {
        "AutoConfig": "configuration_cannot_sample.CannotSampleConfig",
        "TFAutoModelForCausalLM": "modeling_cannot_sample.TFCannotSampleLM",
    }
    (folder / "config.json").write_text(json.dumps(saved))
    return str(folder)


@pytest.mark.slow
def test_a_model_that_cannot_sample_still_trains_and_saves(tmp_path):
    """A model with its own code (trust_remote_code) that trains but cannot generate: the samples fail, and the
    run, its model and its results do not."""
    model = model_with_its_own_code(tmp_path / "model")
    remote = sets("model.config=null", f"model.name_or_path={model}", "model.trust_remote_code=true")
    out = tmp_path / "run"
    args = [*TINY, *remote, "--max-steps", "6", "--output-dir", str(out)]
    result = run_cli(["fit", "--config", DEFAULT_CONFIG, *args])
    assert result.exit_code == 0, result.output
    during = [line for line in result.output.splitlines() if line.startswith("sample: failed (")]
    assert len(during) == 2 and "training goes on" in during[0] and "the model is saved" in during[1]
    results = json.load(open(out / "results.json"))
    assert results["train_steps"] == 6 and results["samples"] == [] and (out / "tf_model.h5").exists()
    refused = run_cli(["fit", "--config", DEFAULT_CONFIG, *TINY, *remote[:-2], "--output-dir", str(tmp_path / "x")])
    assert "model.trust_remote_code: true" in error_line(refused) and not (tmp_path / "x").exists()


def test_an_export_onto_a_file_or_under_one(model_copy, tmp_path):
    afile = tmp_path / "export"
    afile.write_text("not a directory\n")
    before = tree(tmp_path)
    for output, said in ((afile, "is a file, not a directory"), (afile / "pt", "which is a file")):
        line = error_line(
            run_cli(["export", "--model", model_copy, "--to", "pytorch", "--output", str(output), "--force"])
        )
        assert line.startswith(f"Error: --output: {str(output)!r} ") and said in line, line
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_an_export_past_the_file_size_limit_is_an_environment_failure(model_copy, tmp_path):
    """safetensors' own error (not an OSError) for a write the file-size limit stops: one line, exit 1."""
    import resource
    import sys

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    output = tmp_path / "exported"
    before = tree(tmp_path)
    command = [sys.executable, "-m", "tfclm", "export", "--model", model_copy, "--to", "pytorch", "--output", output]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, preexec_fn=small_files)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert "could not write a file: File too large" in line and "ulimit -f" in line
    assert tree(tmp_path) == before and not output.exists()


def test_running_out_of_memory_is_not_called_a_failed_write():
    from tfclm.backend import tf
    from tfclm.errors import environment_failure

    exc = tf.errors.ResourceExhaustedError(
        None, None, "OOM when allocating tensor with shape[768,1000000] and type float"
    )
    line = environment_failure(exc)
    assert line.startswith("out of memory (allocating a tensor with shape[768,1000000]); lower train.batch_size"), line
    assert "disk" not in line
