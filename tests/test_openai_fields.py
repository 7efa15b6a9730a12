"""server/openai/fields.py, through the parsers: the body as a JSON object, and the forms
a prompt / an input may take."""

import json

import pytest

from smallmind.server.openai import requests
from tests.openai_bodies import (
    DEFAULTS,
    MESSAGES,
    chat_body,
    completion_body,
    embedding_body,
    rejected,
)

# --------------------------------------------------------------------------------------------
# Body decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'"text"',
        b"null",
        b"\xff\xfe{",
        b'{"messages": NaN}',
        b'{"temperature": Infinity}',
        b"[" * 100_000,
    ],
)
@pytest.mark.parametrize(
    "parse",
    [
        lambda b: requests.parse_chat(b, DEFAULTS),
        lambda b: requests.parse_completion(b, DEFAULTS),
        requests.parse_embedding,
    ],
)
def test_bad_json_is_rejected_without_param(parse, body):
    err = rejected(parse, body)
    assert str(err).startswith("invalid JSON body: ")
    assert err.param is None


def test_body_may_be_str():
    assert requests.parse_chat(chat_body().decode(), DEFAULTS).messages == MESSAGES


# --------------------------------------------------------------------------------------------
# Prompt and input forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("hi", ["hi"]),
        ("", [""]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (["x"] * 16, ["x"] * 16),
    ],
)
def test_prompt_forms(prompt, expected):
    req = requests.parse_completion(completion_body(prompt=prompt), DEFAULTS)
    assert isinstance(req, requests.CompletionRequest)
    assert req.prompts == expected


@pytest.mark.parametrize(
    "prompt",
    [
        None,
        [],
        5,
        {"a": 1},
        ["x"] * 17,
        [[1]] * 17,
        ["a", 1],
        [1, "a"],
        [[1], "a"],
        [[1], []],
        [-1],
        [1, 2.0],
        [True],
        [[1, -2]],
        [None],
        [{}],
    ],
)
def test_bad_prompt(prompt):
    fields = {} if prompt is None else {"prompt": prompt}
    body = json.dumps(fields).encode()
    assert rejected(lambda b: requests.parse_completion(b, DEFAULTS), body).param == "prompt"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([5, 6], [[5, 6]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
        (["x"] * 2048, ["x"] * 2048),
    ],
)
def test_embedding_inputs(value, expected):
    req = requests.parse_embedding(embedding_body(input=value))
    assert isinstance(req, requests.EmbeddingRequest)
    assert req.inputs == expected
    assert req.encoding_format == "float" and req.model is None


@pytest.mark.parametrize("value", [None, "", [], ["a", ""], ["x"] * 2049, [[]], [1, "a"], 3, [-4], [[1.5]]])
def test_bad_embedding_input(value):
    fields = {} if value is None else {"input": value}
    assert rejected(requests.parse_embedding, json.dumps(fields).encode()).param == "input"
