"""lm-evaluation-harness on tfclm's TF models, offline: tasks the test writes (local JSONL and task YAML)."""

import json

import numpy as np
import pytest

from helpers import run_cli

QUESTIONS = [
    ("The list type", ["holds items in order", "is a kind of fish", "sorts nothing"], 0),
    ("Return the", ["value of the call", "moon to the sky", "list"], 0),
    ("A dictionary maps", ["keys to values", "rivers to seas", "nothing at all"], 1),
    ("The for statement", ["iterates over a sequence", "prints the moon", "is a number"], 2),
]
PROMPTS = ["The list type", "Return the", "A class", "The with statement"]


def _task_files(folder, generated: dict) -> None:
    """A multiple-choice task and a generation task whose answers are half right by construction."""
    with open(folder / "mc.jsonl", "w") as handle:
        for question, choices, answer in QUESTIONS:
            handle.write(json.dumps({"question": question, "choices": choices, "answer": answer}) + "\n")
    with open(folder / "gen.jsonl", "w") as handle:
        for i, prompt in enumerate(PROMPTS):
            target = generated[prompt] if i % 2 == 0 else "certainly not this"
            handle.write(json.dumps({"prompt": prompt, "target": target}) + "\n")
    (folder / "tfclm_mc.yaml").write_text(
        f"""task: tfclm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
    )
    (folder / "tfclm_gen.yaml").write_text(
        f"""task: tfclm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder}/gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""
    )


def _log_likelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) from the model's logits, split as the harness splits a pair."""
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    logits = model(input_ids=np.array([whole[:-1]], np.int32)).logits.numpy()[0].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(sum(log_probs[t - 1, whole[t]] for t in range(n_context, len(whole))))


@pytest.fixture()
def tasks_dir(trained_dir, tmp_path):
    import tfclm

    out, _ = trained_dir
    completions = tfclm.generate(out, PROMPTS, xla=False, do_sample=False, max_new_tokens=8)
    generated = {p: c[len(p) :].split("\n")[0] for p, c in zip(PROMPTS, completions)}
    _task_files(tmp_path, generated)
    return tmp_path


def test_harness_tasks_score_as_tfclm_own_log_likelihoods(trained_dir, tasks_dir):
    from tfclm.model.loading import load_trained

    out, _ = trained_dir
    args = ["evaluate", "--model", out, "--tasks", "tfclm_mc,tfclm_gen", "--include-path", str(tasks_dir), "--json"]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])

    model, tokenizer = load_trained(out)
    right = 0
    for question, choices, answer in QUESTIONS:
        likelihoods = [_log_likelihood(model, tokenizer, question, " " + choice) for choice in choices]
        right += int(np.argmax(likelihoods) == answer)
    assert scores["tfclm_mc"]["acc"] == right / len(QUESTIONS)
    assert scores["tfclm_gen"]["exact_match"] == 0.5  # the two targets that are the model's own greedy text


