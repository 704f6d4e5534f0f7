"""`tfclm evaluate --preference-file`: a saved model's DPO loss and rewards on pairs, against a reference."""

import json

import click

from tfclm.errors import ConfigError

PAIRS_ONLY = ("--reference", "--beta", "--loss-type")


def evaluate_pairs(model_dir: str, pairs_file, given: dict, *, batch_size, block_size, as_json: bool) -> None:
    """`given`: the evaluate flags that bear on pairs or on other ways of scoring; each is checked against the
    way this call scores."""
    if pairs_file is None:
        flag = next(f for f in PAIRS_ONLY if given[f] is not None)
        raise ConfigError(flag, "scores preference pairs; give them with --preference-file, or leave it out")
    for flag, value in given.items():
        if flag not in PAIRS_ONLY and value is not None:
            raise ConfigError(flag, "has no effect with --preference-file; leave it out")
    from tfclm.config import PreferenceConfig
    from tfclm.evaluation.preference import evaluate_pairs_file, preference_line

    settings = PreferenceConfig(beta=given["--beta"] or 0.1, loss_type=given["--loss-type"] or "sigmoid")
    result = evaluate_pairs_file(
        model_dir, given["--reference"], pairs_file, settings, batch_size=batch_size or 16, block_size=block_size
    )
    click.echo(json.dumps(result) if as_json else f"{pairs_file}: {preference_line(result)}")
