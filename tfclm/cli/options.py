"""The CLI's shared options and its error handling: what every command's decorators are made of."""

import dataclasses
import functools
import os
import sys

import click

from tfclm.errors import Interrupted, TfclmError, environment_failure


def expand_user(ctx, param, value):
    """A path option's leading ~ is the home directory, even where no shell expanded it (quoted, or --opt=~/x)."""
    if isinstance(value, str):
        return os.path.expanduser(value)
    return value


def domain_errors(command):
    """Turn tfclm's user-facing errors into click usage errors, and the machine's failures into exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TfclmError as exc:
            raise click.UsageError(str(exc)) from None
        except KeyboardInterrupt as exc:
            signal_name = "SIGTERM" if isinstance(exc, Interrupted) else "SIGINT"
            click.echo(
                f"Error: interrupted ({signal_name}); rerun the same command to resume from its last checkpoint",
                err=True,
            )
            sys.exit(143 if isinstance(exc, Interrupted) else 130)
        except Exception as exc:
            line = environment_failure(exc)
            if line is None:
                raise
            click.echo(f"Error: {line}", err=True)
            sys.exit(1)

    return wrapper


def explicit_flags(ctx: click.Context, mapping: dict) -> dict:
    """Config keys for the options the user typed; defaults never override the file."""
    flags = {}
    for option, key in mapping.items():
        if ctx.get_parameter_source(option) not in (click.core.ParameterSource.DEFAULT, None):
            flags[key] = ctx.params[option]
    return flags


def config_options(help_text: str):
    """--config FILE and repeatable --set KEY=VALUE, as fit and config read them."""

    def decorate(command):
        command = click.option(
            "--set", "overrides", multiple=True, metavar="KEY=VALUE",
            help="Override one config key, such as --set data.block_size=256; repeatable.",
        )(command)  # fmt: skip
        return click.option("--config", "config_path", metavar="PATH", callback=expand_user, help=help_text)(command)

    return decorate


def model_option(help_text: str = "A tfclm output dir or save_pretrained folder."):
    return click.option("--model", "model_dir", required=True, metavar="DIR", callback=expand_user, help=help_text)


def config_field(key: str) -> dataclasses.Field:
    """The Config field of a dotted key (train.epochs)."""
    from tfclm.config.schema import Config

    cls, found = Config, None
    for name in key.split("."):
        found = next(f for f in dataclasses.fields(cls) if f.name == name)
        cls = found.type
    return found


def config_type(key: str):
    """The click type of an option that sets `key`: the key's number type and bounds, so click refuses what the
    config would (naming the option)."""
    from tfclm.config.bounds import click_type

    return click_type(config_field(key))


def decoding_options(command):
    """One option per decoding control of `GenerationOptions` (--max-new-tokens, --top-p, ...), with its help."""
    from tfclm.config.schema import GenerationOptions

    for f in reversed(dataclasses.fields(GenerationOptions)):
        text = f.metadata["help"][0].upper() + f.metadata["help"][1:] + "."
        if f.type is bool or f.name == "do_sample":
            option = click.option("--do-sample/--greedy", default=f.default, show_default=True, help=text)
        else:
            name = "--" + f.name.replace("_", "-")
            option = click.option(
                name, type=_decoding_type(f.name), default=f.default, show_default=f.default is not None, help=text
            )
        command = option(command)
    return command


def _decoding_type(name: str):
    from tfclm.config.bounds import click_type
    from tfclm.config.schema import GenerationOptions

    return click_type(next(f for f in dataclasses.fields(GenerationOptions) if f.name == name))


def serving_sampling_options(command):
    """The sampling settings fixed into a SavedModel: --top-k, --top-p, --temperature, in the decoding ranges."""
    for name, default in (("temperature", 1.0), ("top_p", 0.95), ("top_k", 50)):
        flag = "--" + name.replace("_", "-")
        help_text = f"saved_model: {flag[2:]} when sampling."
        command = click.option(flag, type=_decoding_type(name), default=default, show_default=True, help=help_text)(
            command
        )
    return command


def read_prompts(prompts: tuple, prompt_file) -> list[str]:
    collected = list(prompts)
    if prompt_file is not None:
        try:
            collected += [line.rstrip("\r\n") for line in prompt_file if line.strip()]
        except UnicodeDecodeError:
            raise click.BadParameter(
                f"{prompt_file.name!r} is not UTF-8 text; convert it (iconv -t utf-8) and pass it again",
                param_hint="--prompt-file",
            ) from None
    if not collected:
        raise click.UsageError(
            "no prompt: pass --prompt TEXT, or --prompt-file FILE (one prompt per line; - reads stdin)"
        )
    return collected
