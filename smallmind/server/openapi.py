"""The OpenAPI 3.1 description of the server (``GET /openapi.json``): every endpoint, its
request body and its responses, for users and for the schemathesis run in the tests.

Request schemas describe what a well-formed request looks like; the server's own checks
(`openai.requests.parse_*`) stay the judge and answer anything else with a 400.  Response schemas
are exact about the fields the server always sends, so a test can hold the answers to them.
"""

from __future__ import annotations

from typing import Any

import smallmind
from smallmind.engine.sampling_params import BIAS_RANGE, RANGES
from smallmind.server.openai.requests import MAX_EMBEDDING_INPUTS, MAX_N, MAX_PROMPTS, MAX_STOP

__all__ = ["openapi_document"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_TOKEN_IDS = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 1,
    "description": "token ids, each below the model's vocabulary size",
}
_TEXT = {"type": "string", "minLength": 1}


def _texts_or_tokens(max_items: int) -> dict:
    """A string, strings, token ids, or lists of token ids (openai.fields.read_texts_or_tokens)."""
    return {
        "anyOf": [
            _TEXT,
            {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": max_items},
            _TOKEN_IDS,
            {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": max_items},
        ]
    }


def _object(properties: dict, required: tuple = (), **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), **extra}


_CHAT_MESSAGE = {
    "message": _object(
        {
            "role": {"const": "assistant"},
            "content": _nullable(_STR),
            "refusal": {"type": "null"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
        },
        ("role", "content"),
    )
}


def _completion(kind: str, payload: dict, finish_reasons: list[str], chunk: bool) -> dict:
    """A (chat) completion, or one stream chunk of it, whose choices carry `payload` (a message,
    a delta or text).  A chunk may leave out logprobs and usage and sends null for them until
    the end: its finish_reason and usage are nullable."""
    finish = {"enum": finish_reasons}
    choice = _object(
        {
            "index": _INT,
            **payload,
            "logprobs": _nullable({"type": "object"}),
            "finish_reason": _nullable(finish) if chunk else finish,
        },
        ("index", *payload, *(() if chunk else ("logprobs",)), "finish_reason"),
    )
    usage = _ref("Usage")
    return _object(
        {
            "id": _STR,
            "object": {"const": kind},
            "created": _INT,
            "model": _STR,
            "choices": {"type": "array", "items": choice},
            "usage": _nullable(usage) if chunk else usage,
        },
        ("id", "object", "created", "model", "choices", *(() if chunk else ("usage",))),
    )


# Every error, from the HTTP layer to the engine, has this one shape (openai.errors.error_response).
_ERROR_STATUSES = {
    "400": "invalid request: a field, the JSON, or the HTTP framing",
    "401": "missing or wrong API key (only when ApiKey is set)",
    "404": "no such route or model",
    "405": "method not allowed on this path (see the Allow header)",
    "408": "the headers or the body arrived too slowly",
    "413": "the body is larger than MaxBodyBytes",
    "414": "the request line is too long",
    "429": "the queue is full (see the Retry-After header)",
    "431": "too many or too large headers",
    "503": "the model is not ready, or the server is draining",
    "504": "the request took longer than RequestTimeoutMs",
}


def _errors(*statuses: str) -> dict:
    responses = {s: _json(_ref("Error"), _ERROR_STATUSES[s]) for s in statuses}
    responses["default"] = _json(_ref("Error"), "any other error, in the same shape")
    return responses


_COMMON_ERRORS = ("400", "405", "408", "414", "431")
_GENERATION_ERRORS = _COMMON_ERRORS + ("401", "413", "429", "503", "504")

_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {"message": _STR, "type": _STR, "code": _nullable(_STR), "param": _nullable(_STR)},
                ("message", "type", "code", "param"),
            )
        },
        ("error",),
    ),
    "Usage": _object(
        {
            "prompt_tokens": _INT,
            "completion_tokens": _INT,
            "total_tokens": _INT,
            "prompt_tokens_details": _object({"cached_tokens": _INT}, ("cached_tokens",)),
        },
        ("prompt_tokens", "completion_tokens", "total_tokens"),
    ),
    "Model": _object(
        {"id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR},
        ("id", "object", "created", "owned_by"),
    ),
    "ModelList": _object(
        {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}, ("object", "data")
    ),
    "Stop": _nullable({"anyOf": [_STR, {"type": "array", "items": _STR, "maxItems": MAX_STOP}]}),
    "Message": _object(
        {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": _nullable(
                {
                    "anyOf": [
                        _STR,
                        {
                            "type": "array",
                            "items": _object({"type": {"const": "text"}, "text": _STR}, ("type", "text")),
                        },
                    ]
                }
            ),
            "name": _STR,
            "tool_call_id": _STR,
            "tool_calls": {"type": "array", "items": {"type": "object"}},
        },
        ("role",),
    ),
    "Sampling": _object(
        {
            "model": _nullable(_STR),
            "max_tokens": _nullable(RANGES["max_tokens"].json_schema()),
            "max_completion_tokens": _nullable(RANGES["max_tokens"].json_schema()),
            "temperature": _nullable(RANGES["temperature"].json_schema()),
            "top_p": _nullable(RANGES["top_p"].json_schema()),
            "top_k": _nullable(RANGES["top_k"].json_schema()),
            "min_p": _nullable(RANGES["min_p"].json_schema()),
            "seed": _nullable(_INT),
            "stop": _ref("Stop"),
            "presence_penalty": _nullable(RANGES["presence_penalty"].json_schema()),
            "frequency_penalty": _nullable(RANGES["frequency_penalty"].json_schema()),
            "repetition_penalty": _nullable(RANGES["repetition_penalty"].json_schema()),
            "logit_bias": _nullable({"type": "object", "additionalProperties": BIAS_RANGE.json_schema()}),
            "n": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_N}),
            "stream": _nullable(_BOOL),
            "stream_options": _nullable(_object({"include_usage": _BOOL})),
            "timeout_ms": _nullable(
                {"type": "integer", "minimum": 1, "description": "extension: at most RequestTimeoutMs"}
            ),
        }
    ),
    "ChatRequest": {
        "allOf": [
            _ref("Sampling"),
            _object(
                {
                    "messages": {"type": "array", "items": _ref("Message"), "minItems": 1},
                    "logprobs": _nullable(_BOOL),
                    "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 20}),
                    "response_format": _nullable(
                        _object(
                            {
                                "type": {"enum": ["text", "json_object", "json_schema"]},
                                "json_schema": {"type": "object"},
                            },
                            ("type",),
                        )
                    ),
                    "tools": _nullable({"type": "array", "items": {"type": "object"}}),
                    "tool_choice": _nullable(
                        {"anyOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]}
                    ),
                },
                ("messages",),
            ),
        ]
    },
    "CompletionRequest": {
        "allOf": [
            _ref("Sampling"),
            _object(
                {
                    "prompt": _texts_or_tokens(MAX_PROMPTS),
                    "echo": _nullable(_BOOL),
                    "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 5}),
                },
                ("prompt",),
            ),
        ]
    },
    "EmbeddingRequest": _object(
        {
            "input": _texts_or_tokens(MAX_EMBEDDING_INPUTS),
            "model": _nullable(_STR),
            "encoding_format": _nullable({"enum": ["float", "base64"]}),
        },
        ("input",),
    ),
    "ChatCompletion": _completion(
        "chat.completion", _CHAT_MESSAGE, ["stop", "length", "tool_calls"], chunk=False
    ),
    "Completion": _completion("text_completion", {"text": _STR}, ["stop", "length"], chunk=False),
    "ChatCompletionChunk": _completion(
        "chat.completion.chunk", {"delta": {"type": "object"}}, ["stop", "length", "tool_calls"], chunk=True
    ),
    "CompletionChunk": _completion("text_completion", {"text": _STR}, ["stop", "length"], chunk=True),
    "EmbeddingList": _object(
        {
            "object": {"const": "list"},
            "model": _STR,
            "data": {
                "type": "array",
                "items": _object(
                    {
                        "object": {"const": "embedding"},
                        "index": _INT,
                        "embedding": {"anyOf": [{"type": "array", "items": _NUM}, _STR]},
                    },
                    ("object", "index", "embedding"),
                ),
            },
            "usage": _object(
                {"prompt_tokens": _INT, "total_tokens": _INT}, ("prompt_tokens", "total_tokens")
            ),
        },
        ("object", "model", "data", "usage"),
    ),
    "TokenizeRequest": _object(
        {"content": _STR, "add_special": _BOOL, "parse_special": _BOOL, "with_pieces": _BOOL}, ("content",)
    ),
    "TokenizeResponse": _object(
        {
            "tokens": {
                "type": "array",
                "items": {
                    "anyOf": [
                        _INT,
                        _object(
                            {"id": _INT, "piece": {"anyOf": [_STR, {"type": "array", "items": _INT}]}},
                            ("id", "piece"),
                        ),
                    ]
                },
            }
        },
        ("tokens",),
    ),
    "DetokenizeRequest": _object({"tokens": _TOKEN_IDS}, ("tokens",)),
    "DetokenizeResponse": _object({"content": _STR}, ("content",)),
    "Health": _object({"status": {"const": "healthy"}}, ("status",)),
    "Ready": _object(
        {"status": {"enum": ["ready", "not ready"]}, "reason": _STR, "capabilities": {"type": "object"}},
        ("status",),
    ),
}


