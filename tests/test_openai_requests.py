"""server/openai/requests.py: parsing chat, completion and embedding requests, and the
helpers the server uses on them (per-choice seeds, the context-fitted budget, vocabulary checks)."""

import json

import pytest

from smallmind.engine.sampling_params import SamplingParams
from smallmind.errors import RequestValidationError
from smallmind.server.config import ServerOptions
from smallmind.server.openai import errors, requests
from tests.openai_bodies import (
    DEFAULTS,
    MESSAGES,
    chat_body,
    chat_error,
    completion_body,
    completion_error,
    embedding_body,
    embedding_error,
    rejected,
)

# --------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------


def test_chat_minimal_uses_defaults():
    defaults = SamplingParams(max_tokens=7, temperature=0.3, top_p=0.5, top_k=3, min_p=0.2)
    req = requests.parse_chat(chat_body(), defaults)
    assert isinstance(req, requests.ChatRequest)
    assert req.messages == MESSAGES
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p) == (7, 0.3, 0.5, 3, 0.2)
    assert s.seed is None and s.logit_bias == {}
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.0, 0.0, 1.0)
    assert not req.max_tokens_given
    assert (req.stop, req.n, req.stream, req.include_usage, req.model) == ([], 1, False, False, None)


def test_server_settings_give_the_defaults():
    defaults = ServerOptions(default_temperature=0.3, default_top_k=0).sampling_defaults()
    s = requests.parse_completion(completion_body(), defaults).sampling
    assert (s.temperature, s.top_k, s.top_p) == (0.3, 0, SamplingParams.top_p)


def test_chat_all_fields():
    req = requests.parse_chat(
        chat_body(
            model="gemma",
            max_tokens=50,
            temperature=0,
            top_p=1,
            top_k=0,
            min_p=0,
            seed=-3,
            stop=["\n", "END"],
            presence_penalty=-2,
            frequency_penalty=2,
            repetition_penalty=1.1,
            logit_bias={"15": -100, "7": 2.5},
            n=8,
            stream=True,
            stream_options={"include_usage": True},
            user="u1",
        ),
        DEFAULTS,
    )
    s = req.sampling
    assert s == SamplingParams(
        max_tokens=50,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        seed=-3,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        repetition_penalty=1.1,
        logit_bias={15: -100.0, 7: 2.5},
    )
    assert s.logit_bias == {15: -100.0, 7: 2.5}
    assert isinstance(s.temperature, float) and isinstance(s.top_p, float)
    assert req.max_tokens_given
    assert req.stop == ["\n", "END"]
    assert (req.n, req.stream, req.include_usage, req.model) == (8, True, True, "gemma")
    s.validate(vocab_size=100)


def test_null_fields_mean_default():
    nulls = {
        name: None
        for name in (
            "model",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "seed",
            "stop",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "logit_bias",
            "n",
            "stream",
            "stream_options",
            "user",
        )
    }
    assert requests.parse_chat(chat_body(**nulls), DEFAULTS) == requests.parse_chat(chat_body(), DEFAULTS)


def test_unknown_fields_are_ignored():
    req = requests.parse_chat(
        chat_body(
            parallel_tool_calls=False,
            response_format={"type": "text"},
            metadata={"a": "b"},
            store=False,
            service_tier="auto",
            something_new=[1, {}],
        ),
        DEFAULTS,
    )
    assert req == requests.parse_chat(chat_body(), DEFAULTS)


def test_response_format_and_tools_fields():
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    req = requests.parse_chat(chat_body(tools=[weather]), DEFAULTS)
    assert req.tool_choice == "auto" and req.tools[0]["function"]["name"] == "get_weather"
    assert requests.parse_chat(chat_body(), DEFAULTS).tool_choice == "none"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert requests.parse_chat(chat_body(tools=[weather], tool_choice=named), DEFAULTS).tool_choice == named
    rf = requests.parse_chat(chat_body(response_format={"type": "json_object"}), DEFAULTS).response_format
    assert rf == {"type": "json_object"}
    for bad, param in (
        ({"tools": [{"type": "nope"}]}, "tools"),
        ({"tools": [weather, weather]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [weather], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"tools": [weather], "response_format": {"type": "json_object"}}, "response_format"),
    ):
        assert chat_error(**bad).param == param, bad


def test_logprobs_fields():
    assert requests.parse_chat(chat_body(), DEFAULTS).logprobs is None
    assert requests.parse_chat(chat_body(logprobs=True), DEFAULTS).logprobs == 0
    req = requests.parse_chat(chat_body(logprobs=True, top_logprobs=5), DEFAULTS)
    assert req.logprobs == 5 and requests.choice_params(req, 1).logprobs == 5
    assert chat_error(top_logprobs=3).param == "top_logprobs"  # needs logprobs: true
    assert chat_error(logprobs=True, top_logprobs=21).param == "top_logprobs"
    assert chat_error(logprobs=1).param == "logprobs"
    body = json.dumps({"prompt": "x", "logprobs": 2}).encode()
    assert requests.parse_completion(body, DEFAULTS).logprobs == 2
    for bad in (6, -1, True, "2"):
        with pytest.raises(RequestValidationError) as e:
            requests.parse_completion(json.dumps({"prompt": "x", "logprobs": bad}).encode(), DEFAULTS)
        assert e.value.param == "logprobs"


