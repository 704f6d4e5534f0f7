"""The reference commands: `config` (every key, its value and meaning) and `families` (the family table)."""

import click

from tfclm.cli.options import config_options, domain_errors


@click.command("config")
@config_options("Print this YAML file's resolved values instead of the defaults.")
@click.option("--markdown", is_flag=True, help="Print the defaults as the Markdown table of docs/reference/config.md.")
@domain_errors
def config_command(config_path, overrides, markdown):
    """Print every config key with its value, type and meaning.

    \b
    Example:
        python -m tfclm config
        python -m tfclm config --config configs/distilgpt2-eli5.yaml --set train.epochs=1
    """
    from tfclm.config import load_config
    from tfclm.config.reference import render_markdown, render_text

    if markdown:
        click.echo(render_markdown(), nl=False)
    else:
        config = load_config(config_path, overrides) if config_path or overrides else None
        click.echo(render_text(config), nl=False)


@click.command("families")
@click.option("--markdown", is_flag=True, help="Print the Markdown table of docs/reference/families.md.")
def families_command(markdown):
    """Print what tfclm does with each transformers TF causal-LM family: precision, batched generation,
    export, LoRA targets, and why a family is refused.

    \b
    Example:
        python -m tfclm families
    """
    from tfclm.model.families import render_markdown, render_text

    click.echo(render_markdown() if markdown else render_text(), nl=False)