def _stream(chunk: str) -> dict:
    """Server-sent events, each described on its own (OpenAPI 3.1 reads an event stream's
    schema per event): a JSON chunk, an error object after which the stream ends, or the
    final [DONE]."""
    data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [_ref(chunk), _ref("Error")]},
        "description": f'a {chunk} as JSON, an error as JSON, or the final "[DONE]"',
    }
    return {"text/event-stream": {"schema": _object({"data": data, "event": _STR}, ("data",))}}


def _post(
    summary: str, request: str, response: str, errors=_GENERATION_ERRORS, chunk: str | None = None
) -> dict:
    ok = _json(_ref(response), "the answer")
    if chunk:
        ok["content"].update(_stream(chunk))
        ok["description"] += '; with "stream": true, server-sent events of chunks, then [DONE]'
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": {"200": ok, **_errors(*errors)},
        }
    }


def _get(summary: str, ok: dict, errors=_COMMON_ERRORS, protected=False, head=False) -> dict:
    operation = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
    if protected:
        operation["security"] = [{}, {"bearer": []}]
    item = {"get": operation}
    if head:
        item["head"] = {
            "summary": summary + " (headers only)",
            "responses": {"200": {"description": "as GET, without a body"}, **_errors(*errors)},
            **({"security": operation["security"]} if protected else {}),
        }
    return item


