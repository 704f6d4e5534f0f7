"""The run configuration's sections and keys, each with its type, default and help text.

The help text lives on the fields (`metadata["help"]`), so `python -m tfclm
config` and the configuration reference (docs/reference/config.md) are rendered from one source.
"""

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from tfclm.config.bounds import Bounds, problems
from tfclm.errors import ConfigError
from tfclm.files import OutputDir

CONFIG_FILENAME = OutputDir.CONFIG
# Seeds: what Keras and numpy take, and the sampler's int32.
TRAIN_SEEDS = "a whole number from 0 to 2**32 - 1 (4,294,967,295)"
GENERATION_SEEDS = "a whole number from 0 to 2**31 - 1 (2,147,483,647)"
TWO_DOCUMENTS = "at least 2 (one to train on, one to evaluate), or null"


def setting(default, help: str, **bounds):
    """A config key: its default, what it means, and for a number its bounds (tfclm.config.bounds.Bounds)."""
    metadata = {"help": help, **({"bounds": Bounds(**bounds)} if bounds else {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class DataConfig:
    dataset: str = setting(
        "builtin:pydoc",
        (
            "a Hub dataset id (eli5_category), a local .txt/.json/.jsonl/.csv/.parquet file, a folder of such files, "
            "a folder written by save_to_disk, or builtin:pydoc"
        ),
    )
    config_name: Optional[str] = setting(None, "the Hub dataset's configuration name")
    split: str = setting("train", "split name with an optional slice: train[:5000], train[10%:]")
    text_column: str = setting("text", 'the text field; a dotted path reaches into nested fields: "answers.text"')
    text_template: Optional[str] = setting(
        None, 'several fields in one document: "{title}\\n{answers.text}"; replaces text_column'
    )
    join_separator: str = setting(" ", "joins a list of strings (several answers) into one document")
    format: Literal["text", "prompt_completion", "messages", "preference"] = setting(
        "text",
        "text: documents, packed; prompt_completion: a prompt and a completion per record, one padded example each; "
        "messages: a conversation of {role, content} turns per record, rendered by the chat template; preference: "
        "a prompt with a chosen and a rejected answer per record (text or turns), for the preference: section",
    )
    messages_column: str = setting(
        "messages", "messages: the field holding the turns; roles are system, user and assistant"
    )
    prompt_column: Optional[str] = setting(
        None,
        "prompt_completion: the prompt field (a dotted path reaches in); preference: the prompt field (default "
        "prompt; without one, the prompt is what chosen and rejected share at their start, as in TRL)",
    )
    prompt_template: Optional[str] = setting(
        None, 'prompt_completion: the prompt from several fields: "Question: {title}\\n{selftext}\\nAnswer: "'
    )
    completion_column: str = setting(
        "completion", "prompt_completion: the completion field; a list of completions is read as data.completion_pick"
    )
    chosen_column: str = setting("chosen", "preference: the preferred answer's field (text, or a list of turns)")
    rejected_column: str = setting("rejected", "preference: the other answer's field (text, or a list of turns)")
    completion_pick: str = setting(
        "all", "a list of completions gives: all (one example each), first, or max:FIELD (the best by a score list)"
    )
    txt_document: Literal["file", "paragraph", "line"] = setting(
        "file", "what one document is in .txt files: a whole file, a blank-line paragraph, or a line"
    )
    validation_split: Union[float, str] = setting(
        0.2,
        'a seeded fraction of the documents (0.2), a split of the same dataset ("validation", "test[:500]"), or a '
        "file or folder",
    )
    max_documents: Optional[int] = setting(
        None, "keep only the first N distinct documents (quick runs)", min=2, must=TWO_DOCUMENTS
    )
    block_size: int = setting(128, "tokens per training example; at most the model's positions", min=2)
    pack: bool = setting(True, "pack documents end to end; false: one document per example, padded or truncated")
    streaming: bool = setting(False, "read and pack on the fly, for corpora larger than memory (needs train.max_steps)")
    num_proc: int = setting(2, "tokenization processes; more than the cores only slows it", min=1)


@dataclass
class TokenizerConfig:
    name_or_path: Optional[str] = setting(
        None, "a tokenizer to use; default: the model's, or for a scratch model a BPE trained on the data"
    )
    vocab_size: int = setting(
        8192,
        "size of the byte-level BPE trained on the corpus for a scratch model",
        min=260,
        must="at least 260 (the 256 bytes and the special tokens)",
    )


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = setting(None, "Hub id or local directory to fine-tune (from_pretrained)")
    config: Optional[dict] = setting(
        None,
        (
            "transformers config fields, with model_type, to train from scratch (from_config); "
            "set exactly one of the two"
        ),
    )
    trust_remote_code: bool = setting(False, "allow a Hub model's own code; only when you opt in")


@dataclass
class TrainConfig:
    batch_size: int = setting(16, "blocks per replica per micro-batch", min=1)
    learning_rate: float = setting(2e-5, "peak learning rate", above=0)
    weight_decay: float = setting(
        0.01, "AdamW decay of weight matrices and embeddings (never of biases and norms)", min=0
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = setting("constant", "decay to 0 after the warm-up")
    warmup_ratio: float = setting(0.0, "fraction of the optimizer steps spent warming up linearly", min=0, below=1)
    clipnorm: Optional[float] = setting(None, "global gradient norm clipping", above=0)
    epochs: int = setting(3, "passes over the training data", min=1)
    max_steps: Optional[int] = setting(None, "stop after N optimizer steps (mid-epoch if need be)", min=1)
    gradient_accumulation_steps: int = setting(1, "micro-batches of batch_size per optimizer step", min=1)
    precision: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32",
        "fp32, bf16 (mixed bfloat16: CPUs with bf16, GPUs, TPUs) or fp16 (mixed float16 with loss scaling, GPUs)",
    )
    loss_chunk_tokens: int = setting(
        0,
        "compute the LM head and its loss this many tokens at a time, each chunk's gradients taken in the same "
        "pass, so the batch x length x vocabulary logits never exist at once (0: all tokens in one chunk, still "
        "faster than the model's own head where the family allows; the BERT-likes use their own)",
        min=0,
        must="0 (off) or a number of tokens such as 1024",
    )
    loss_on: Literal["auto", "all", "completion", "assistant"] = setting(
        "auto",
        "completion: the loss counts the completion's tokens and its EOS only; assistant: the assistant's replies "
        "and their end-of-turn tokens only; all: every token; auto: completion for data.format prompt_completion, "
        "assistant for messages, all for text",
    )
    recompute: Literal["none", "blocks"] = setting(
        "none",
        "blocks: keep only each transformer block's input for the backward pass and run the block again there "
        "(less memory, about a third more compute); a recomputed block draws its forward pass's dropout masks",
    )
    fused_ops: bool = setting(
        True,
        "the train step runs the MLP's activation (GELU, SiLU) and the layer norms as one XLA-compiled function "
        "each way, equal to transformers' ops to float32 rounding; false: transformers' ops as they are",
    )
    jit_compile: Union[bool, Literal["auto"]] = setting(
        "auto", "XLA for the train step: true, false, or auto (on GPU/TPU only)"
    )
    peak_tflops: Union[float, Literal["auto"], None] = setting(
        "auto",
        "one device's peak TFLOP/s, for the MFU in the logs and results: auto takes a known GPU's data-sheet rate "
        "at the run's precision and measures a matmul elsewhere (TPUs: none); null: no MFU",
    )
    max_nonfinite_steps: Optional[int] = setting(
        1,
        "stop after this many optimizer steps in a row whose loss or gradients are not finite (each is skipped); "
        "null: never; fp16 leaves skipping to its loss scaling",
        min=1,
        must="at least 1, or null to never stop on skipped steps",
    )
    checkpoint_steps: Optional[int] = setting(
        500, "also checkpoint every N optimizer steps (null: epoch ends only)", min=1
    )
    seed: int = setting(
        42, "seed of the split, shuffling, initialisation and sampling", min=0, max=2**32 - 1, must=TRAIN_SEEDS
    )
    pipeline: Literal["fast", "recipe"] = setting(
        "fast",
        "fast: packed blocks through tf.data, no Python per batch; recipe: prepare_tf_dataset with the LM collator",
    )
    strategy: Literal["auto", "default", "mirrored", "multiworker", "tpu"] = setting(
        "auto",
        "tf.distribute: auto picks tpu with train.tpu, multiworker when TF_CONFIG names workers, mirrored with GPUs",
    )
    tpu: Optional[str] = setting(None, 'TPU name or grpc:// address; "local" on a TPU VM')


@dataclass
class LoraConfig:
    rank: int = setting(
        0,
        "LoRA rank: trains low-rank adapters beside the targeted layers, the rest frozen (0: off)",
        min=0,
        must="0 (off) or a rank such as 8",
    )
    alpha: float = setting(16.0, "scales the adapters' output by alpha / rank", above=0, must="positive (such as 16)")
    dropout: float = setting(0.0, "dropout on the adapters' input while training", min=0, below=1)
    target_modules: Optional[list] = setting(
        None,
        "layer names to adapt (a name matches a layer whose path ends with it, as in PEFT); null: the family's "
        "attention and MLP projections (`python -m tfclm families`)",
    )
    modules_to_save: list = setting([], "layers trained in full and saved beside the adapters, such as ln_f")
    base_precision: Literal["fp32", "bf16"] = setting(
        "fp32", "bf16 keeps the frozen weight matrices in bfloat16, half their memory (needs train.precision bf16)"
    )


@dataclass
class PreferenceConfig:
    beta: float = setting(
        0.1, "how far the model may move from the reference: the DPO temperature (0.1 to 0.5 as a rule)", above=0
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = setting(
        "sigmoid",
        "TRL's losses: sigmoid (DPO), ipo (on log-probabilities averaged over the answer's tokens), hinge (SLiC)",
    )
    label_smoothing: float = setting(
        0.0, "sigmoid only: the share of pairs taken to be labelled the wrong way (conservative DPO)", min=0, below=0.5
    )
    rpo_alpha: Optional[float] = setting(
        None, "adds this times the chosen answers' token loss (RPO, TRL's rpo_alpha); null: none", min=0
    )
    reference: Optional[str] = setting(
        None,
        "the reference model's directory or Hub id; null: the starting model, frozen (with LoRA: the base with the "
        "adapters off, no second copy)",
    )
    precompute_reference: bool = setting(
        False, "score every pair with the reference once before training (kept in the output dir), then free it"
    )
    max_prompt_length: Optional[int] = setting(
        512, "a prompt's last tokens kept (TRL's max_prompt_length); null: all", min=1
    )
    max_completion_length: Optional[int] = setting(
        None, "an answer's first tokens kept, its EOS included (TRL's max_completion_length); null: all", min=1
    )


@dataclass
class EvaluateConfig:
    batch_size: int = setting(16, "blocks per evaluation batch", min=1)
    before_training: bool = setting(True, "also measure the untrained model's perplexity")
    stride: Optional[int] = setting(
        None, "tfclm evaluate: score through sliding windows that start every N tokens; null: blocks", min=1
    )
    max_length: Optional[int] = setting(
        None, "tfclm evaluate: the sliding window's tokens; null: the model's positions", min=2
    )
    per_document: bool = setting(False, "tfclm evaluate: slide over each document on its own, not one stream")


@dataclass
class GenerationOptions:
    """Decoding controls, for `tfclm.generate`, the generate command and the config's `generate:` section."""

    max_new_tokens: int = setting(100, "tokens to add to each prompt, at most", min=1)
    min_new_tokens: int = setting(0, "tokens to add before EOS may end a text", min=0)
    do_sample: bool = setting(True, "sample (with top-k/top-p/temperature), or take the likeliest token")
    top_k: int = setting(50, "sample among the k likeliest tokens (0: off)", min=0, must="0 (off) or more")
    top_p: float = setting(0.95, "sample among the likeliest tokens holding this probability mass", above=0, max=1)
    temperature: float = setting(1.0, "below 1 sharpens, above 1 flattens the distribution", above=0)
    num_beams: int = setting(1, "beam search width (1: no beam search)", min=1)
    repetition_penalty: float = setting(
        1.0, "above 1 discourages repeating tokens (1.0: off)", above=0, must="positive (1.0: off)"
    )
    num_return_sequences: int = setting(1, "samples per prompt", min=1)
    seed: Optional[int] = setting(
        None,
        "the same seed gives the same text; default: train.seed in a run, a random one elsewhere",
        min=0,
        max=2**31 - 1,
        must=GENERATION_SEEDS + ", or null",
    )

    def validate(self) -> None:
        for key, message in self.problems():
            raise ConfigError(key, message)

    def problems(self, prefix: str = "") -> list[tuple[str, str]]:
        """(key, message) for each option out of range, and for the options that contradict each other."""
        found = [(key.lstrip("."), message) for key, message in problems(self, prefix)]
        if self.min_new_tokens > self.max_new_tokens:
            limits = f"({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})"
            found.append((f"{prefix}.min_new_tokens".lstrip("."), limits))
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            found.append(
                (
                    f"{prefix}.num_return_sequences".lstrip("."),
                    "greedy decoding gives one sequence per prompt (num_beams at most); sample (--do-sample) or ask "
                    "for fewer",
                )
            )
        return found


@dataclass
class GenerateConfig(GenerationOptions):
    """The samples printed during and after training."""

    prompts: list = setting(["The"], "prompts sampled during and after training")


@dataclass
class HubConfig:
    push: bool = setting(False, "push to the Hub during and after training")
    model_id: Optional[str] = setting(None, '"user/name"; default: the output dir\'s name under your user')
    private: bool = setting(False, "create the repo as private")
    save_strategy: Literal["epoch", "steps", "no"] = setting(
        "epoch", "push at each epoch end, every hub.save_steps steps, or only at the end (no)"
    )
    save_steps: Optional[int] = setting(None, "with save_strategy: steps", min=1)
    checkpoint: bool = setting(False, "also push checkpoints/")
    max_retries: int = setting(3, "per push, with exponential backoff; a push that still fails is reported", min=0)


@dataclass
class LoggingConfig:
    report_to: list = setting(
        ["tensorboard"], "where metrics go: any of tensorboard (OUTPUT_DIR/logs), mlflow, wandb; or [none]"
    )
    project: str = setting("tfclm", "the MLflow experiment or W&B project the run goes to")
    run_name: Optional[str] = setting(None, "the run's name in MLflow and W&B; null: the output dir's name")
    log_model: bool = setting(False, "also upload the saved model (not checkpoints or cache) to MLflow and W&B")
    every_n_steps: int = setting(10, "step-level scalars and curve points", min=1)
    sample_every_n_epochs: Optional[int] = setting(
        1, "sample generate.prompts during training; null: only at the end", min=1
    )
    curves: bool = setting(True, "draw OUTPUT_DIR/training_curves.png")


@dataclass
class Config:
    output_dir: str = setting(
        "runs/default", "where the model, tokenizer, tfclm.yaml, results.json, logs and checkpoints go"
    )
    data: DataConfig = section(DataConfig, "where the text comes from and how it becomes blocks")
    tokenizer: TokenizerConfig = section(TokenizerConfig, "the tokenizer")
    model: ModelConfig = section(ModelConfig, "the model to fine-tune or build")
    train: TrainConfig = section(TrainConfig, "optimizer, schedule, precision and distribution")
    lora: LoraConfig = section(LoraConfig, "parameter-efficient fine-tuning: low-rank adapters, saved as PEFT does")
    preference: PreferenceConfig = section(
        PreferenceConfig, "preference tuning (DPO) on data.format: preference: the loss and the reference model"
    )
    evaluate: EvaluateConfig = section(EvaluateConfig, "perplexity on the validation split")
    generate: GenerateConfig = section(GenerateConfig, "samples during and after training")
    hub: HubConfig = section(HubConfig, "pushing to the Hugging Face Hub")
    logging: LoggingConfig = section(LoggingConfig, "TensorBoard, MLflow and W&B, step logs and curves")
