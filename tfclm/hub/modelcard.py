"""The model card: the Hub repo's README.md, with YAML metadata and the run's facts."""

import yaml

from tfclm.data.corpus import is_builtin
from tfclm.files import looks_local

CARD_ARGS = ("model_name", "language", "license", "tags", "finetuned_from", "dataset")


def _hub_id(name) -> str | None:
    """A Hub id, or None for a local path or a built-in corpus (neither means anything on the Hub)."""
    if not name or is_builtin(name) or looks_local(name):
        return None
    return name


def _validation(results: dict, data: dict) -> str:
    """How validation was chosen; results.json says it as a line of its own, "validation: ..."."""
    described = (results.get("data") or {}).get("validation")
    return described.removeprefix("validation: ") if described else str(data.get("validation_split"))


def check_card_args(card_args: dict) -> None:
    unknown = [k for k in card_args if k not in CARD_ARGS]
    if unknown:
        raise TypeError(
            f"unknown model card argument {unknown[0]!r}; the model card arguments are: {', '.join(CARD_ARGS)}"
        )


def model_card(repo_id: str, config: dict | None = None, results: dict | None = None, **card_args) -> str:
    """README.md text for `repo_id`; `config` is a resolved tfclm config (a dict), `results` results.json's content."""
    check_card_args(card_args)
    config, results = config or {}, results or {}
    model, data, train = config.get("model") or {}, config.get("data") or {}, config.get("train") or {}
    lora = config.get("lora") or {}
    adapter = bool(lora.get("rank"))
    base = card_args.get("finetuned_from") or _hub_id(model.get("name_or_path"))
    name = card_args.get("model_name") or repo_id.split("/")[-1]
    lines = [f"# {name}", "", _summary(model, lora, base), ""]
    lines += _data_section(data, results) + _train_section(train) + _results_section(results)
    lines += _adapter_usage(repo_id, base or model.get("name_or_path")) if adapter else _usage(repo_id)
    metadata = _metadata(card_args, adapter=adapter, base=base, dataset=_hub_id(data.get("dataset")))
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + "\n".join(lines)


def _metadata(card_args: dict, *, adapter: bool, base: str | None, dataset: str | None) -> dict:
    """The card's YAML header: what the Hub indexes the repo by."""
    metadata = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": [
            "tfclm",
            "tensorflow",
            "text-generation",
            "causal-lm",
            *(["lora", "peft"] if adapter else []),
            *(card_args.get("tags") or []),
        ],
    }
    if base:
        metadata["base_model"] = base
    dataset = card_args.get("dataset") or dataset
    if dataset:
        metadata["datasets"] = [dataset]
    for key in ("language", "license"):
        if card_args.get(key):
            metadata[key] = card_args[key]
    return metadata


def _summary(model: dict, lora: dict, base: str | None) -> str:
    """The card's first paragraph: adapters, a fine-tune or a model from scratch."""
    if lora.get("rank"):
        where = f"[{base}](https://huggingface.co/{base})" if base else f"`{model.get('name_or_path')}`"
        return (
            f"LoRA adapters (rank {lora['rank']}, alpha {lora.get('alpha')}) for {where}, trained with "
            f"[tfclm](https://pypi.org/project/tfclm/) (Keras / TensorFlow) and saved in PEFT's format: this repo "
            f"holds the adapters only, and the base model is loaded from its own repo."
        )
    if base:
        return (
            f"A causal language model fine-tuned from [{base}](https://huggingface.co/{base}) with "
            f"[tfclm](https://pypi.org/project/tfclm/) (Keras / TensorFlow)."
        )
    if model.get("config"):
        shape = ", ".join(f"{k}={v}" for k, v in model["config"].items())
        return f"A causal language model trained from scratch with tfclm (Keras / TensorFlow): {shape}."
    return "A causal language model trained with tfclm (Keras / TensorFlow)."


def _data_section(data: dict, results: dict) -> list[str]:
    if not data:
        return []
    text = f"template `{data['text_template']}`" if data.get("text_template") else f"column `{data.get('text_column')}`"
    return [
        "## Data",
        "",
        f"- dataset: `{data.get('dataset')}`, split `{data.get('split')}`, text {text} (lists joined with "
        f"{data.get('join_separator')!r})",
        f"- validation: {_validation(results, data)}",
        f"- blocks of {data.get('block_size')} tokens, "
        f"{'packed with EOS between documents' if data.get('pack', True) else 'one document each'}",
        "",
    ]


HYPERPARAMETERS = (
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_schedule",
    "warmup_ratio",
    "weight_decay",
    "clipnorm",
    "epochs",
    "max_steps",
    "precision",
    "seed",
)


def _train_section(train: dict) -> list[str]:
    if not train:
        return []
    rows = [f"| {k} | {train.get(k)} |" for k in HYPERPARAMETERS if k in train]
    return ["## Training hyperparameters", "", "| name | value |", "| --- | --- |", *rows, ""]


def _results_section(results: dict) -> list[str]:
    if not results:
        return []
    rows = [
        ("eval loss", results.get("eval_loss")),
        ("perplexity", results.get("perplexity")),
        ("perplexity before training", results.get("perplexity_before")),
        ("training steps", results.get("train_steps")),
        ("training tokens", results.get("train_tokens")),
        ("tokens/s", results.get("tokens_per_second")),
    ]
    lines = [
        "## Results",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows if v is not None],
        "",
    ]
    versions = results.get("versions") or {}
    if versions:
        lines += ["## Framework versions", "", *[f"- {k}: {v}" for k, v in versions.items()], ""]
    return lines


def _usage(repo_id: str) -> list[str]:
    return [
        "## How to use",
        "",
        "```python",
        "import os",
        'os.environ["TF_USE_LEGACY_KERAS"] = "1"  # transformers\' TF models need Keras 2 (tf-keras)',
        "from transformers import AutoTokenizer, TFAutoModelForCausalLM",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        f'model = TFAutoModelForCausalLM.from_pretrained("{repo_id}")',
        'inputs = tokenizer("The", return_tensors="tf")',
        "output = model.generate(**inputs, max_new_tokens=50, do_sample=True, top_k=50, top_p=0.95)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```",
        "",
        'Or with tfclm: `python -m tfclm generate --model DIR --prompt "The"` on a local copy.',
        "",
    ]


def _adapter_usage(repo_id: str, base: str) -> list[str]:
    return [
        "## How to use",
        "",
        "With PyTorch and PEFT:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        "```",
        "",
        'With tfclm (TensorFlow), on a local copy: `python -m tfclm generate --model DIR --prompt "The"`; '
        "`python -m tfclm export --model DIR --merge-lora --to tf --output MERGED` writes the merged full model.",
        "",
    ]
