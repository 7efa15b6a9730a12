"""The OpenAI wire protocol: parsing, response shapes (checked against the openai SDK's own
models) and the error -> HTTP mapping."""
import base64
import json

import numpy as np
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from smallmind.engine.sampling import SamplingParams
from smallmind.errors import (ConfigError, ModelFormatError, ModelNotFoundError,
                              RequestValidationError)
from smallmind.server.config import ServerOptions
from smallmind.server.openai import errors, requests, responses

MESSAGES = [{"role": "user", "content": "Hello"}]
DEFAULTS = SamplingParams()


def chat_body(**fields) -> bytes:
    fields.setdefault("messages", MESSAGES)
    return json.dumps(fields).encode()


def completion_body(**fields) -> bytes:
    fields.setdefault("prompt", "Once upon a time")
    return json.dumps(fields).encode()


def embedding_body(**fields) -> bytes:
    fields.setdefault("input", "hello")
    return json.dumps(fields).encode()


def rejected(parse, body: bytes) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as info:
        parse(body)
    return info.value


def chat_error(**fields) -> RequestValidationError:
    return rejected(lambda b: requests.parse_chat(b, DEFAULTS), chat_body(**fields))


def completion_error(**fields) -> RequestValidationError:
    return rejected(lambda b: requests.parse_completion(b, DEFAULTS), completion_body(**fields))


def embedding_error(**fields) -> RequestValidationError:
    return rejected(requests.parse_embedding, embedding_body(**fields))


# --------------------------------------------------------------------------------------------
# Body decoding
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe{",
                                  b'{"messages": NaN}', b'{"temperature": Infinity}',
                                  b"[" * 100_000])
@pytest.mark.parametrize("parse", [lambda b: requests.parse_chat(b, DEFAULTS),
                                   lambda b: requests.parse_completion(b, DEFAULTS),
                                   requests.parse_embedding])
def test_bad_json_is_rejected_without_param(parse, body):
    err = rejected(parse, body)
    assert str(err).startswith("invalid JSON body: ")
    assert err.param is None


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
    assert (req.stop, req.n, req.stream, req.include_usage, req.model) == ([], 1, False, False,
                                                                          None)


def test_server_settings_give_the_defaults():
    defaults = ServerOptions(default_temperature=0.3, default_top_k=0).sampling_defaults()
    s = requests.parse_completion(completion_body(), defaults).sampling
    assert (s.temperature, s.top_k, s.top_p) == (0.3, 0, SamplingParams.top_p)


def test_chat_all_fields():
    req = requests.parse_chat(chat_body(
        model="gemma", max_tokens=50, temperature=0, top_p=1, top_k=0, min_p=0, seed=-3,
        stop=["\n", "END"], presence_penalty=-2, frequency_penalty=2, repetition_penalty=1.1,
        logit_bias={"15": -100, "7": 2.5}, n=8, stream=True,
        stream_options={"include_usage": True}, user="u1"), DEFAULTS)
    s = req.sampling
    assert s == SamplingParams(max_tokens=50, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0,
                               seed=-3, presence_penalty=-2.0, frequency_penalty=2.0,
                               repetition_penalty=1.1, logit_bias={15: -100.0, 7: 2.5})
    assert s.logit_bias == {15: -100.0, 7: 2.5}
    assert isinstance(s.temperature, float) and isinstance(s.top_p, float)
    assert req.max_tokens_given
    assert req.stop == ["\n", "END"]
    assert (req.n, req.stream, req.include_usage, req.model) == (8, True, True, "gemma")
    s.validate(vocab_size=100)


def test_null_fields_mean_default():
    nulls = {name: None for name in (
        "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
        "min_p", "seed", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "logit_bias", "n", "stream", "stream_options", "user")}
    assert requests.parse_chat(chat_body(**nulls), DEFAULTS) == requests.parse_chat(chat_body(), DEFAULTS)


