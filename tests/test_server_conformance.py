"""Issue 17's repros against the real server, as raw HTTP (the bodies the curl commands send):
JSON Schema keywords in response_format and tool parameters, list-of-parts content beside
tool calls, forced calls cut by max_tokens, $defs in tool parameters, format, stop strings
around constrained output, the small stream conformance items, the legacy functions API, and
the grammar / regex extensions."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import server_fixture
from server_process import http

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER  # the draft's own meaning of each format


server = server_fixture("--ServerOptions:MaxContextTokens=1024")


def chat(server, body: dict) -> tuple[int, dict]:
    status, _, raw = http(
        "POST",
        server.url + "/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        timeout=300,
    )
    return status, json.loads(raw)


def chat_stream(server, body: dict) -> list[dict]:
    status, _, raw = http(
        "POST",
        server.url + "/v1/chat/completions",
        json.dumps(dict(body, stream=True)).encode(),
        {"Content-Type": "application/json"},
        timeout=300,
    )
    assert status == 200, raw
    events = [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def streamed_calls(chunks: list[dict]) -> tuple[dict, dict, str | None]:
    """(names by index, arguments by index, finish_reason) of a streamed answer."""
    names, arguments, finish = {}, {}, None
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                fn = call.get("function") or {}
                if fn.get("name"):
                    names[call["index"]] = fn["name"]
                arguments[call["index"]] = arguments.get(call["index"], "") + (fn.get("arguments") or "")
            finish = choice["finish_reason"] or finish
    return names, arguments, finish


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def answer_under_schema(server, prompt: str, schema: dict, max_tokens: int) -> dict:
    """A greedy answer under response_format json_schema; it must be 200 and valid against
    `schema`, formats included.  The body, for the caller's own checks."""
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    request = {"messages": user(prompt), "max_tokens": max_tokens, "temperature": 0}
    status, body = chat(server, dict(request, response_format=response_format))
    assert status == 200, body
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema, format_checker=FORMATS)
    return body


MAGIC = {
    "type": "function",
    "function": {
        "name": "magic_function",
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "integer", "exclusiveMinimum": -1000, "exclusiveMaximum": 1000}},
            "required": ["input"],
        },
    },
}


# ---- item 1: numeric bounds, multipleOf and pattern are enforced, not refused ----


def test_item1_bounded_tool_parameters(server):
    status, body = chat(
        server,
        {"model": "m", "messages": user("magic_function(3)?"), "tool_choice": "required", "tools": [MAGIC]},
    )
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "magic_function"
    jsonschema.validate(json.loads(call["arguments"]), MAGIC["function"]["parameters"])


def test_item1_bounded_response_format(server):
    schema = {
        "type": "object",
        "required": ["age", "score", "step", "code"],
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 30},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "step": {"type": "integer", "multipleOf": 5},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        },
    }
    body = answer_under_schema(server, "Invent a player.", schema, max_tokens=80)
    assert body["choices"][0]["finish_reason"] == "stop"


# ---- item 2: list-of-parts content beside tool_calls ----


def test_item2_list_content_with_tool_calls(server):
    status, body = chat(
        server,
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "What is 1 + 2"},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Let me add."}],
                    "tool_calls": [
                        {
                            "id": "abc123",
                            "type": "function",
                            "function": {"name": "add", "arguments": '{"a":1,"b":2}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "abc123", "content": [{"type": "text", "text": "3"}]},
            ],
        },
    )
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


# ---- item 3: a forced call cut by max_tokens is still a call ----

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


@pytest.mark.parametrize("max_tokens", [3, 9])
def test_item3_truncated_forced_call(server, max_tokens):
    request = {
        "messages": user("Weather in Oslo?"),
        "tools": [WEATHER],
        "max_tokens": max_tokens,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    status, body = chat(server, request)
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    assert not call["function"]["arguments"].endswith("}")  # partial, as far as it got
    names, arguments, finish = streamed_calls(chat_stream(server, request))
    assert finish == "length" and names == {0: "get_weather"}
    assert arguments[0] == call["function"]["arguments"]  # greedy: the same partial call


# ---- item 4: $defs / $ref in tool parameters ----


def test_item4_defs_in_tool_parameters(server):
    params = {
        "$defs": {
            "Stop": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "nights": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["city", "nights"],
            }
        },
        "type": "object",
        "properties": {
            "stops": {"type": "array", "items": {"$ref": "#/$defs/Stop"}, "minItems": 1, "maxItems": 3}
        },
        "required": ["stops"],
    }
    tool = {"type": "function", "function": {"name": "plan_trip", "parameters": params}}
    status, body = chat(
        server,
        {
            "messages": user("Plan two nights in Rome."),
            "tools": [tool, WEATHER],
            "tool_choice": "required",
            "max_tokens": 120,
            "temperature": 0,
        },
    )
    assert status == 200, body
    call = body["choices"][0]["message"]["tool_calls"][0]["function"]
    schema = params if call["name"] == "plan_trip" else WEATHER["function"]["parameters"]
    jsonschema.validate(json.loads(call["arguments"]), schema)


