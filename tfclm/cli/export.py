"""`python -m tfclm export`: PyTorch weights, a TF folder, a SavedModel for TF Serving, or LiteRT for devices."""

import click

from tfclm.cli.options import domain_errors, expand_user, model_option, serving_sampling_options

# Which export options each target takes; one typed for another target is refused, never ignored.
EXPORT_OPTIONS = {
    "saved_model": {"prompt_length", "max_new_tokens", "top_k", "top_p", "temperature"},
    "litert": {"max_length", "prefill_lengths", "quantize", "text_file"},
}


def _check_export_options(ctx: click.Context, target: str) -> None:
    for name in sorted(set().union(*EXPORT_OPTIONS.values()) - EXPORT_OPTIONS.get(target, set())):
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None):
            owner = next(t for t, names in EXPORT_OPTIONS.items() if name in names)
            flag = "--" + name.replace("_", "-")
            raise click.BadParameter(f"applies to --to {owner}, not --to {target}; leave it out", param_hint=flag)


def _lengths(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of lengths; pass them as 32,128") from None


@click.command("export")
@model_option("A tfclm output dir or save_pretrained folder (read, never modified).")
@click.option(
    "--to",
    "target",
    type=click.Choice(["pytorch", "tf", "saved_model", "litert"]),
    required=True,
    help="pytorch: safetensors for PyTorch transformers (v5 too); tf: a TF save_pretrained folder; saved_model: "
    "for TF Serving; litert: a .tflite with a KV cache for devices.",
)
@click.option(
    "--output",
    required=True,
    metavar="DIR",
    callback=expand_user,
    help="Where the export goes; must not exist unless --force.",
)
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@click.option("--merge-lora", is_flag=True, help="For a LoRA adapter dir: export its base with the adapters folded in.")
@click.option(
    "--prompt-length", type=click.IntRange(min=1), default=64, help="saved_model: prompt tokens (left-padded)."
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="saved_model: most tokens to add.",
)
@serving_sampling_options
@click.option(
    "--max-length",
    type=click.IntRange(min=2),
    help="litert: cache slots, prompt and new tokens together (default: the model's positions, at most 1024).",
)
@click.option(
    "--prefill-lengths",
    callback=_lengths,
    metavar="N,N",
    help="litert: tokens a prefill signature takes, one signature each (default: 32,128).",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "int8", "float16"]),
    default="none",
    show_default=True,
    help="litert: int8 weights (float activations), float16 weights, or none.",
)
@click.option(
    "--text-file",
    metavar="FILE",
    callback=expand_user,
    help="litert: held-out text to compare the export's perplexity with the TF model's (default: the run's "
    "validation split).",
)
@click.pass_context
@domain_errors
def export_command(ctx, model_dir, target, output, force, merge_lora, prompt_length, max_new_tokens, **options):
    """Export a trained model to PyTorch weights, a TF folder, a TensorFlow SavedModel or LiteRT.

    \b
    Example:
        python -m tfclm export --model runs/default --to pytorch --output runs/default-pt
        python -m tfclm export --model runs/default --to saved_model --output serving/pydoc/1
        python -m tfclm export --model runs/lora --merge-lora --to tf --output runs/lora-merged
        python -m tfclm export --model runs/default --to litert --quantize int8 --output runs/default-litert
    """
    from tfclm.generation.export import to_litert, to_pytorch, to_saved_model, to_tf

    _check_export_options(ctx, target)
    litert = {name: options.pop(name) for name in EXPORT_OPTIONS["litert"]}
    if target == "pytorch":
        to_pytorch(model_dir, output, force, merge_lora)
    elif target == "tf":
        to_tf(model_dir, output, force, merge_lora)
    elif target == "saved_model":
        to_saved_model(model_dir, output, force, prompt_length, max_new_tokens, **options, merge_lora=merge_lora)
    else:
        report = to_litert(model_dir, output, force, merge_lora=merge_lora, **litert)
        click.echo(_litert_line(report))
    click.echo(f"exported {model_dir} to {output} ({target})")


def _litert_line(report: dict) -> str:
    line = (
        f"model.tflite: {report['bytes'] / 1e6:.2f} MB ({report['quantize']}; the float32 weights are "
        f"{report['float32_weight_bytes'] / 1e6:.2f} MB)"
    )
    if "perplexity" in report:
        line += (
            f"; held-out perplexity {report['perplexity']:.3f} against the TF model's {report['tf_perplexity']:.3f} "
            f"({report['perplexity_tokens']:,} tokens)"
        )
    else:
        line += "; pass --text-file to compare its perplexity with the TF model's"
    return line