def test_unknown_fields_are_ignored():
    req = requests.parse_chat(chat_body(
        parallel_tool_calls=False, response_format={"type": "text"},
        metadata={"a": "b"}, store=False, service_tier="auto", something_new=[1, {}]),
        DEFAULTS)
    assert req == requests.parse_chat(chat_body(), DEFAULTS)


def test_response_format_and_tools_fields():
    weather = {"type": "function", "function": {"name": "get_weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    req = requests.parse_chat(chat_body(tools=[weather]), DEFAULTS)
    assert req.tool_choice == "auto" and req.tools[0]["function"]["name"] == "get_weather"
    assert requests.parse_chat(chat_body(), DEFAULTS).tool_choice == "none"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert requests.parse_chat(chat_body(tools=[weather], tool_choice=named), DEFAULTS).tool_choice == named
    rf = requests.parse_chat(chat_body(response_format={"type": "json_object"}), DEFAULTS).response_format
    assert rf == {"type": "json_object"}
    for bad, param in (({"tools": [{"type": "nope"}]}, "tools"),
                       ({"tools": [weather, weather]}, "tools"),
                       ({"tool_choice": "required"}, "tool_choice"),
                       ({"tools": [weather], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice"),
                       ({"response_format": {"type": "xml"}}, "response_format"),
                       ({"response_format": {"type": "json_schema"}}, "response_format"),
                       ({"tools": [weather], "response_format": {"type": "json_object"}}, "response_format")):
        assert chat_error(**bad).param == param, bad


def test_logprobs_fields():
    assert requests.parse_chat(chat_body(), DEFAULTS).logprobs is None
    assert requests.parse_chat(chat_body(logprobs=True), DEFAULTS).logprobs == 0
    req = requests.parse_chat(chat_body(logprobs=True, top_logprobs=5), DEFAULTS)
    assert req.logprobs == 5 and requests.choice_params(req, 1).logprobs == 5
    assert chat_error(top_logprobs=3).param == "top_logprobs"          # needs logprobs: true
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


@pytest.mark.parametrize("field, value", [
    ("temperature", "hot"), ("temperature", -0.1), ("temperature", 2.01),
    ("temperature", True), ("temperature", [1]), ("temperature", 10**400),
    ("top_p", 0), ("top_p", 1.5), ("top_p", False), ("top_p", "0.5"),
    ("top_k", -1), ("top_k", 2.0), ("top_k", True), ("top_k", "40"),
    ("min_p", -0.01), ("min_p", 1.01), ("min_p", True),
    ("seed", 1.5), ("seed", "42"), ("seed", True),
    ("presence_penalty", 2.5), ("presence_penalty", -3), ("presence_penalty", True),
    ("frequency_penalty", 2.5), ("frequency_penalty", "x"),
    ("repetition_penalty", 0), ("repetition_penalty", -1), ("repetition_penalty", True),
    ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 1.5), ("max_tokens", True),
    ("max_tokens", "10"), ("max_completion_tokens", 0), ("max_completion_tokens", False),
    ("n", 0), ("n", 9), ("n", 1.0), ("n", True),
    ("stream", 1), ("stream", "true"),
    ("model", 5), ("model", ["a"]),
])
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


@pytest.mark.parametrize("stop, expected", [
    ("END", ["END"]), (["a"], ["a"]), (["a", "b", "c", "d"], ["a", "b", "c", "d"]), ([], []),
])
def test_stop_forms(stop, expected):
    assert requests.parse_chat(chat_body(stop=stop), DEFAULTS).stop == expected


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], "", ["a", ""], [1], {"a": 1}, 5])
def test_bad_stop(stop):
    assert chat_error(stop=stop).param == "stop"


def test_stream_options():
    req = requests.parse_chat(chat_body(stream=True, stream_options={"include_usage": False}),
                       DEFAULTS)
    assert req.stream and not req.include_usage
    # keys we do not know (newer SDKs send more) are ignored like unknown fields
    req = requests.parse_chat(chat_body(stream=True, stream_options={"include_usage": True,
                                                              "include_obfuscation": True}),
                       DEFAULTS)
    assert req.include_usage