@pytest.mark.slow
def test_the_pytorch_export_gives_the_same_log_likelihoods_under_the_harness_hf_type(trained_dir, tasks_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tfclm.evaluation.harness import TfclmLM

    out, _ = trained_dir
    exported = str(tmp_path / "pt")
    assert run_cli(["export", "--model", out, "--to", "pytorch", "--output", exported]).exit_code == 0
    manager = TaskManager(include_path=str(tasks_dir))

    def log_likelihoods(model, **kwargs):
        output = lm_eval.simple_evaluate(
            model=model, tasks=["tfclm_mc"], task_manager=manager, log_samples=True, **kwargs
        )
        samples = sorted(output["samples"]["tfclm_mc"], key=lambda s: s["doc_id"])
        return [float(resp[0][0]) for sample in samples for resp in sample["resps"]]

    ours = log_likelihoods(TfclmLM(out, xla=False))
    theirs = log_likelihoods("hf", model_args=f"pretrained={exported},dtype=float32", device="cpu")
    assert len(ours) == len(theirs) == sum(len(choices) for _, choices, _ in QUESTIONS)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3


def test_rolling_log_likelihood_is_the_strided_figure(trained_dir):
    """The harness's rolling windows (a leading end-of-text; inputs of max_length tokens, each window predicting
    max_length tokens after one of context) are tfclm's strided windows of max_length + 1 every max_length, for
    a text of whole windows."""
    from lm_eval.api.instance import Instance

    from tfclm.evaluation.harness import TfclmLM
    from tfclm.evaluation.strided import strided_loss

    out, _ = trained_dir
    lm = TfclmLM(out, xla=False, max_length=64)
    text = "The list type holds items in order; a dictionary maps keys to values. " * 6
    # The harness fills its last window with more context than a stride gives: a text of whole windows has none.
    text = next(text[:n] for n in range(len(text), 0, -1) if len(lm.tok_encode(text[:n])) % 64 == 0)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (total,) = lm.loglikelihood_rolling([request])
    stream = np.array([lm.eot_token_id, *lm.tok_encode(text)], np.int32)
    figures = strided_loss(lm.model, [stream], max_length=65, stride=64, batch_size=4)
    assert figures["tokens"] == len(stream) - 1
    assert -total == pytest.approx(figures["loss"] * figures["tokens"], rel=1e-5)


def test_unknown_task_and_missing_folder_are_one_line(trained_dir, tmp_path):
    out, _ = trained_dir
    result = run_cli(["evaluate", "--model", out, "--tasks", "no_such_task_anywhere"])
    assert result.exit_code == 2 and "--tasks: unknown task 'no_such_task_anywhere'" in result.output
    result = run_cli(["evaluate", "--model", out, "--tasks", "x", "--include-path", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--include-path:" in result.output and "Traceback" not in result.output


def _one_task(folder, name: str, text: str) -> None:
    (folder / f"{name}.yaml").write_text(text.replace("FOLDER", str(folder)))


@pytest.mark.parametrize(
    "task, said, code",
    [
        ("missing_file", "--tasks: could not load the tasks missing_file: ", 2),
        (
            "missing_field",
            "--tasks: could not load the tasks missing_field: UndefinedError: 'question' is undefined",
            2,
        ),
        ("garbled", "--tasks: unknown task 'garbled'; ", 2),
        ("too_long", "--tasks: task 'too_long' asks for 400 new tokens (max_gen_toks), and the model holds 256", 2),
        ("empty_prompt", "--tasks: task 'empty_prompt' renders an empty prompt (doc_to_text)", 2),
        ("hub_offline", "--tasks: could not download a task's data (", 1),
    ],
)
def test_a_task_that_cannot_run_is_one_line_naming_it(trained_dir, tmp_path, monkeypatch, task, said, code):
    from helpers import error_line, tree

    out, _ = trained_dir
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "docs.jsonl").write_text('{"prompt": "The list", "target": " type"}\n')
    data = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: FOLDER/docs.jsonl\ntest_split: test\n"
    generate = "output_type: generate_until\ndoc_to_target: '{{target}}'\nmetric_list:\n  - metric: exact_match\n"
    texts = {
        "missing_file": data.replace("docs.jsonl", "gone.jsonl") + "doc_to_text: '{{prompt}}'\n" + generate,
        "missing_field": data + "doc_to_text: '{{question}}'\n" + generate,
        "garbled": "task: garbled\ndoc_to_text: '{{prompt}\n  - [\n",
        "too_long": data + "doc_to_text: '{{prompt}}'\n" + generate + "generation_kwargs:\n  max_gen_toks: 400\n",
        "empty_prompt": data + "doc_to_text: ''\n" + generate + "generation_kwargs:\n  max_gen_toks: 8\n",
        "hub_offline": "dataset_path: someone/no_such_dataset\ntest_split: test\ndoc_to_text: '{{prompt}}'\n"
        + generate,
    }
    _one_task(tmp_path, task, texts[task] if task == "garbled" else f"task: {task}\n" + texts[task])
    before = tree(tmp_path)
    line = error_line(run_cli(["evaluate", "--model", out, "--tasks", task, "--include-path", str(tmp_path)]), code)
    assert line.startswith(f"Error: {said}"), line
    if task == "garbled":
        assert f"{str(tmp_path / 'garbled.yaml')!r} (" in line and "does not parse, and may be it" in line
    assert tree(tmp_path) == before


def test_tasks_of_commas_only_name_no_task(trained_dir):
    from helpers import error_line

    line = error_line(run_cli(["evaluate", "--model", trained_dir[0], "--tasks", " , ,"]))
    assert line == "Error: --tasks: ' , ,' names no task; pass names separated by commas, such as lambada_openai"
