"""The command line: `python -m tfclm fit | evaluate | generate | serve | push | export | config`.

Commands parse options and hand over to the library; domain errors become
`click.UsageError` (exit code 2, one line, no traceback).
"""

import dataclasses
import json
import os
import signal

import click

from tfclm.cli.export import export_command
from tfclm.cli.options import (
    config_options,
    config_type,
    decoding_options,
    domain_errors,
    expand_user,
    explicit_flags,
    model_option,
    read_prompts,
)
from tfclm.cli.pairs import evaluate_pairs
from tfclm.cli.reference import config_command, families_command
from tfclm.cli.serve import serve_command
from tfclm.errors import ConfigError, EnvironmentFailure, raise_interrupted


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfclm")
@click.option("-q", "--quiet", is_flag=True, help="Print warnings and errors only (progress bars stay).")
@click.option("-v", "--verbose", is_flag=True, help="Also print debug lines.")
def cli(quiet, verbose):
    """Fine-tune or train causal language models with Keras on transformers' TF models.

    \b
    Example:
        python -m tfclm fit --config configs/default.yaml
        python -m tfclm -q generate --model runs/default --prompt "The list type"
    """
    import logging

    from tfclm import show_logs

    show_logs(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


FIT_FLAGS = {
    "output_dir": "output_dir",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
}


@cli.command("fit")
@config_options("YAML run config, such as configs/default.yaml; without it, the built-in defaults.")
@click.option("--output-dir", metavar="DIR", help="Where the model, results and checkpoints go (output_dir).")
@click.option("--epochs", type=config_type("train.epochs"), help="Passes over the training data (train.epochs).")
@click.option(
    "--max-steps", type=config_type("train.max_steps"), help="Stop after this many optimizer steps (train.max_steps)."
)
@click.option(
    "--batch-size", type=config_type("train.batch_size"), help="Blocks per optimizer step (train.batch_size)."
)
@click.option(
    "--learning-rate", type=config_type("train.learning_rate"), help="Peak learning rate (train.learning_rate)."
)
@click.option(
    "--seed", type=config_type("train.seed"), help="Seed for the split, shuffling and initialisation (train.seed)."
)
@click.option("--overwrite", is_flag=True, help="Start over where a checkpoint or a finished run is.")
@click.pass_context
@domain_errors
def fit_command(ctx, config_path, overrides, overwrite, **_):
    """Train a model as the config says, evaluate it, sample from it and save it.

    Explicit options win over --set, which wins over the file. Rerunning the
    same command after an interruption resumes from the last checkpoint.

    \b
    Example:
        python -m tfclm fit --config configs/default.yaml --max-steps 50 --output-dir runs/quick
    """
    from tfclm.config import load_config

    config = load_config(config_path, overrides, explicit_flags(ctx, FIT_FLAGS))
    from tfclm.run.fit import fit

    results = fit(config, overwrite=overwrite)
    if results.get("hub_failures"):
        repo = config.hub.model_id or os.path.basename(os.path.abspath(config.output_dir))
        raise EnvironmentFailure(
            f"hub: {len(results['hub_failures'])} push(es) to {repo} failed (the last: {results['hub_failures'][-1]}); "
            f"{config.output_dir} is complete, and `python -m tfclm push --model {config.output_dir} --repo-id "
            f"{repo}` pushes it when the Hub answers"
        )


# evaluate's options that only one of its two ways of scoring reads; given to the other, they are refused.
HARNESS_ONLY = ("--include-path", "--limit")
PERPLEXITY_ONLY = ("--config", "--text-file", "--block-size", "--stride", "--per-document")


@cli.command("evaluate")
@model_option()
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    callback=expand_user,
    help="Run config whose validation split to use (default: DIR/tfclm.yaml).",
)
@click.option(
    "--text-file",
    metavar="FILE",
    callback=expand_user,
    help="Evaluate on this UTF-8 text file instead of the validation split.",
)
@click.option(
    "--batch-size",
    type=config_type("evaluate.batch_size"),
    help="Blocks per evaluation batch (default: evaluate.batch_size).",
)
@click.option("--block-size", type=config_type("data.block_size"), help="Tokens per block (default: data.block_size).")
@click.option(
    "--stride",
    type=config_type("evaluate.stride"),
    help="Score through sliding windows that start every N tokens, each token once with up to the window's "
    "context (evaluate.stride; default: blocks).",
)
@click.option(
    "--max-length",
    type=config_type("evaluate.max_length"),
    help="Tokens in a sliding window (evaluate.max_length; default: the model's positions).",
)
@click.option(
    "--per-document/--one-stream",
    default=None,
    help="Slide over each document on its own, or over all as one stream (evaluate.per_document).",
)
@click.option(
    "--tasks",
    metavar="NAMES",
    help="Run lm-evaluation-harness tasks (comma-separated) instead of perplexity; needs tfclm[eval].",
)
@click.option(
    "--include-path",
    metavar="DIR",
    callback=expand_user,
    help="A folder of your own harness task YAML files, for --tasks.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N documents of each task, for --tasks.")