# ---- item 5: format is enforced ----


def test_item5_format(server):
    schema = {
        "type": "object",
        "required": ["email", "born", "id"],
        "properties": {
            "email": {"type": "string", "format": "email"},
            "born": {"type": "string", "format": "date"},
            "id": {"type": "string", "format": "uuid"},
        },
    }
    answer_under_schema(server, "A user record.", schema, max_tokens=120)


# ---- item 6: stop strings never cut constrained output ----


def test_item6_stop_does_not_cut_json(server):
    status, body = chat(
        server,
        {
            "messages": user("Describe yourself with name and age."),
            "stop": [","],
            "max_tokens": 120,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        },
    )
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)


def test_item6_stop_does_not_cut_forced_call(server):
    status, body = chat(
        server,
        {"messages": user("magic_function(3)?"), "tool_choice": "required", "tools": [MAGIC], "stop": ["{"]},
    )
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "magic_function"


def test_stop_still_applies_to_free_text(server):
    status, body = chat(
        server,
        {
            "messages": user("Count from 1 to 5 separated by commas."),
            "stop": [","],
            "max_tokens": 30,
            "temperature": 0,
        },
    )
    assert status == 200 and "," not in body["choices"][0]["message"]["content"]


# ---- item 7: usage null, system_fingerprint, content null for forced calls ----


def test_item7_stream_fields(server):
    chunks = chat_stream(
        server, {"messages": user("Hi"), "max_tokens": 5, "stream_options": {"include_usage": True}}
    )
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and chunks[-1]["choices"] == []
    assert all(c["system_fingerprint"] for c in chunks)
    status, body = chat(server, {"messages": user("Hi"), "max_tokens": 3})
    assert body["system_fingerprint"] == chunks[0]["system_fingerprint"]


def test_item7_forced_call_stream_opens_with_null_content(server):
    chunks = chat_stream(
        server, {"messages": user("magic_function(3)?"), "tool_choice": "required", "tools": [MAGIC]}
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)


def test_item7_legacy_functions(server):
    request = {
        "messages": user("magic_function(3)?"),
        "functions": [MAGIC["function"]],
        "function_call": {"name": "magic_function"},
    }
    status, body = chat(server, request)
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"]["name"] == "magic_function"
    jsonschema.validate(
        json.loads(choice["message"]["function_call"]["arguments"]), MAGIC["function"]["parameters"]
    )
    deltas = [c["choices"][0]["delta"] for c in chat_stream(server, request)]
    assert any("function_call" in d for d in deltas) and not any("tool_calls" in d for d in deltas)
    status, body = chat(server, dict(request, tools=[MAGIC]))
    assert status == 400 and body["error"]["param"] == "functions"


# ---- extensions: grammar (GBNF / Lark) and regex ----


def test_grammar_and_regex_extensions(server):
    status, body = chat(
        server,
        {"messages": user("Is the sky blue?"), "max_tokens": 10, "grammar": 'root ::= ("yes" | "no") "."'},
    )
    assert status == 200 and body["choices"][0]["message"]["content"] in ("yes.", "no.")
    status, body = chat(
        server,
        {
            "messages": user("Is the sky blue?"),
            "max_tokens": 10,
            "grammar": 'start: ANSWER\nANSWER: "yes" | "no"',
        },
    )
    assert status == 200 and body["choices"][0]["message"]["content"] in ("yes", "no")
    status, _, raw = http(
        "POST",
        server.url + "/v1/completions",
        json.dumps(
            {"prompt": "My phone number is", "max_tokens": 20, "regex": r" [0-9]{3}-[0-9]{4}"}
        ).encode(),
        {"Content-Type": "application/json"},
        timeout=300,
    )
    text = json.loads(raw)["choices"][0]["text"]
    assert status == 200 and len(text) == 9 and text[4] == "-", text


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"grammar": "root ::= ("}, "grammar"),
        ({"regex": "[0-9"}, "regex"),
        ({"regex": "a", "grammar": 'root ::= "a"'}, "regex"),
        ({"regex": "a", "response_format": {"type": "json_object"}}, "regex"),
        ({"grammar": 7}, "grammar"),
    ],
)
def test_extension_errors(server, extra, param):
    status, body = chat(server, dict({"messages": user("hi")}, **extra))
    assert status == 400 and body["error"]["param"] == param, body
