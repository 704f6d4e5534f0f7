"""What a run reports: versions, the weights digest, the non-finite message, the saved decoding defaults."""

import dataclasses
import hashlib
import platform

import datasets
import transformers

from tfclm import config as config_lib
from tfclm.backend import keras, tf
from tfclm.model import lora
from tfclm.training.trainer import resolve_jit_compile


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
    }


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]


def nan_message(step: int, streak: int, config: config_lib.Config, saved: list[int]) -> str:
    causes = [f"a learning rate too high (train.learning_rate is {config.train.learning_rate:g})"]
    if config.train.clipnorm is None:
        causes.append("no gradient clipping (set train.clipnorm: 1.0)")
    if config.train.precision == "fp16":
        causes.append("fp16 overflow (try precision bf16 or fp32)")
    kept = (
        f"the last good checkpoint (step {saved[-1]}) is kept in {config.output_dir}/checkpoints; "
        "rerun to resume from it"
        if saved
        else "no checkpoint was saved before it"
    )
    return (
        f"train: the loss became non-finite (nan or inf, in the loss or its gradients) at optimizer step {step}; "
        f"its update was skipped ({streak} in a row), and training stopped; "
        f"likely causes: {'; '.join(causes)}; {kept}"
    )


def set_decoding_defaults(model, config: config_lib.Config, tokenizer) -> None:
    """The generate: section becomes the saved generation_config.json: `pipeline(...)(prompt)` and a bare
    `model.generate(...)` then decode as tfclm does, not with transformers' default max_length of 20."""
    gen, generation_config = config.generate, model.generation_config
    if generation_config is None:
        return  # a model class that cannot generate (RoFormer's TF causal LM) has no decoding to save
    # Not "from the model config" any more: transformers' generate replaces such a config, if unchanged since it
    # was loaded, with one rebuilt from config.json, which holds none of these settings. A fine-tune of a tfclm
    # dir loads exactly these values, so nothing else would mark them as changed.
    generation_config._from_model_config = False
    generation_config.max_new_tokens = gen.max_new_tokens
    generation_config.do_sample = gen.do_sample
    if gen.do_sample:
        generation_config.top_k, generation_config.top_p, generation_config.temperature = (
            gen.top_k,
            gen.top_p,
            gen.temperature,
        )
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )


def results_of(run, model, prepared, logs, callbacks, *, after: dict, seconds: float, start: int, steps: int,
               samples: list) -> dict:  # fmt: skip
    """What results.json holds: `run` is the run (tfclm.run.fit), `logs` its RunLogs, `callbacks` its
    RunCallbacks."""
    logged, throughput, before = logs.epoch_logs(), callbacks.throughput, logs.before
    params, trainable = lora.parameter_counts(model)
    adapters = lora.adapters_in(model)
    return {
        "train_loss": float(logged["loss"][-1]) if logged.get("loss") else None,
        "eval_loss": after["loss"],
        "perplexity": after["perplexity"],
        "bits_per_byte": after.get("bits_per_byte"),
        "eval_loss_before": before["loss"] if before else None,
        "perplexity_before": before["perplexity"] if before else None,
        "eval_tokens": after.get("tokens"),
        **(
            {"preference": after["preference"], "preference_before": (before or {}).get("preference")}
            if "preference" in after
            else {}
        ),  # fmt: skip
        "train_tokens": throughput.tokens,
        "train_steps": steps,
        "resumed_from_step": start,
        "epochs": len(logged.get("loss", [])),
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(throughput.tokens_per_second, 1),
        "mfu": throughput.mfu,
        "peak_flops": callbacks.peak,
        "peak_source": callbacks.peak_source,
        "parameters": params,
        "trainable_parameters": trainable,
        "precision": run.policy,
        "strategy": run.described,
        "global_batch_size": run.batch_size,
        "weights_sha256": weights_digest(model),
        **({"adapter_sha256": adapters.digest()} if adapters else {}),
        "jit_compile": resolve_jit_compile(run.config.train.jit_compile),
        "data": prepared.facts,
        "history": logged,
        "step_history": {"steps": logs.steps.steps, **logs.steps.history},
        "samples": [dataclasses.asdict(s) for s in samples],
        "versions": versions(),
    }
