"""server/openai/responses.py: response shapes, checked against the openai SDK's own models."""

import base64
import json

import numpy as np
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from smallmind.server.openai import responses

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
    assert responses.usage(3, 4) == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert responses.usage(30, 4, 16)["prompt_tokens_details"] == {"cached_tokens": 16}


def test_chat_completion_shape():
    d = responses.chat_completion(
        "chatcmpl-1", 1700000000, "gemma", [("Hi!", "stop"), ("Hello", "length")], responses.usage(5, 2)
    )
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
    d = responses.completion(
        "cmpl-1", 1, "gemma", [("a", "stop"), ("b", "length"), ("c", "stop")], responses.usage(4, 6)
    )
    json.dumps(d)
    parsed = Completion.model_validate(d)
    assert parsed.object == "text_completion"
    assert [(c.index, c.text, c.finish_reason) for c in parsed.choices] == [
        (0, "a", "stop"),
        (1, "b", "length"),
        (2, "c", "stop"),
    ]
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
    np.testing.assert_array_equal(np.float32(parsed.data[1].embedding), vectors[1].astype(np.float32))
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
    decoded = {
        **d,
        "data": [
            {
                **item,
                "embedding": np.frombuffer(base64.b64decode(item["embedding"]), dtype="float32").tolist(),
            }
            for item in d["data"]
        ],
    }
    parsed = CreateEmbeddingResponse.model_validate(decoded)
    assert len(parsed.data[2].embedding) == 64


def test_model_list_shape():
    d = responses.model_list([("gemma-3-270m", 1700000000, "smallmind"), ("other", 5, "me")])
    json.dumps(d)
    assert d["object"] == "list"
    models = [Model.model_validate(m) for m in d["data"]]
    assert [(m.id, m.created, m.owned_by, m.object) for m in models] == [
        ("gemma-3-270m", 1700000000, "smallmind", "model"),
        ("other", 5, "me", "model"),
    ]
    assert Model.model_validate(responses.model_entry("a", 1, "b")).id == "a"


def _stream_updates():
    """Updates of two choices as the engine thread posts them: text that needs escaping,
    empty steps (text held back), log-probabilities, and the finishing updates."""
    from smallmind.engine.engine import TokenLogprob
    from smallmind.server.scheduler import Update

    lp = [TokenLogprob(5, -0.5, [5, 6], [-0.5, -1.0])]
    texts = [
        "Hi",
        ' "quoted" \\ back\nslash\t',
        "☃ snow, 𝄞 clef",
        "\x00\x1f ctl",
        "",
        "\u2028 sep",
        "</script>",
    ]
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
            return responses.CompletionShape(
                "cmpl-1", 7, model, piece, logprobs, include_usage, echoes=["", ""], echo_logprobs=[[], []]
            )
        mode = "auto" if "tools" in kind else "off"
        return responses.ChatShape(
            "chatcmpl-1",
            7,
            model,
            piece,
            logprobs,
            include_usage,
            tools=tools if mode == "auto" else [],
            tool_mode=mode,
        )

    reference, fast = _shapes(make)
    expected = [json.dumps(c, ensure_ascii=False) for u in _stream_updates() for c in reference.chunks(u)]
    got = [e for u in _stream_updates() for e in fast.encoded_chunks(u)]
    assert got == expected
    assert len(expected) >= 6
    if not logprobs and model == "gemma":
        assert fast.templates  # the fast path ran
    if model == "\x00text\x00":
        assert not fast.templates  # a model name holding the mark: no template, still right
