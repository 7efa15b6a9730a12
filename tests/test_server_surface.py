"""The wider OpenAI surface on the real server: logprobs (chat and completions, streamed and
not, echo), and llama.cpp's /tokenize and /detokenize."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import server_fixture
from server_process import http

JSON = {"Content-Type": "application/json"}


server = server_fixture("--ServerOptions:MaxContextTokens=512")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def post(server, path, body):
    status, _, raw = http("POST", server.url + path, json.dumps(body).encode(), JSON)
    return status, json.loads(raw)


def test_chat_logprobs_greedy_is_top1(client):
    r = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the top-1
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    assert r.choices[0].message.content in text or text.startswith(r.choices[0].message.content)


def test_chat_logprobs_streamed(client):
    stream = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    entries, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                entries.extend(choice.logprobs.content)
    assert usage and len(entries) == usage.completion_tokens
    assert all(e.top_logprobs == [] for e in entries)  # top_logprobs 0


def test_completion_logprobs_and_echo(client, server):
    r = client.completions.create(model="x", prompt="The sky is", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    status, tokens = post(server, "/tokenize", {"content": "The sky is", "add_special": True})
    n_prompt = len(tokens["tokens"])
    e = client.completions.create(
        model="x", prompt="The sky is", max_tokens=5, temperature=0, logprobs=1, echo=True
    )
    lp = e.choices[0].logprobs
    assert e.choices[0].text.startswith("The sky is")
    assert len(lp.tokens) == n_prompt + e.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(x is not None for x in lp.token_logprobs[1:])
    # the echoed completion's own tokens score as in the plain request
    assert lp.token_logprobs[n_prompt:] == pytest.approx(r.choices[0].logprobs.token_logprobs, abs=1e-4)
    streamed = [
        c.choices[0].logprobs
        for c in client.completions.create(
            model="x", prompt="The sky is", max_tokens=5, temperature=0, logprobs=1, stream=True
        )
    ]
    tokens_streamed = [t for chunk in streamed if chunk for t in chunk.tokens]
    assert tokens_streamed == r.choices[0].logprobs.tokens


def test_tokenize_and_detokenize(server):
    status, body = post(server, "/tokenize", {"content": "Hello world"})
    assert status == 200 and body["tokens"] == [9259, 1902]
    status, body = post(
        server, "/tokenize", {"content": "Hello world", "add_special": True, "with_pieces": True}
    )
    assert body["tokens"][0] == {"id": 2, "piece": "<bos>"} and body["tokens"][1]["piece"] == "Hello"
    status, body = post(server, "/tokenize", {"content": "🙂", "with_pieces": True})
    pieces = [t["piece"] for t in body["tokens"]]
    assert "".join(p for p in pieces if isinstance(p, str)) == "🙂" or any(
        isinstance(p, list) for p in pieces
    )
    status, body = post(server, "/detokenize", {"tokens": [9259, 1902]})
    assert status == 200 and body["content"] == "Hello world"
    assert post(server, "/detokenize", {"tokens": []}) == (200, {"content": ""})
    status, body = post(server, "/detokenize", {"tokens": [10**9]})
    assert status == 400 and body["error"]["param"] == "tokens"
    status, body = post(server, "/tokenize", {"content": 5})
    assert status == 400 and body["error"]["param"] == "content"
