"""OpenAI's HTTP API as far as tfclm serves it: a request's body checked and read, and its errors' shape.

Every parameter a client may send is read here, once: a value out of range is a
400 naming it, and a parameter of OpenAI's that tfclm cannot honour (penalties,
logit_bias, tools, ...) is refused when set, never silently ignored.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}
STOP_STRINGS = 4  # OpenAI's limit on `stop`

# Parameters of OpenAI's whose one value tfclm honours is their default: any other is refused.
NOT_HONOURED = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "best_of": (1,),
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "response_format": ({"type": "text"},),
    "parallel_tool_calls": (False,),
}
SHARED = {"model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n", "stream", "stream_options"}
SHARED |= {"user", "logprobs"}
COMPLETION_KEYS = SHARED | {"prompt", "echo"}
CHAT_KEYS = SHARED | {"messages", "max_completion_tokens", "top_logprobs"}


class APIError(Exception):
    """A request the server answers with an OpenAI-shaped error: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


@dataclass
class Decoding:
    """What one request asks of decoding; `max_tokens` None: as many as the context leaves (chat's default)."""

    max_tokens: Optional[int]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: Optional[int] = None
    stop: list = field(default_factory=list)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: Optional[int] = None  # how many alternatives to list per token; None: no logprobs


def number(body: dict, name: str, default, kind=float, low=None, high=None):
    """body[name] as `kind` within [low, high], or a 400 naming it; JSON's null means the default."""
    value = body.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise bad(name, f"must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise bad(name, f"must be between {low} and {high}, not {value!r}")
    return kind(value)


def flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, not {value!r}")
    return value


def check_keys(body: dict, known: set, route: str) -> None:
    """Refuse what the server would not honour: unknown parameters, and OpenAI's it cannot do at a non-default."""
    for name, value in body.items():
        if name in NOT_HONOURED:
            if value is not None and value not in NOT_HONOURED[name]:
                raise bad(name, f"tfclm serve does not support {name}; leave it out", code="unsupported_parameter")
        elif name not in known:
            raise bad(name, f"unknown parameter for {route}; see `python -m tfclm serve --help`", "unknown_parameter")


def decoding(body: dict, max_tokens_cap: int, top_k: int, default_max: Optional[int]) -> Decoding:
    """The decoding settings of a completion or chat request."""
    max_tokens = number(body, "max_tokens", default_max, int, 1, max_tokens_cap)
    max_tokens = number(body, "max_completion_tokens", max_tokens, int, 1, max_tokens_cap)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise bad("stop", f"must be a text or a list of at most {STOP_STRINGS} non-empty texts")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options", 'only {"include_usage": true|false} is supported')
    stream = flag(body, "stream")
    if options and not stream:
        raise bad("stream_options", "is only allowed with stream: true")
    return Decoding(
        max_tokens=max_tokens,
        temperature=number(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=number(body, "top_p", 1.0, float, 0.0, 1.0) or 1e-9,  # top_p 0 keeps the likeliest token alone
        top_k=number(body, "top_k", top_k, int, 0, 10**6),
        seed=number(body, "seed", None, int, 0, 2**31 - 1),
        stop=stop,
        n=number(body, "n", 1, int, 1, 16),
        stream=stream,
        include_usage=flag(options, "include_usage"),
    )


def prompts_of(body: dict, vocab: int) -> list:
    """A completion request's prompts: each a text, or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad("prompt", "must be a text, a list of texts, or token ids", code="missing_prompt")
    for item in prompt:
        if isinstance(item, str) and item:
            continue
        if not (isinstance(item, list) and item and all(_is_id(t) and t < vocab for t in item)):
            raise bad("prompt", f"each prompt must be non-empty text or a list of token ids below {vocab}")
    return prompt


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def messages_of(body: dict) -> tuple:
    """A chat request's turns as ((role, text), ...); text parts of a content list are joined."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of {role, content} messages", code="missing_messages")
    turns = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise bad(f"messages[{k}]", "must be an object with role system, user or assistant, and content")
        turns.append((message["role"], _content(message.get("content"), k)))
    return tuple(turns)


def _content(content, k: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        if all(isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
    raise bad(f"messages[{k}].content", "must be text (or a list of text parts); tfclm serves text models")


def logprobs_of(body: dict, chat: bool) -> Optional[int]:
    """How many alternatives per token a request wants listed; None: no logprobs."""
    from tfclm.serve.engine import TOP_LOGPROBS

    if chat:
        wanted = flag(body, "logprobs")
        top = number(body, "top_logprobs", None, int, 0, TOP_LOGPROBS)
        if top is not None and not wanted:
            raise bad("top_logprobs", "needs logprobs: true")
        return (top or 0) if wanted else None
    return number(body, "logprobs", None, int, 0, TOP_LOGPROBS)
