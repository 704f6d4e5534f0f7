"""tfclm serve: OpenAI's own client against a real server on 127.0.0.1, answers equal to `tfclm generate`,
batching that changes no answer, OpenAI-shaped errors, dropped streams, SIGTERM, and the chat page in Chromium."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import run_cli, tree

pytestmark = pytest.mark.slow
KEY = "test-key-not-a-secret"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class Served:
    """`python -m tfclm serve` in a subprocess on a free loopback port, stopped by the test."""

    def __init__(self, model_dir, *args):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(os.path.dirname(model_dir), f"serve-{self.port}.log"), "w+")
        command = [sys.executable, "-m", "tfclm", "serve", "--model", model_dir, "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError("the server did not start: " + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def post(self, path, body, key=KEY, **kwargs):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=120, **kwargs)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.log.close()


@pytest.fixture(scope="module")
def text_server(trained_dir, tmp_path_factory):
    model = str(tmp_path_factory.mktemp("serve") / "pydoc")
    shutil.copytree(trained_dir[0], model)
    before = tree(model)
    server = Served(model, "--api-key", KEY)
    yield server
    server.stop()
    assert tree(model) == before  # every request, bad ones too, only ever read the model dir


@pytest.fixture(scope="module")
def chat_dir(trained_dir, tmp_path_factory):
    """The trained dir with a chat template that adds no token: a reply ends at EOS."""
    model = str(tmp_path_factory.mktemp("serve") / "pydoc-chat")
    shutil.copytree(trained_dir[0], model)
    path = os.path.join(model, "tokenizer_config.json")
    config = json.load(open(path))
    config["chat_template"] = CHAT_TEMPLATE
    json.dump(config, open(path, "w"))
    return model


@pytest.fixture(scope="module")
def chat_server(chat_dir):
    server = Served(chat_dir, "--name", "pydoc-chat", "--max-queue", "64")
    yield server
    server.stop()


def client(server, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def generate_json(model_dir, *args):
    result = run_cli(["generate", "--model", model_dir, "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_the_openai_client_lists_the_model_and_completes_as_tfclm_generate(text_server, trained_dir):
    api = client(text_server)
    assert [m.id for m in api.models.list().data] == ["pydoc"]
    greedy = api.completions.create(model="pydoc", prompt="The list type", max_tokens=12, temperature=0)
    (expected,) = generate_json(trained_dir[0], "--prompt", "The list type", "--greedy", "--max-new-tokens", "12")
    assert greedy.choices[0].text == expected["completion"]
    assert greedy.usage.prompt_tokens == expected["prompt_tokens"]
    assert greedy.usage.completion_tokens == expected["new_tokens"]
    assert greedy.choices[0].finish_reason == ("stop" if expected["stopped_at_eos"] else "length")

    chunks = list(
        api.completions.create(model="pydoc", prompt="The list type", max_tokens=12, temperature=0, stream=True)
    )
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == greedy.choices[0].text

    # A seed draws what `tfclm generate --seed` draws with the same settings, and the same again.
    # top_k is tfclm's extension of the API: the client sends it in extra_body.
    sampling = dict(temperature=0.9, top_p=0.9, seed=3, max_tokens=16, extra_body={"top_k": 20})
    first, again = (api.completions.create(model="pydoc", prompt="Return the", **sampling) for _ in range(2))
    (drawn,) = generate_json(
        trained_dir[0], "--prompt", "Return the", "--seed", "3", "--temperature", "0.9", "--top-p", "0.9",
        "--top-k", "20", "--max-new-tokens", "16",
    )  # fmt: skip
    assert first.choices[0].text == again.choices[0].text == drawn["completion"]
    other = api.completions.create(model="pydoc", prompt="Return the", **{**sampling, "seed": 4})
    assert other.choices[0].text != first.choices[0].text


def test_several_prompts_n_choices_echo_stop_and_logprobs(text_server):
    api = client(text_server)
    alone = [
        api.completions.create(model="pydoc", prompt=p, max_tokens=8, temperature=0).choices[0].text
        for p in ("A", "B c")
    ]
    both = api.completions.create(model="pydoc", prompt=["A", "B c"], max_tokens=8, temperature=0)
    assert [c.text for c in both.choices] == alone
    three = api.completions.create(model="pydoc", prompt="The", max_tokens=8, n=3, seed=1, extra_body={"top_k": 0})
    assert len({c.text for c in three.choices}) > 1  # each choice its own draw
    echoed = api.completions.create(model="pydoc", prompt="A", max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == "A" + alone[0]
    stop = alone[0][3:5]
    stopped = api.completions.create(model="pydoc", prompt="A", max_tokens=8, temperature=0, stop=[stop])
    assert stopped.choices[0].text == alone[0][: alone[0].index(stop)] and stopped.choices[0].finish_reason == "stop"
    streamed = api.completions.create(model="pydoc", prompt="A", max_tokens=8, temperature=0, stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text
    scored = api.completions.create(model="pydoc", prompt="A", max_tokens=4, temperature=0, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == 4 and all(lp <= 0 for lp in logprobs.token_logprobs)
    # Greedy takes the likeliest token: it heads its own list of alternatives.
    assert [max(top, key=top.get) for top in logprobs.top_logprobs] == logprobs.tokens


def test_chat_completions_whole_and_streamed(chat_server, chat_dir):
    api = client(chat_server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    whole = api.chat.completions.create(model="pydoc-chat", messages=messages, max_tokens=20, temperature=0)
    reply = whole.choices[0].message
    assert reply.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 20 and whole.usage.prompt_tokens > 5
    result = run_cli(
        ["generate", "--model", chat_dir, "--chat", "--system", "Be brief.", "--prompt", "What is a list?",
         "--greedy", "--max-new-tokens", "20", "--json"]
    )  # fmt: skip
    assert json.loads(result.output.splitlines()[-1])["completion"] == reply.content
    chunks = list(
        api.chat.completions.create(
            model="pydoc-chat",
            messages=messages,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    seeded = [
        api.chat.completions.create(model="pydoc-chat", messages=messages, max_tokens=12, seed=9) for _ in range(2)
    ]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content


def test_thirty_two_concurrent_clients_get_their_own_answers_in_batches(text_server):
    prompts = [f"The {word} of" for word in "list type value key object item index name".split()] * 4
    prompts = [f"{p}{' x' * (i // 8)}" for i, p in enumerate(prompts)]
    api = client(text_server)

    def ask(prompt):
        return api.completions.create(model="pydoc", prompt=prompt, max_tokens=10, temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    before = text_server.health()
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, prompts))
    after = text_server.health()
    assert together == alone
    assert after["batches_of_more_than_one"] > before["batches_of_more_than_one"]
    assert after["largest_batch"] > 1


BAD = [
    ("completions", b"{not json", 400, "invalid_json", None),
    ("completions", [1, 2], 400, "invalid_json", None),
    ("completions", {"max_tokens": 4}, 400, "missing_prompt", "prompt"),
    ("completions", {"prompt": "A", "temperature": 5}, 400, "invalid_value", "temperature"),
    ("completions", {"prompt": "A", "max_tokens": "many"}, 400, "invalid_value", "max_tokens"),
    ("completions", {"prompt": "A", "presence_penalty": 1}, 400, "unsupported_parameter", "presence_penalty"),
    ("completions", {"prompt": "A", "temprature": 1}, 400, "unknown_parameter", "temprature"),
    ("completions", {"prompt": [[5] * 300]}, 400, "context_length_exceeded", "prompt"),
    ("completions", {"prompt": "A", "max_tokens": 400}, 400, "context_length_exceeded", "max_tokens"),
    ("completions", {"prompt": "A", "max_tokens": 600}, 400, "invalid_value", "max_tokens"),
    ("completions", {"prompt": "A", "echo": True, "logprobs": 1}, 400, "invalid_value", "echo"),
    ("completions", {"prompt": "A", "model": "gpt-4"}, 404, "model_not_found", "model"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, 400, "no_chat_template", "messages"),
]


@pytest.mark.parametrize("route, body, status, code, param", BAD, ids=[f"{b[2]}-{b[3]}" for b in BAD])
def test_a_bad_request_gets_its_status_and_an_openai_error_then_a_good_one_is_answered(
    text_server, route, body, status, code, param
):
    if isinstance(body, bytes):
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        response = httpx.post(f"{text_server.url}/v1/{route}", content=body, headers=headers)
    else:
        response = text_server.post(f"/v1/{route}", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param and error["message"] and error["type"]
    good = text_server.post("/v1/completions", {"prompt": "A", "max_tokens": 2})
    assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"]


def test_keys_unknown_paths_and_a_full_queue(text_server, chat_server):
    for key in (None, "wrong"):
        response = text_server.post("/v1/completions", {"prompt": "A"}, key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(text_server.url + "/v1/models").status_code == 401
    assert httpx.get(text_server.url + "/health").status_code == 200  # probes need no key
    missing = text_server.post("/v1/embeddings", {"input": "A"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # 5 prompts x 16 choices are 80 rows, past the chat server's --max-queue 64.
    full = chat_server.post("/v1/completions", {"prompt": ["A"] * 5, "n": 16, "max_tokens": 2}, key=None)
    assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
    assert chat_server.post("/v1/completions", {"prompt": "A", "max_tokens": 2}, key=None).status_code == 200


def test_streams_dropped_mid_way_free_their_rows(chat_server):
    body = {"prompt": "The", "max_tokens": 200, "stream": True, "top_k": 0}
    for _ in range(3):
        with httpx.stream("POST", chat_server.url + "/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            next(response.iter_lines())
    deadline = time.time() + 60
    while chat_server.health()["decoding"] or chat_server.health()["queued"]:
        assert time.time() < deadline, chat_server.health()
        time.sleep(0.2)
    answer = chat_server.post("/v1/completions", {"prompt": "A", "max_tokens": 3}, key=None)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 3


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(chat_dir):
    server = Served(chat_dir)
    try:
        outcome = {}
        body = {"prompt": "The", "max_tokens": 120, "top_k": 0, "seed": 1}
        worker = threading.Thread(target=lambda: outcome.update(r=server.post("/v1/completions", body, key=None)))
        worker.start()
        deadline = time.time() + 60
        while not server.health()["decoding"]:
            assert time.time() < deadline
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.output()
        worker.join(60)
        assert outcome["r"].status_code == 200
        assert outcome["r"].json()["usage"]["completion_tokens"] > 0
    finally:
        server.stop()


def test_help_lists_every_option_and_a_bad_model_dir_is_one_line(tmp_path):
    result = run_cli(["serve", "--help"])
    for option in ("--model", "--host", "--port", "--api-key", "--max-batch", "--max-queue", "--grace", "Example"):
        assert option in result.output
    missing = run_cli(["serve", "--model", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "--model" in missing.output and "Traceback" not in missing.output


def test_the_page_streams_a_reply_in_chromium(chat_server):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: apt-get install chromium (.ci/run does)"
    messages = [{"role": "user", "content": "What is a list?"}]
    settings = {"max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "top_k": 50, "seed": 5}
    answer = chat_server.post("/v1/chat/completions", {"messages": messages, **settings}, key=None)
    expected = answer.json()["choices"][0]["message"]["content"]
    assert expected.strip()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(chat_server.url + "/")
        page.wait_for_function("document.getElementById('mode').textContent === 'chat'")
        for name, value in settings.items():
            page.fill(f"#{name}", str(value))
        # Count the reply's updates: a streamed reply grows in several steps, not in one.
        page.evaluate(
            "window.updates = 0; new MutationObserver(() => window.updates++)"
            ".observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true})"
        )
        page.fill("#input", "What is a list?")
        page.press("#input", "Enter")
        page.wait_for_selector(".turn.user")
        page.wait_for_function("!document.getElementById('send').disabled", timeout=60000)
        replies = page.locator(".turn.assistant").all_text_contents()
        updates = page.evaluate("window.updates")
        page.screenshot(path=os.path.join(os.path.dirname(chat_server.log.name), "page.png"))
        browser.close()
    assert replies == [expected]
    assert updates > 3