def test_max_completion_tokens_wins():
    req = requests.parse_chat(chat_body(max_tokens=10, max_completion_tokens=20), DEFAULTS)
    assert req.sampling.max_tokens == 20 and req.max_tokens_given
    req = requests.parse_chat(chat_body(max_completion_tokens=5), DEFAULTS)
    assert req.sampling.max_tokens == 5 and req.max_tokens_given
    # a bad value in the losing field is still reported
    assert chat_error(max_tokens=0, max_completion_tokens=20).param == "max_tokens"


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", "hot"),
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("temperature", True),
        ("temperature", [1]),
        ("temperature", 10**400),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_p", False),
        ("top_p", "0.5"),
        ("top_k", -1),
        ("top_k", 2.0),
        ("top_k", True),
        ("top_k", "40"),
        ("min_p", -0.01),
        ("min_p", 1.01),
        ("min_p", True),
        ("seed", 1.5),
        ("seed", "42"),
        ("seed", True),
        ("presence_penalty", 2.5),
        ("presence_penalty", -3),
        ("presence_penalty", True),
        ("frequency_penalty", 2.5),
        ("frequency_penalty", "x"),
        ("repetition_penalty", 0),
        ("repetition_penalty", -1),
        ("repetition_penalty", True),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("max_tokens", "10"),
        ("max_completion_tokens", 0),
        ("max_completion_tokens", False),
        ("n", 0),
        ("n", 9),
        ("n", 1.0),
        ("n", True),
        ("stream", 1),
        ("stream", "true"),
        ("model", 5),
        ("model", ["a"]),
    ],
)
def test_bad_generation_field_is_named(field, value):
    for err in (chat_error(**{field: value}), completion_error(**{field: value})):
        assert err.param == field
        assert str(err).startswith(field)


def test_bad_value_message_quotes_it():
    err = chat_error(temperature="hot")
    assert str(err) == "temperature must be a number between 0 and 2, got 'hot'"


def test_booleans_are_not_numbers():
    err = chat_error(temperature=True)
    assert err.param == "temperature" and "True" in str(err)
    assert chat_error(max_tokens=True).param == "max_tokens"


def test_long_bad_values_are_clipped_in_messages():
    err = chat_error(temperature="x" * 10_000)
    assert len(str(err)) < 200


@pytest.mark.parametrize("n", [1, 4, 8])
def test_n_in_range(n):
    assert requests.parse_chat(chat_body(n=n), DEFAULTS).n == n
    assert requests.parse_completion(completion_body(n=n), DEFAULTS).n == n


@pytest.mark.parametrize(
    "stop, expected",
    [
        ("END", ["END"]),
        (["a"], ["a"]),
        (["a", "b", "c", "d"], ["a", "b", "c", "d"]),
        ([], []),
    ],
)
def test_stop_forms(stop, expected):
    assert requests.parse_chat(chat_body(stop=stop), DEFAULTS).stop == expected


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], "", ["a", ""], [1], {"a": 1}, 5])
def test_bad_stop(stop):
    assert chat_error(stop=stop).param == "stop"


def test_stream_options():
    req = requests.parse_chat(chat_body(stream=True, stream_options={"include_usage": False}), DEFAULTS)
    assert req.stream and not req.include_usage
    # keys we do not know (newer SDKs send more) are ignored like unknown fields
    req = requests.parse_chat(
        chat_body(stream=True, stream_options={"include_usage": True, "include_obfuscation": True}), DEFAULTS
    )
    assert req.include_usage


@pytest.mark.parametrize(
    "fields",
    [
        {"stream_options": {"include_usage": True}},
        {"stream": False, "stream_options": {"include_usage": True}},
        {"stream": True, "stream_options": True},
        {"stream": True, "stream_options": {"include_usage": "yes"}},
    ],
)
def test_bad_stream_options(fields):
    assert chat_error(**fields).param == "stream_options"
    assert completion_error(**fields).param == "stream_options"


@pytest.mark.parametrize(
    "bias",
    [
        {"abc": 1},
        {"-1": 1},
        {"1.5": 1},
        {"": 1},
        {" 7": 1},
        {"7": 101},
        {"7": -100.5},
        {"7": "1"},
        {"7": True},
        {"7": None},
        [1, 2],
        "x",
    ],
)
def test_bad_logit_bias(bias):
    assert chat_error(logit_bias=bias).param == "logit_bias"