@click.option("--preference-file", metavar="FILE", callback=expand_user, help="Score preference pairs instead (DPO).")
@click.option("--reference", metavar="DIR", callback=expand_user, help="With --preference-file: the reference model.")
@click.option("--beta", type=config_type("preference.beta"), help="With --preference-file: DPO's beta (0.1).")
@click.option("--loss-type", type=click.Choice(["sigmoid", "ipo", "hinge"]), help="With --preference-file: the loss.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@domain_errors
def evaluate_command(
    model_dir,
    config_path,
    text_file,
    batch_size,
    block_size,
    stride,
    max_length,
    per_document,
    tasks,
    include_path,
    limit,
    preference_file,
    reference,
    beta,
    loss_type,
    as_json,
):
    """Print the eval loss, perplexity and bits per byte of a saved model, counting every token; or, with
    --tasks, its scores on lm-evaluation-harness tasks.

    \b
    Example:
        python -m tfclm evaluate --model runs/default
        python -m tfclm evaluate --model runs/default --text-file notes.txt
        python -m tfclm evaluate --model runs/default --stride 128
        python -m tfclm evaluate --model runs/default --tasks lambada_openai --limit 100
        python -m tfclm evaluate --model runs/dpo --reference base/ --preference-file pairs.jsonl --json
    """
    pair_flags = {"--config": config_path, "--text-file": text_file, "--stride": stride, "--tasks": tasks,
                  "--reference": reference, "--beta": beta, "--loss-type": loss_type}  # fmt: skip
    if preference_file is not None or any(v is not None for v in (reference, beta, loss_type)):
        return evaluate_pairs(model_dir, preference_file, pair_flags, batch_size=batch_size, block_size=block_size,
                              as_json=as_json)  # fmt: skip
    from tfclm.evaluation.model_dir import evaluate_dir
    from tfclm.evaluation.perplexity import eval_line

    given = {"--config": config_path, "--text-file": text_file, "--block-size": block_size, "--stride": stride,
             "--per-document": per_document, "--include-path": include_path, "--limit": limit}  # fmt: skip
    for flag in HARNESS_ONLY if not tasks else PERPLEXITY_ONLY:
        if given[flag] is not None:
            mode = "perplexity" if not tasks else "--tasks (the harness)"
            raise ConfigError(flag, f"has no effect with {mode}; leave it out")
    if tasks:
        from tfclm.evaluation.tasks import run_tasks

        scores = run_tasks(model_dir, tasks, include_path, limit, batch_size, max_length)
        if as_json:
            click.echo(json.dumps(scores))
        else:
            for task, metrics in scores.items():
                click.echo(f"{task}: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
        return
    result = evaluate_dir(model_dir, config_path, text_file, batch_size, block_size, stride, max_length, per_document)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['source']} ({result['method']}): {result['tokens']:,} tokens, {eval_line(result)}")


@cli.command("generate")
@model_option("A tfclm output dir, a save_pretrained folder, or the model.tflite of a LiteRT export.")
@click.option("--prompt", "prompts", multiple=True, help="Text to continue; repeat for a batch of prompts.")
@click.option(
    "--prompt-file", type=click.File("r", encoding="utf-8"), help="A file with one prompt per line; - reads stdin."
)
@click.option("--chat", is_flag=True, help="Each prompt is a user's message: print the reply, ended at its turn's end.")
@click.option("--system", metavar="TEXT", help="With --chat: the system message that opens each conversation.")
@decoding_options
@click.option("--xla/--no-xla", default=True, show_default=True, help="XLA (one compile per length bucket) or eager.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sample: text, token counts, seconds.")
@domain_errors
def generate_command(model_dir, prompts, prompt_file, chat, system, xla, as_json, **options):
    """Continue prompts with a saved model, or reply to them (--chat); several prompts run as one batch.

    \b
    Example:
        python -m tfclm generate --model runs/default --prompt "The list type" --seed 1
        printf 'Return the\\nThe list type\\n' | python -m tfclm generate --model runs/default --prompt-file - --json
        python -m tfclm generate --model runs/chat --chat --system "Answer briefly." --prompt "What is a list?"
        python -m tfclm generate --model runs/default-litert/model.tflite --prompt "The list type" --greedy
    """
    from tfclm.generation.generator import Generator
    from tfclm.model.loading import load_trained

    if system is not None and not chat:
        raise click.BadParameter("sets a chat's system message; add --chat, or leave it out", param_hint="--system")
    texts = read_prompts(prompts, prompt_file)
    if model_dir.endswith(".tflite"):
        from tfclm.generation.litert_runner import LiteRTGenerator

        if click.get_current_context().get_parameter_source("xla") != click.core.ParameterSource.DEFAULT:
            raise click.BadParameter(
                "picks TF's way of decoding; a .tflite runs in LiteRT: leave it out", param_hint="--xla"
            )
        generator = LiteRTGenerator(model_dir)
    else:
        generator = Generator(*load_trained(model_dir), xla=xla, log=lambda line: click.echo(line, err=True))
    samples = generator.chat(texts, system=system, **options) if chat else generator(texts, **options)
    for sample in samples:
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(sample)))
        else:
            click.echo(sample.completion.strip() if chat else sample.text)
            click.echo("")


@cli.command("push")
@model_option("A tfclm output dir to push.")
@click.option(
    "--repo-id", required=True, metavar="NAME", help="The Hub repo, such as user/my-model; created if missing."
)
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--checkpoint", is_flag=True, help="Also push the resumable checkpoints (checkpoints/).")
@click.option("--message", default="Upload model trained with tfclm", show_default=True, help="The commit message.")
@domain_errors
def push_command(model_dir, repo_id, private, checkpoint, message):
    """Push an output dir to the Hugging Face Hub, with a model card.

    The token comes from HF_TOKEN or `huggingface-cli login`; HF_ENDPOINT
    points at another Hub.

    \b
    Example:
        python -m tfclm push --model runs/default --repo-id me/pydoc-gpt2 --private
    """
    from tfclm.hub.uploads import push_dir

    commit = push_dir(model_dir, repo_id, private=private, checkpoint=checkpoint, message=message)
    click.echo(f"pushed {model_dir} to {repo_id} (commit {commit[:12]})")


cli.add_command(export_command)
cli.add_command(serve_command)
cli.add_command(config_command)
cli.add_command(families_command)


def main():
    signal.signal(signal.SIGTERM, raise_interrupted)
    cli(prog_name="python -m tfclm")
