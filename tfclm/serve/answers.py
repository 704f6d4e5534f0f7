"""The JSON of an answer, whole or as stream chunks: `Completion` for /v1/completions, `Chat` for chat.

Each shape collects the pieces of its choices (`collect`), then writes the
response (`response`); a stream instead gets `opening`, one `chunk` a piece
and, when asked for, `usage_chunk`.
"""


class Completion:
    """/v1/completions: `text` per choice; `texts` are the prompts to echo, or None."""

    object, chunk_object = "text_completion", "text_completion"

    def __init__(self, model: str, texts=None):
        self.model, self.texts = model, texts
        self.parts, self.logprobs = {}, {}

    def _echo(self, answer, index: int) -> str:
        return self.texts[index // answer.settings.n] if self.texts else ""

    def collect(self, index: int, piece) -> None:
        self.parts.setdefault(index, []).append(piece.text)
        self.logprobs.setdefault(index, []).extend(piece.logprobs)

    def response(self, answer) -> dict:
        choices = []
        for index, choice in enumerate(answer.choices):
            text = self._echo(answer, index) + "".join(self.parts.get(index, []))
            logprobs = self._logprobs(self.logprobs.get(index, [])) if answer.settings.logprobs is not None else None
            choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": choice.finish})
        return self._head(answer, self.object) | {"choices": choices, "usage": answer.usage()}

    def opening(self, answer) -> list:
        if not self.texts:
            return []
        return [
            self._chunk(answer, index, self._echo(answer, index), None, None) for index in range(len(answer.choices))
        ]

    def chunk(self, answer, index: int, piece) -> dict:
        logprobs = self._logprobs(piece.logprobs) if answer.settings.logprobs is not None else None
        return self._chunk(answer, index, piece.text, piece.finish, logprobs)

    def _chunk(self, answer, index, text, finish, logprobs) -> dict:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return self._head(answer, self.chunk_object) | {"choices": [choice]}

    def usage_chunk(self, answer) -> dict:
        return self._head(answer, self.chunk_object) | {"choices": [], "usage": answer.usage()}

    def _head(self, answer, kind: str) -> dict:
        return {"id": f"cmpl-{answer.id}", "object": kind, "created": answer.created, "model": self.model}

    @staticmethod
    def _logprobs(entries: list) -> dict:
        """The legacy completions layout: parallel lists of tokens, their logprobs and the alternatives."""
        offsets, at = [], 0
        for token, _, _ in entries:
            offsets.append(at)
            at += len(token)
        return {
            "tokens": [token for token, _, _ in entries],
            "token_logprobs": [logprob for _, logprob, _ in entries],
            "top_logprobs": [dict(alternatives) for _, _, alternatives in entries],
            "text_offset": offsets,
        }


class Chat(Completion):
    """/v1/chat/completions: a `message` per choice, streamed as `delta`s."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"

    def response(self, answer) -> dict:
        choices = []
        for index, choice in enumerate(answer.choices):
            message = {"role": "assistant", "content": "".join(self.parts.get(index, []))}
            logprobs = self._logprobs(self.logprobs.get(index, [])) if answer.settings.logprobs is not None else None
            choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": choice.finish})
        return self._head(answer, self.object) | {"choices": choices, "usage": answer.usage()}

    def opening(self, answer) -> list:
        return [
            self._delta(answer, index, {"role": "assistant", "content": ""}, None, None)
            for index in range(len(answer.choices))
        ]

    def chunk(self, answer, index: int, piece) -> dict:
        logprobs = self._logprobs(piece.logprobs) if answer.settings.logprobs is not None else None
        return self._delta(answer, index, {"content": piece.text} if piece.text else {}, piece.finish, logprobs)

    def _delta(self, answer, index, delta, finish, logprobs) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return self._head(answer, self.chunk_object) | {"choices": [choice]}

    def _head(self, answer, kind: str) -> dict:
        return {"id": f"chatcmpl-{answer.id}", "object": kind, "created": answer.created, "model": self.model}

    @staticmethod
    def _logprobs(entries: list) -> dict:
        """The chat layout: one entry a token, with its bytes and the likeliest alternatives."""

        def entry(token, logprob):
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

        content = [
            entry(token, logprob) | {"top_logprobs": [entry(t, lp) for t, lp in alternatives]}
            for token, logprob, alternatives in entries
        ]
        return {"content": content}