def test_logit_bias_keys_become_ints():
    req = requests.parse_chat(chat_body(logit_bias={"0": 100, "123456": -1}), DEFAULTS)
    assert req.sampling.logit_bias == {0: 100.0, 123456: -1.0}


@pytest.mark.parametrize("messages", [None, [], {}, "hi", [MESSAGES[0], "hi"], [[]]])
def test_bad_messages(messages):
    body = json.dumps({"messages": messages}).encode()
    assert rejected(lambda b: requests.parse_chat(b, DEFAULTS), body).param == "messages"


def test_missing_messages():
    body = json.dumps({"model": "x"}).encode()
    err = rejected(lambda b: requests.parse_chat(b, DEFAULTS), body)
    assert err.param == "messages" and "required" in str(err)


def test_messages_kept_as_is():
    odd = [{"role": "wizard", "content": [{"type": "text", "text": "x"}], "extra": 1}]
    assert requests.parse_chat(chat_body(messages=odd), DEFAULTS).messages == odd


# --------------------------------------------------------------------------------------------
# Completions
# --------------------------------------------------------------------------------------------


def test_completion_fields():
    req = requests.parse_completion(
        completion_body(echo=True, suffix="ignored", n=2, best_of=3, logprobs=2, seed=9, stop="."), DEFAULTS
    )
    assert req.echo and req.n == 2 and req.sampling.seed == 9 and req.stop == ["."]
    assert not requests.parse_completion(completion_body(echo=None), DEFAULTS).echo
    assert completion_error(echo="yes").param == "echo"


def test_choice_index_is_prompt_major():
    n = 3
    indices = [requests.choice_index(i, j, n) for i in range(2) for j in range(n)]
    assert indices == list(range(6))
    assert requests.choice_index(1, 0, n) == 3


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def test_embedding_options():
    req = requests.parse_embedding(
        embedding_body(encoding_format="base64", model="m", user="u", dimensions=None)
    )
    assert (req.encoding_format, req.model) == ("base64", "m")
    assert requests.parse_embedding(embedding_body(encoding_format=None)).encoding_format == "float"
    assert embedding_error(encoding_format="int8").param == "encoding_format"
    assert embedding_error(encoding_format=1).param == "encoding_format"
    assert embedding_error(dimensions=256).param == "dimensions"
    assert embedding_error(model=3).param == "model"


# --------------------------------------------------------------------------------------------
# Server helpers
# --------------------------------------------------------------------------------------------


def test_choice_params_seeds():
    req = requests.parse_chat(chat_body(seed=100, n=3), DEFAULTS)
    seeds = [requests.choice_params(req, j).seed for j in range(3)]
    assert seeds == [100, 101, 102]
    assert requests.choice_params(req, 2).temperature == req.sampling.temperature
    assert req.sampling.seed == 100  # the request itself is untouched
    unseeded = requests.parse_chat(chat_body(n=3), DEFAULTS)
    assert [requests.choice_params(unseeded, j).seed for j in range(3)] == [None] * 3


def test_fit_max_tokens():
    default = requests.parse_chat(chat_body(), SamplingParams(max_tokens=100))
    assert requests.fit_max_tokens(default, prompt_tokens=10, context_length=200) == 100
    assert requests.fit_max_tokens(default, prompt_tokens=150, context_length=200) == 50  # clipped
    given = requests.parse_chat(chat_body(max_tokens=100), DEFAULTS)
    assert requests.fit_max_tokens(given, prompt_tokens=100, context_length=200) == 100
    with pytest.raises(errors.ContextLengthError) as info:
        requests.fit_max_tokens(given, prompt_tokens=150, context_length=200)
    assert info.value.param == "messages"
    assert all(str(k) in str(info.value) for k in (200, 250, 150, 100))
    with pytest.raises(errors.ContextLengthError) as info:
        requests.fit_max_tokens(default, prompt_tokens=200, context_length=200)
    completion_req = requests.parse_completion(completion_body(), DEFAULTS)
    with pytest.raises(errors.ContextLengthError) as info:
        requests.fit_max_tokens(completion_req, prompt_tokens=300, context_length=200)
    assert info.value.param == "prompt"


def test_check_vocabulary():
    requests.check_vocabulary(requests.parse_completion(completion_body(prompt=[[1, 99]]), DEFAULTS), 100)
    err = rejected(
        lambda b: requests.check_vocabulary(requests.parse_completion(b, DEFAULTS), 100),
        completion_body(prompt=[1, 100]),
    )
    assert err.param == "prompt"
    err = rejected(
        lambda b: requests.check_vocabulary(requests.parse_embedding(b), 100),
        embedding_body(input=[[5], [100]]),
    )
    assert err.param == "input"
    err = rejected(
        lambda b: requests.check_vocabulary(requests.parse_chat(b, DEFAULTS), 100),
        chat_body(logit_bias={"100": 1}),
    )
    assert err.param == "logit_bias"
    requests.check_vocabulary(requests.parse_embedding(embedding_body()), 100)