@pytest.mark.parametrize("fields", [
    {"stream_options": {"include_usage": True}},
    {"stream": False, "stream_options": {"include_usage": True}},
    {"stream": True, "stream_options": True},
    {"stream": True, "stream_options": {"include_usage": "yes"}},
])
def test_bad_stream_options(fields):
    assert chat_error(**fields).param == "stream_options"
    assert completion_error(**fields).param == "stream_options"


@pytest.mark.parametrize("bias", [
    {"abc": 1}, {"-1": 1}, {"1.5": 1}, {"": 1}, {" 7": 1}, {"7": 101}, {"7": -100.5},
    {"7": "1"}, {"7": True}, {"7": None}, [1, 2], "x",
])
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


def test_body_may_be_str():
    assert requests.parse_chat(chat_body().decode(), DEFAULTS).messages == MESSAGES


# --------------------------------------------------------------------------------------------
# Completions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    ("hi", ["hi"]),
    ("", [""]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
    (["x"] * 16, ["x"] * 16),
])
def test_prompt_forms(prompt, expected):
    req = requests.parse_completion(completion_body(prompt=prompt), DEFAULTS)
    assert isinstance(req, requests.CompletionRequest)
    assert req.prompts == expected


@pytest.mark.parametrize("prompt", [
    None, [], 5, {"a": 1}, ["x"] * 17, [[1]] * 17, ["a", 1], [1, "a"], [[1], "a"], [[1], []],
    [-1], [1, 2.0], [True], [[1, -2]], [None], [{}],
])
def test_bad_prompt(prompt):
    fields = {} if prompt is None else {"prompt": prompt}
    body = json.dumps(fields).encode()
    assert rejected(lambda b: requests.parse_completion(b, DEFAULTS), body).param == "prompt"


def test_completion_fields():
    req = requests.parse_completion(completion_body(echo=True, suffix="ignored", n=2, best_of=3,
                                             logprobs=2, seed=9, stop="."), DEFAULTS)
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

