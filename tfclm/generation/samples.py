"""What every generator returns (a `Sample` per text), and chat replies through any generator."""

from dataclasses import dataclass

from tfclm.data import chat
from tfclm.errors import ConfigError


@dataclass
class Sample:
    prompt: str
    completion: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    stopped_at_eos: bool = False  # ended with EOS, not at max_new_tokens

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def chat_replies(generator, conversations: list, system: str | None = None, **options) -> list[Sample]:
    """`generator`'s replies to `conversations`, rendered with its tokenizer's chat template and stopped at the
    end-of-turn token; `generator(prompts, stop_token_ids=..., **options)` decodes them (TF or LiteRT)."""
    tok = generator.tokenizer
    if not tok.chat_template:
        raise ConfigError(
            "--chat",
            "this model's tokenizer has no chat template; train it on data.format: messages (tfclm adds one), "
            "or leave out --chat",
        )
    chat.check_template(tok, "--chat")
    prompts = [chat.prompt_text(tok, _turns(c), system) for c in conversations]
    return generator(prompts, stop_token_ids=[chat.end_of_turn_id(tok)], **options)


def _turns(conversation) -> tuple:
    if isinstance(conversation, str):
        return (("user", conversation),)
    if not isinstance(conversation, (list, tuple)) or not all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
        for t in conversation
    ):
        raise ConfigError("messages", "a conversation is a text or a list of {'role': ..., 'content': ...} turns")
    return tuple((t["role"], t["content"]) for t in conversation)
