"""Sampling text from a trained model."""
from dataclasses import dataclass

from tfclm.backend import load
from tfclm.errors import ConfigError

tf, keras = load()


@dataclass
class Sample:
    prompt: str
    completion: str
    new_tokens: int

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def generate_samples(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 100,
    do_sample: bool = True,
    top_k: int = 50,
    top_p: float = 0.95,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[Sample]:
    """Complete each prompt; prompts run as one left-padded batch. The same seed gives the same text."""
    from tfclm.modeling import n_positions

    if not prompts or any(not p for p in prompts):
        raise ConfigError("prompt", "prompts must be non-empty text; pass --prompt 'Some text'")
    if max_new_tokens < 0:
        raise ConfigError("max_new_tokens", f"must be 0 or more, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError("top_p", f"must be in (0, 1], got {top_p}")
    if num_return_sequences > 1 and not do_sample:
        raise ConfigError("num_return_sequences", "greedy decoding gives one sequence per prompt; sample (--do-sample) or ask for 1")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts, return_tensors="tf", padding=True, add_special_tokens=False)
    prompt_len = int(encoded["input_ids"].shape[1])
    limit = n_positions(model)
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ConfigError("max_new_tokens", f"the prompt ({prompt_len} tokens) plus {max_new_tokens} new tokens exceed the model's {limit} positions; lower max_new_tokens or shorten the prompt")
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        options.update(top_k=top_k, top_p=top_p, temperature=temperature)
        if seed is not None:
            options["seed"] = [int(seed), 0]
    output = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], **options).numpy()
    samples = []
    for row, sequence in enumerate(output):
        new = [int(t) for t in sequence[prompt_len:]]
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id) + 1]
        samples.append(Sample(prompts[row // num_return_sequences], tokenizer.decode(new, skip_special_tokens=True), len(new)))
    return samples
