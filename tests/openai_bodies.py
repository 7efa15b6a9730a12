"""Request bodies and rejections shared by the tests of server/openai/ (fields, requests, errors)."""

import json

import pytest

from smallmind.engine.sampling_params import SamplingParams
from smallmind.errors import RequestValidationError
from smallmind.server.openai import requests

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