def openapi_document() -> dict:
    metrics = {"description": "Prometheus text format", "content": {"text/plain": {"schema": _STR}}}
    ready = _json(_ref("Ready"), "ready, with the model's capabilities")
    ready_or_not = {"200": ready, "503": _json(_ref("Ready"), "not ready, with the reason")}
    readyz = _get("readiness: the model is loaded and serving", ready, head=True)
    for operation in (readyz["get"], readyz["head"]):
        operation["responses"]["503"] = ready_or_not["503"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SmallMind",
            "version": smallmind.__version__,
            "description": "Small quantized LLMs on the CPU behind an OpenAI-compatible API. "
            'Errors are {"error": {message, type, code, param}}.',
        },
        "paths": {
            "/v1/chat/completions": _post(
                "chat completion", "ChatRequest", "ChatCompletion", chunk="ChatCompletionChunk"
            ),
            "/v1/completions": _post(
                "text completion", "CompletionRequest", "Completion", chunk="CompletionChunk"
            ),
            "/v1/embeddings": _post("embeddings", "EmbeddingRequest", "EmbeddingList"),
            "/tokenize": _post("text to token ids (llama.cpp's)", "TokenizeRequest", "TokenizeResponse"),
            "/detokenize": _post(
                "token ids to text (llama.cpp's)", "DetokenizeRequest", "DetokenizeResponse"
            ),
            "/v1/models": _get(
                "the served model",
                _json(_ref("ModelList"), "one model"),
                _COMMON_ERRORS + ("401", "503"),
                protected=True,
                head=True,
            ),
            "/v1/models/{model}": {
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": _STR}],
                **_get(
                    "one model by id",
                    _json(_ref("Model"), "the model"),
                    _COMMON_ERRORS + ("401", "404", "503"),
                    protected=True,
                ),
            },
            "/healthz": _get("liveness", _json(_ref("Health"), "alive"), head=True),
            "/readyz": readyz,
            "/metrics": _get("Prometheus metrics", metrics, _COMMON_ERRORS + ("401",), protected=True),
            "/openapi.json": _get(
                "this document",
                {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            ),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required only when ApiKey is set",
                }
            },
        },
    }
