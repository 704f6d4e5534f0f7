"""`tfclm serve`: a trained model behind OpenAI's completions and chat completions API, and a page to try it.

Example, in Python (what `python -m tfclm serve --model runs/default` runs)::

    from tfclm.serve.app import Server
    Server("runs/default").run(host="127.0.0.1", port=8000)

and from any OpenAI client::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="default", prompt="The list type", max_tokens=20)

Requests are read on the event loop and decoded on the batcher's thread; each
request's tokens come back through an asyncio queue, as server-sent events when
it streams.
"""

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from tfclm.data import chat
from tfclm.errors import first_line
from tfclm.serve import answers
from tfclm.serve.batcher import Batcher
from tfclm.serve.choices import Choice
from tfclm.serve.engine import Decoder, Row
from tfclm.serve.protocol import (
    CHAT_KEYS,
    COMPLETION_KEYS,
    APIError,
    bad,
    check_keys,
    decoding,
    flag,
    logprobs_of,
    messages_of,
    prompts_of,
)

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class Server:
    """One model dir served over HTTP; loading happens here, before anything binds a port."""

    def __init__(
        self,
        model_dir: str,
        name=None,
        api_key=None,
        max_batch=32,
        max_batches=1,
        max_queue=256,
        max_tokens=512,
        top_k=50,
        xla=True,
    ):
        from tfclm.model.loading import load_trained

        model, tokenizer = load_trained(model_dir)
        self.tokenizer = tokenizer
        self.decoder = Decoder(model, tokenizer, xla=xla)
        self.batcher = Batcher(self.decoder, max_batch=max_batch, max_queue=max_queue, max_batches=max_batches)
        self.name = name or os.path.basename(os.path.normpath(model_dir))
        self.api_key, self.max_tokens, self.top_k = api_key, max_tokens, top_k
        self.chat_stop = None  # the tokens that end a reply; None: no chat template
        if tokenizer.chat_template:
            chat.check_template(tokenizer, "--model")
            self.chat_stop = tuple(dict.fromkeys([tokenizer.eos_token_id, chat.end_of_turn_id(tokenizer)]))

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/models/{model_id:path}", self.model),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]
        handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _server_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.batcher.start()
        yield
        self.batcher.close()

    def run(self, host: str = "127.0.0.1", port: int = 8000, grace: float = 30.0) -> None:
        """Serve until SIGTERM or SIGINT, then let requests in flight finish (up to `grace` seconds)."""
        import uvicorn

        config = uvicorn.Config(self.app(), host=host, port=port, timeout_graceful_shutdown=grace, log_level="info")
        try:
            uvicorn.Server(config).run()
        finally:
            self.batcher.close(timeout=grace)

    # -- routes --------------------------------------------------------------------------------------------

    async def page(self, request):
        html = resources.files("tfclm.serve").joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL}}", _escape(self.name)))

    async def health(self, request):
        batcher = self.batcher
        counts = dict(batcher.counts, queued=batcher.queued, decoding=batcher.decoding, compiles=self.decoder.traces)
        return JSONResponse({"status": "ok", "model": self.name, "chat": self.chat_stop is not None, **counts})

    async def models(self, request):
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model(self, request):
        self._authorize(request)
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._card())

    async def completions(self, request):
        body = await self._body(request)
        check_keys(body, COMPLETION_KEYS, "/v1/completions")
        self._check_model(body.get("model"))
        settings = decoding(body, self.max_tokens, self.top_k, COMPLETION_DEFAULT_TOKENS)
        settings.logprobs, echo = logprobs_of(body, chat=False), flag(body, "echo")
        if echo and settings.logprobs is not None:
            raise bad("echo", "echo with logprobs (the prompt's own logprobs) is not supported; ask for one of them")
        prompts = prompts_of(body, len(self.tokenizer))
        encoded = [self._encode(p) for p in prompts]
        texts = [self.tokenizer.decode(ids) for ids in encoded] if echo else None
        answer = self._start(encoded, settings, (self.tokenizer.eos_token_id,), "prompt")
        return await self._respond(answer, answers.Completion(self.name, texts))

    async def chat_completions(self, request):
        body = await self._body(request)
        check_keys(body, CHAT_KEYS, "/v1/chat/completions")
        self._check_model(body.get("model"))
        if self.chat_stop is None:
            raise bad(
                "messages",
                f"the model {self.name!r} has no chat template; use /v1/completions, or train it on "
                "data.format: messages",
                code="no_chat_template",
            )
        settings = decoding(body, self.max_tokens, self.top_k, None)
        settings.logprobs = logprobs_of(body, chat=True)
        turns = messages_of(body)
        try:
            text = chat.prompt_text(self.tokenizer, turns)
        except Exception as exc:  # a template may raise on turns it does not take (two users in a row, ...)
            raise bad("messages", f"the model's chat template refuses these messages: {first_line(exc)}") from None
        answer = self._start([self._encode(text)], settings, self.chat_stop, "messages")
        return await self._respond(answer, answers.Chat(self.name))

    # -- requests --------------------------------------------------------------------------------------------

    def _authorize(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
            raise APIError(
                401, "missing or wrong API key: send the server's key as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )  # fmt: skip

    async def _body(self, request) -> dict:
        self._authorize(request)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the request body is not JSON; send a JSON object", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def _check_model(self, model) -> None:
        if model is not None and model != self.name:
            raise APIError(
                404, f"the model {model!r} does not exist here; this server serves {self.name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip

    def _card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "tfclm"}

    def _encode(self, prompt) -> list:
        return prompt if isinstance(prompt, list) else self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _start(self, encoded: list, settings, stop_ids: tuple, param: str) -> "Answer":
        """Check each prompt fits the context, then hand its rows (n per prompt) to the batcher."""
        budgets = [self._budget(ids, settings.max_tokens, param) for ids in encoded]
        answer = Answer(asyncio.get_running_loop(), settings, [len(ids) for ids in encoded])
        seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31 - 1)
        entries = []
        for ids, max_new in zip(encoded, budgets):
            key = self.decoder.key(len(ids), max_new, settings.top_k, stop_ids)
            for k in range(settings.n):
                choice = Choice(self.tokenizer, stop_ids, settings.stop, settings.logprobs)
                # Choice k of every prompt draws from (seed, k): what it would draw were its prompt alone.
                row = answer.row(choice, ids, max_new, seed=(seed, k))
                entries.append((key, row, answer.failer(len(entries))))
        self.batcher.submit(entries)
        return answer

    def _budget(self, ids: list, max_tokens, param: str) -> int:
        """The new tokens a prompt gets: max_tokens, or (chat's default) what the context and --max-tokens leave."""
        limit = self.decoder.limit
        if len(ids) >= limit:
            raise bad(param, f"is {len(ids)} tokens; the model takes {limit} in all", "context_length_exceeded")
        wanted = max_tokens or min(self.max_tokens, limit - len(ids))
        if len(ids) + wanted > limit:
            raise bad(
                "max_tokens",
                f"{wanted} new tokens after {len(ids)} prompt tokens exceed the model's {limit}; ask for at most "
                f"{limit - len(ids)}",
                "context_length_exceeded",
            )
        return wanted

    async def _respond(self, answer: "Answer", shape):
        if not answer.settings.stream:
            return JSONResponse(await answer.whole(shape))
        return StreamingResponse(answer.events(shape), media_type="text/event-stream")


class Answer:
    """One request's choices as the decoding thread fills them; read back as a whole, or as events."""

    def __init__(self, loop, settings, prompt_tokens: list):
        self.loop, self.settings, self.prompt_tokens = loop, settings, prompt_tokens
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices, self.rows = [], []
        self.id = secrets.token_hex(12)
        self.created = int(time.time())

    def row(self, choice: Choice, ids: list, max_new: int, seed: tuple) -> Row:
        index = len(self.choices)
        self.choices.append(choice)

        def emit(token, logprob, top_ids, top_logprobs, last):
            piece = choice.add(token, logprob, top_ids, top_logprobs, last)
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, piece))
            except RuntimeError:  # the event loop has closed: nobody is waiting any more
                return False
            return choice.finish is None

        settings = self.settings
        row = Row(ids, max_new, emit, temperature=settings.temperature, top_p=settings.top_p, seed=seed)
        self.rows.append(row)
        return row

    def failer(self, index: int):
        def fail(exc):
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, exc))
            except RuntimeError:
                pass

        return fail

    def cancel(self) -> None:
        """The client has gone: its rows stop at their next token, or are never decoded."""
        for row in self.rows:
            row.done = True

    async def pieces(self):
        """(choice index, piece) until every choice has finished; a failed batch raises."""
        remaining = len(self.choices)
        while remaining:
            index, piece = await self.queue.get()
            if isinstance(piece, Exception):
                raise piece if isinstance(piece, APIError) else APIError(500, f"decoding failed: {piece}")
            remaining -= piece.finish is not None
            yield index, piece

    async def whole(self, shape) -> dict:
        try:
            async for index, piece in self.pieces():
                shape.collect(index, piece)
        finally:
            self.cancel()
        return shape.response(self)

    async def events(self, shape):
        try:
            for chunk in shape.opening(self):
                yield _event(chunk)
            async for index, piece in self.pieces():
                if piece.text or piece.finish or piece.logprobs:
                    yield _event(shape.chunk(self, index, piece))
            if self.settings.include_usage:
                yield _event(shape.usage_chunk(self))
            yield "data: [DONE]\n\n"
        except APIError as exc:
            yield _event(exc.body())
        finally:
            self.cancel()

    def usage(self) -> dict:
        made = sum(choice.made for choice in self.choices)
        prompt = sum(self.prompt_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made}


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


async def _api_error(request, exc: APIError):
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request, exc: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}; the API is under /v1"
    return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code)


async def _server_error(request, exc: Exception):
    error = APIError(500, f"the server failed on this request ({type(exc).__name__}: {exc})", code="server_error")
    return JSONResponse(error.body(), status_code=500)
