"""The command line: `python -m tfclm fit | evaluate | generate`.

Commands parse options and hand over to the library; domain errors become
`click.UsageError` (exit code 2, one line, no traceback).
"""
import functools
import json

import click

from tfclm.errors import TfclmError


def domain_errors(command):
    """Turn tfclm's user-facing errors into click usage errors."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TfclmError as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper


def _explicit_flags(ctx: click.Context, mapping: dict) -> dict:
    """Config keys for the options the user typed; defaults never override the file."""
    flags = {}
    for option, key in mapping.items():
        if ctx.get_parameter_source(option) not in (click.core.ParameterSource.DEFAULT, None):
            flags[key] = ctx.params[option]
    return flags


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfclm")
def cli():
    """Fine-tune or train causal language models with Keras on transformers' TF models."""


FIT_FLAGS = {
    "output_dir": "output_dir",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
}


@cli.command("fit")
@click.option("--config", "config_path", metavar="PATH", help="YAML run config, such as configs/default.yaml; without it, the built-in defaults.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key, such as --set data.block_size=256; repeatable.")
@click.option("--output-dir", metavar="DIR", help="Where the model, tokenizer, tfclm.yaml and results.json go (output_dir).")
@click.option("--epochs", type=int, help="Passes over the training data (train.epochs).")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (train.max_steps).")
@click.option("--batch-size", type=int, help="Blocks per optimizer step (train.batch_size).")
@click.option("--learning-rate", type=float, help="Peak learning rate (train.learning_rate).")
@click.option("--seed", type=int, help="Seed for the split, shuffling and initialisation (train.seed).")
@click.pass_context
@domain_errors
def fit_command(ctx, config_path, overrides, **_):
    """Train a model as the config says, evaluate it, sample from it and save it.

    Explicit options win over --set, which wins over the file.

    \b
    Example:
        python -m tfclm fit --config configs/default.yaml --max-steps 50 --output-dir runs/quick
    """
    from tfclm.config import load_config

    config = load_config(config_path, overrides, _explicit_flags(ctx, FIT_FLAGS))
    from tfclm.fit import fit

    fit(config)


@cli.command("evaluate")
@click.option("--model", "model_dir", required=True, metavar="DIR", help="A tfclm output dir or save_pretrained folder.")
@click.option("--config", "config_path", metavar="PATH", help="Run config whose validation split to use (default: DIR/tfclm.yaml).")
@click.option("--text-file", metavar="FILE", help="Evaluate on this UTF-8 text file instead of the validation split.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Blocks per evaluation batch (default: evaluate.batch_size).")
@click.option("--block-size", type=click.IntRange(min=2), help="Tokens per block (default: data.block_size).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@domain_errors
def evaluate_command(model_dir, config_path, text_file, batch_size, block_size, as_json):
    """Print the eval loss and perplexity of a saved model, counting every token.

    \b
    Example:
        python -m tfclm evaluate --model runs/default
        python -m tfclm evaluate --model runs/default --text-file notes.txt
    """
    from tfclm.evaluate import evaluate_dir

    result = evaluate_dir(model_dir, config_path, text_file, batch_size, block_size)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['source']}: {result['tokens']:,} tokens, eval loss {result['loss']:.4f}, perplexity {result['perplexity']:,.2f}")


@cli.command("generate")
@click.option("--model", "model_dir", required=True, metavar="DIR", help="A tfclm output dir or save_pretrained folder.")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Text to continue; repeat for a batch of prompts.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=100, show_default=True, help="Tokens to add to each prompt.")
@click.option("--do-sample/--greedy", default=True, show_default=True, help="Sample (with top-k/top-p/temperature) or take the likeliest token.")
@click.option("--top-k", type=click.IntRange(min=0), default=50, show_default=True, help="Sample among the k likeliest tokens (0: off).")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.95, show_default=True, help="Sample among the likeliest tokens holding this probability mass.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Below 1 sharpens, above 1 flattens the distribution.")
@click.option("--num-return-sequences", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per prompt.")
@click.option("--seed", type=int, default=None, help="Seed for sampling: the same seed gives the same text.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sample: prompt, completion, new_tokens.")
@domain_errors
def generate_command(model_dir, prompts, max_new_tokens, do_sample, top_k, top_p, temperature, num_return_sequences, seed, as_json):
    """Continue prompts with a saved model.

    \b
    Example:
        python -m tfclm generate --model runs/default --prompt "The list type" --seed 1
    """
    from tfclm.generate import generate_samples
    from tfclm.modeling import load_trained

    model, tokenizer = load_trained(model_dir)
    samples = generate_samples(model, tokenizer, list(prompts), max_new_tokens, do_sample, top_k, top_p, temperature, num_return_sequences, seed)
    for sample in samples:
        if as_json:
            click.echo(json.dumps({"prompt": sample.prompt, "completion": sample.completion, "new_tokens": sample.new_tokens}))
        else:
            click.echo(sample.text)
            click.echo("")


def main():
    cli(prog_name="python -m tfclm")