@pytest.mark.parametrize("value, expected", [
    ("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([5, 6], [[5, 6]]), ([[1], [2, 3]], [[1], [2, 3]]),
    (["x"] * 2048, ["x"] * 2048),
])
def test_embedding_inputs(value, expected):
    req = requests.parse_embedding(embedding_body(input=value))
    assert isinstance(req, requests.EmbeddingRequest)
    assert req.inputs == expected
    assert req.encoding_format == "float" and req.model is None


@pytest.mark.parametrize("value", [None, "", [], ["a", ""], ["x"] * 2049, [[]], [1, "a"], 3,
                                   [-4], [[1.5]]])
def test_bad_embedding_input(value):
    fields = {} if value is None else {"input": value}
    assert rejected(requests.parse_embedding, json.dumps(fields).encode()).param == "input"


def test_embedding_options():
    req = requests.parse_embedding(embedding_body(encoding_format="base64", model="m", user="u",
                                           dimensions=None))
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
    err = rejected(lambda b: requests.check_vocabulary(requests.parse_completion(b, DEFAULTS), 100),
                   completion_body(prompt=[1, 100]))
    assert err.param == "prompt"
    err = rejected(lambda b: requests.check_vocabulary(requests.parse_embedding(b), 100),
                   embedding_body(input=[[5], [100]]))
    assert err.param == "input"
    err = rejected(lambda b: requests.check_vocabulary(requests.parse_chat(b, DEFAULTS), 100),
                   chat_body(logit_bias={"100": 1}))
    assert err.param == "logit_bias"
    requests.check_vocabulary(requests.parse_embedding(embedding_body()), 100)


# --------------------------------------------------------------------------------------------
# Responses, validated with the openai SDK's own models
# --------------------------------------------------------------------------------------------

def test_new_id():
    chat_id = responses.new_id(responses.CHAT_ID_PREFIX)
    assert chat_id.startswith("chatcmpl-") and len(chat_id) == len("chatcmpl-") + 24
    int(chat_id.removeprefix("chatcmpl-"), 16)
    assert responses.new_id("cmpl-").startswith("cmpl-") and "--" not in responses.new_id("cmpl-")
    assert responses.new_id("x") != responses.new_id("x")


def test_usage():
    assert responses.usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert responses.usage(30, 4, 16)["prompt_tokens_details"] == {"cached_tokens": 16}


def test_chat_completion_shape():
    d = responses.chat_completion("chatcmpl-1", 1700000000, "gemma",
                          [("Hi!", "stop"), ("Hello", "length")], responses.usage(5, 2))
    json.dumps(d)
    parsed = ChatCompletion.model_validate(d)
    assert parsed.object == "chat.completion"
    assert [c.message.content for c in parsed.choices] == ["Hi!", "Hello"]
    assert [c.index for c in parsed.choices] == [0, 1]
    assert parsed.choices[1].finish_reason == "length"
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.usage.total_tokens == 7


def test_chat_chunk_shapes():
    first = responses.chat_chunk("chatcmpl-1", 1, "gemma", 0, {"role": "assistant", "content": ""})
    middle = responses.chat_chunk("chatcmpl-1", 1, "gemma", 1, {"content": "Hi"}, include_usage=True)
    last = responses.chat_chunk("chatcmpl-1", 1, "gemma", 0, {}, "stop")
    for d in (first, middle, last):
        json.dumps(d)
        parsed = ChatCompletionChunk.model_validate(d)
        assert parsed.object == "chat.completion.chunk"
    assert "usage" in middle and middle["usage"] is None and "usage" not in first
    assert ChatCompletionChunk.model_validate(middle).choices[0].delta.content == "Hi"
    assert ChatCompletionChunk.model_validate(last).choices[0].finish_reason == "stop"
    final = responses.usage_chunk("chatcmpl-1", 1, "gemma", responses.usage(5, 9))
    parsed = ChatCompletionChunk.model_validate(final)
    assert parsed.choices == [] and parsed.usage.completion_tokens == 9


def test_completion_shapes():
    d = responses.completion("cmpl-1", 1, "gemma", [("a", "stop"), ("b", "length"), ("c", "stop")],
                     responses.usage(4, 6))
    json.dumps(d)
    parsed = Completion.model_validate(d)
    assert parsed.object == "text_completion"
    assert [(c.index, c.text, c.finish_reason) for c in parsed.choices] == \
        [(0, "a", "stop"), (1, "b", "length"), (2, "c", "stop")]
    assert parsed.usage.total_tokens == 10
    chunk = responses.completion_chunk("cmpl-1", 1, "gemma", 2, "xyz", "length")
    parsed = Completion.model_validate(chunk)
    assert parsed.choices[0].index == 2 and parsed.choices[0].text == "xyz"
    # mid-stream chunks have finish_reason null, which the SDK builds without validation
    mid = responses.completion_chunk("cmpl-1", 1, "gemma", 0, "x", include_usage=True)
    assert mid["choices"][0]["finish_reason"] is None and mid["usage"] is None
    assert Completion.construct(**mid).choices[0].text == "x"
    final = responses.usage_chunk("cmpl-1", 1, "gemma", responses.usage(1, 2), chat=False)
    parsed = Completion.model_validate(final)
    assert parsed.object == "text_completion" and parsed.choices == []
    assert parsed.usage.prompt_tokens == 1


def test_embedding_float_shape():
    vectors = [np.array([0.5, -1.25, 3.0], np.float32), np.array([0.1, 0.2, 0.3], np.float64)]
    d = responses.embedding_list("gemma", vectors, "float", prompt_tokens=7)
    json.dumps(d)
    parsed = CreateEmbeddingResponse.model_validate(d)
    assert parsed.object == "list" and parsed.model == "gemma"
    assert [e.index for e in parsed.data] == [0, 1]
    assert parsed.data[0].embedding == [0.5, -1.25, 3.0]
    np.testing.assert_array_equal(np.float32(parsed.data[1].embedding),
                                  vectors[1].astype(np.float32))
    assert parsed.usage.prompt_tokens == 7 and parsed.usage.total_tokens == 7


def test_embedding_base64_round_trip():
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(64).astype(np.float32) for _ in range(3)]
    d = responses.embedding_list("gemma", vectors, "base64", prompt_tokens=3)
    json.dumps(d)
    for item, vector in zip(d["data"], vectors):
        assert isinstance(item["embedding"], str)
        raw = base64.b64decode(item["embedding"])
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), vector)
    # what the openai SDK does with a base64 response before validating it
    decoded = {**d, "data": [{**item, "embedding": np.frombuffer(
        base64.b64decode(item["embedding"]), dtype="float32").tolist()} for item in d["data"]]}
    parsed = CreateEmbeddingResponse.model_validate(decoded)
    assert len(parsed.data[2].embedding) == 64


