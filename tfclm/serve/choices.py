"""One choice of an answer, as its tokens arrive: its text, where it stops, and what may be sent yet.

Text goes out only once it is final: a token that ends inside a UTF-8
character waits for the rest of it, and text that could be the start of a
stop string waits until it is not (a stop string is never sent, nor anything
after it).
"""

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Piece:
    """What one token adds to a choice: the text that may go out now, and its logprobs if asked for."""

    text: str
    finish: Optional[str] = None  # "stop" or "length" on the choice's last piece
    logprobs: list = field(default_factory=list)  # [(token text, logprob, [(alternative, logprob), ...]), ...]


class Choice:
    """Turns a row's tokens into text to send; `finish` is set once it ends."""

    def __init__(self, tokenizer, stop_ids, stop_strings=(), logprobs: Optional[int] = None):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.stop_strings = list(stop_strings)
        self.logprobs = logprobs
        self.ids, self.sent, self.made, self.text = [], 0, 0, ""
        self.finish: Optional[str] = None

    def add(self, token: int, logprob: float, top_ids: list, top_logprobs: list, last: bool) -> Piece:
        """The piece token `token` adds; `last`: the decoder makes no more for this row."""
        self.made += 1
        if token in self.stop_ids:
            self.finish = "stop"
        else:
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            text, self.finish = text[:cut], "stop"
        if last and self.finish is None:
            self.finish = "length"
        self.text = text
        end = len(text) if self.finish else len(text) - self._held(text)
        end = max(end, self.sent)
        piece = Piece(text[self.sent : end], self.finish, self._logprobs(token, logprob, top_ids, top_logprobs))
        self.sent = end
        return piece

    def _held(self, text: str) -> int:
        """How many characters at the end of `text` must wait: a part of a character, or a stop string's start."""
        if text.endswith("\ufffd"):
            return len(text) - len(text.rstrip("\ufffd"))
        return max((k for s in self.stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _logprobs(self, token, logprob, top_ids, top_logprobs) -> list:
        if self.logprobs is None or token in self.stop_ids:
            return []
        decode = self.tokenizer.decode
        alternatives = [(decode([i]), lp) for i, lp in zip(top_ids[: self.logprobs], top_logprobs[: self.logprobs])]
        return [(decode([token]), logprob, alternatives)]
