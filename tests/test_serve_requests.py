"""tfclm serve's reading of requests and its streaming of text, without a server: each bad value is a 400 that
names its parameter, and streamed pieces add up to the answer, never sending a stop string or half a character."""

import pytest

from tfclm.serve.choices import Choice
from tfclm.serve.protocol import COMPLETION_KEYS, APIError, check_keys, decoding, messages_of, prompts_of

BAD_SETTINGS = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"top_k": 1.5}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 513}, "max_tokens"),
    ({"n": 17}, "n"),
    ({"seed": -1}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, "stream_options"),
    ({"temperature": float("nan")}, "temperature"),
]


@pytest.mark.parametrize("body, param", BAD_SETTINGS)
def test_a_bad_setting_is_a_400_naming_it(body, param):
    with pytest.raises(APIError) as caught:
        decoding(body, max_tokens_cap=512, top_k=50, default_max=16)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.body()["error"]["message"].startswith(param)


def test_settings_read_with_their_defaults():
    read = decoding({"stop": "\n", "seed": 3, "temperature": 0}, max_tokens_cap=512, top_k=40, default_max=16)
    read_back = (read.max_tokens, read.temperature, read.top_p, read.top_k, read.seed, read.stop)
    assert read_back == (16, 0.0, 1.0, 40, 3, ["\n"])
    chat = decoding({"max_completion_tokens": 7}, max_tokens_cap=512, top_k=50, default_max=None)
    assert chat.max_tokens == 7


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"prompt": "A", "frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        ({"prompt": "A", "tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
        ({"prompt": "A", "promt": "B"}, "promt", "unknown_parameter"),
    ],
)
def test_what_the_server_cannot_honour_is_refused(body, param, code):
    with pytest.raises(APIError) as caught:
        check_keys(body, COMPLETION_KEYS, "/v1/completions")
    assert (caught.value.param, caught.value.code) == (param, code)
    check_keys({"prompt": "A", "frequency_penalty": 0, "logit_bias": {}}, COMPLETION_KEYS, "/v1/completions")


def test_prompts_and_messages():
    assert prompts_of({"prompt": "A"}, 10) == ["A"]
    assert prompts_of({"prompt": [1, 2]}, 10) == [[1, 2]]
    assert prompts_of({"prompt": ["A", [3]]}, 10) == ["A", [3]]
    for prompt in (None, "", [], [""], [[11]], [[-1]], 5):
        with pytest.raises(APIError) as caught:
            prompts_of({"prompt": prompt}, 10)
        assert caught.value.param == "prompt"
    parts = {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
    assert messages_of({"messages": [parts]}) == (("user", "Hi there"),)
    for messages, param in (
        ([], "messages"),
        ([{"role": "tool", "content": "x"}], "messages[0]"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
    ):
        with pytest.raises(APIError) as caught:
            messages_of({"messages": messages})
        assert caught.value.param == param


def stream(tokenizer, text, stop_strings, last_at=None):
    """Feed `text`'s tokens to a Choice one by one: the pieces sent, and the choice."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    choice = Choice(tokenizer, {tokenizer.eos_token_id}, stop_strings)
    pieces = []
    for k, token in enumerate(ids):
        pieces.append(choice.add(token, -1.0, [], [], last=k == len(ids) - 1))
        if choice.finish:
            break
    return pieces, choice


def test_streamed_pieces_add_up_and_never_send_a_stop_string(tokenizers):
    tokenizer = tokenizers[False]
    text = "The list type is a mutable sequence. Return the value"
    pieces, choice = stream(tokenizer, text, ["mutable"])
    sent = "".join(p.text for p in pieces)
    assert sent == tokenizer.decode(tokenizer(text)["input_ids"]).split("mutable")[0]
    assert choice.finish == "stop" and "mut" not in sent
    whole, choice = stream(tokenizer, text, [])
    assert "".join(p.text for p in whole) == choice.text and choice.finish == "length"
    assert sum(1 for p in whole if p.text) > 3


def test_half_a_character_waits_for_the_rest(tokenizers):
    tokenizer = tokenizers[False]
    text = "caf\u00e9 \u2192 na\u00efve"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(len(ids)))  # a token ends mid-character
    pieces, choice = stream(tokenizer, text, [])
    assert all("\ufffd" not in p.text for p in pieces)
    assert "".join(p.text for p in pieces) == choice.text