def test_model_list_shape():
    d = responses.model_list([("gemma-3-270m", 1700000000, "smallmind"), ("other", 5, "me")])
    json.dumps(d)
    assert d["object"] == "list"
    models = [Model.model_validate(m) for m in d["data"]]
    assert [(m.id, m.created, m.owned_by, m.object) for m in models] == \
        [("gemma-3-270m", 1700000000, "smallmind", "model"), ("other", 5, "me", "model")]
    assert Model.model_validate(responses.model_entry("a", 1, "b")).id == "a"


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------

def _bad_temperature() -> RequestValidationError:
    return chat_error(temperature=3)


@pytest.mark.parametrize("make, status, error_type, code, param", [
    (_bad_temperature, 400, "invalid_request_error", None, "temperature"),
    (lambda: RequestValidationError("plain"), 400, "invalid_request_error", None, None),
    (lambda: errors.ContextLengthError(2048, 2000, 100), 400, "invalid_request_error",
     "context_length_exceeded", "messages"),
    (lambda: errors.EmbeddingsNotSupportedError("gemma"), 400, "invalid_request_error",
     "embeddings_not_supported", "model"),
    (lambda: errors.RouteNotFoundError("/v2/nothing"), 404, "invalid_request_error", "not_found",
     None),
    (lambda: ModelNotFoundError("no model 'x'"), 404, "invalid_request_error",
     "model_not_found", None),
    (lambda: errors.MethodNotAllowedError("PUT", "/v1/models", ["GET"]), 405,
     "invalid_request_error", "method_not_allowed", None),
    (lambda: errors.BodyTooLargeError(1024, 4096), 413, "invalid_request_error",
     "request_too_large", None),
    (lambda: errors.QueueFullError(), 429, "rate_limit_exceeded", "rate_limit_exceeded", None),
    (lambda: errors.NotReadyError(), 503, "service_unavailable", None, None),
    (lambda: errors.RequestTimeoutError(30), 504, "timeout_error", None, None),
])
def test_error_mapping(make, status, error_type, code, param):
    exc = make()
    got_status, body = errors.error_response(exc, request_id="req-1")
    assert got_status == status
    assert body == {"error": {"message": str(exc), "type": error_type, "code": code,
                              "param": param}}
    assert body["error"]["message"]
    json.dumps(body)


def test_validation_error_code_attribute_is_used():
    err = RequestValidationError("bad template")
    err.code = "invalid_chat_template"
    err.param = "messages"
    status, body = errors.error_response(err)
    assert status == 400
    assert body["error"]["code"] == "invalid_chat_template"
    assert body["error"]["param"] == "messages"


def test_error_messages_carry_the_facts():
    assert "2048" in str(errors.ContextLengthError(2048, 2000, 100))
    assert "2100" in str(errors.ContextLengthError(2048, 2000, 100))
    assert "3000" in str(errors.ContextLengthError(2048, 3000))
    assert "GET" in str(errors.MethodNotAllowedError("PUT", "/v1/models", ["GET"]))
    assert errors.MethodNotAllowedError("PUT", "/v1/models", ["GET", "HEAD"]).allowed == \
        ("GET", "HEAD")
    assert "1024" in str(errors.BodyTooLargeError(1024))
    assert errors.QueueFullError(retry_after=2).retry_after == 2


@pytest.mark.parametrize("exc", [
    ValueError("secret /home/user/model.gguf"), KeyError("api_key=hunter2"),
    ModelFormatError("tensor blk.0 at /secret/path is broken"), ConfigError("ApiKey=hunter2"),
    ZeroDivisionError(), RuntimeError(""),
])
def test_unknown_errors_are_opaque_500s(exc):
    status, body = errors.error_response(exc, request_id="abc123")
    assert status == 500
    error = body["error"]
    assert error["type"] == "internal_error"
    assert error["message"] == "internal server error (request id abc123)"
    text = json.dumps(body)
    for leak in ("secret", "hunter2", "gguf", "Traceback", type(exc).__name__):
        assert leak not in text


def test_500_without_request_id():
    status, body = errors.error_response(RuntimeError("boom"))
    assert status == 500 and body["error"]["message"] == "internal server error"
    assert "boom" not in json.dumps(body)


def test_500_for_raised_exception_with_traceback():
    try:
        raise RuntimeError("deep internal detail")
    except RuntimeError as exc:
        status, body = errors.error_response(exc, request_id="r")
    assert status == 500 and "deep internal detail" not in json.dumps(body)


def _stream_updates():
    """Updates of two choices as the engine thread posts them: text that needs escaping,
    empty steps (text held back), log-probabilities, and the finishing updates."""
    from smallmind.engine.engine import TokenLogprob
    from smallmind.server.scheduler import Update

    lp = [TokenLogprob(5, -0.5, [5, 6], [-0.5, -1.0])]
    texts = ["Hi", ' "quoted" \\ back\nslash\t', "☃ snow, 𝄞 clef", "\x00\x1f ctl", "", "\u2028 sep",
             "</script>"]
    updates = [Update(i % 2, t, None, i + 1, lp, 3) for i, t in enumerate(texts)]
    return updates + [Update(0, "end", "stop", 9, lp, 3), Update(1, "", "length", 9, [], 3)]


def _shapes(make):
    """The same shape twice, fresh: the reference encoding and the fast one keep state apart."""
    return make(), make()


@pytest.mark.parametrize("model", ["gemma", 'od"d\\m☃del', "\x00text\x00"])
@pytest.mark.parametrize("logprobs", [False, True])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("kind", ["chat", "chat auto tools", "completion"])
def test_encoded_chunks_are_json_dumps_of_chunks(kind, include_usage, logprobs, model):
    piece = lambda i: b"tok%d" % i  # noqa: E731
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

    def make():
        if kind == "completion":
            return responses.CompletionShape("cmpl-1", 7, model, piece, logprobs, include_usage,
                                             echoes=["", ""], echo_logprobs=[[], []])
        mode = "auto" if "tools" in kind else "off"
        return responses.ChatShape("chatcmpl-1", 7, model, piece, logprobs, include_usage,
                                   tools=tools if mode == "auto" else [], tool_mode=mode)

    reference, fast = _shapes(make)
    expected = [json.dumps(c, ensure_ascii=False) for u in _stream_updates() for c in reference.chunks(u)]
    got = [e for u in _stream_updates() for e in fast.encoded_chunks(u)]
    assert got == expected
    assert len(expected) >= 6
    if not logprobs and model == "gemma":
        assert fast.templates      # the fast path ran
    if model == "\x00text\x00":
        assert not fast.templates  # a model name holding the mark: no template, still right
