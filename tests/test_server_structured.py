"""Structured output and function calling on the real server with the official SDK: json_object,
json_schema (SDK parse with Pydantic models, streamed and not, validated with jsonschema), named
and required tool calls (streamed and not), and unsupported schema keywords refused."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import server_fixture

server = server_fixture("--ServerOptions:MaxContextTokens=1024")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int


class Palette(BaseModel):
    colors: list[Literal["red", "green", "blue", "yellow", "black", "white"]] = Field(
        min_length=1, max_length=3
    )
    favorite: Literal["red", "green", "blue"]


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int
    nickname: str | None = Field(max_length=12)
    is_student: bool


class Point(BaseModel):
    x: float
    y: float


class Shape(BaseModel):
    kind: Literal["triangle", "square"]
    corners: list[Point] = Field(min_length=1, max_length=4)


CASES = [
    (City, "Describe Paris as JSON."),
    (City, "Give me a city in Japan."),
    (Palette, "Pick some colors for a flag."),
    (Palette, "Which colors are in a rainbow?"),
    (Person, "Invent a person."),
    (Person, "Describe a student called Ana, 20 years old."),
    (Shape, "Describe a square with side 1."),
    (Shape, "A triangle, please."),
    (City, "What is the largest city in Brazil?"),
    (Person, "Who wrote Hamlet?"),
]


def messages(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model, prompt", CASES)
def test_parse_with_pydantic(client, model, prompt):
    r = client.beta.chat.completions.parse(
        model="x", messages=messages(prompt), response_format=model, max_tokens=200, temperature=0.7, seed=1
    )
    assert r.choices[0].finish_reason == "stop"
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, model)


@pytest.mark.parametrize("model, prompt", CASES)
def test_parse_streamed(client, model, prompt):
    with client.beta.chat.completions.stream(
        model="x", messages=messages(prompt), response_format=model, max_tokens=200, temperature=0.7, seed=2
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, model)


# Pydantic models with constrained fields: bounds (conint), patterns (constr), a format,
# nested models (Pydantic writes them as $defs + $ref), Literal and optional fields.
class Address(BaseModel):
    city: str = Field(max_length=24)
    postcode: str = Field(pattern=r"^[0-9]{5}$")


class Customer(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=18, le=99)
    email: str = Field(json_schema_extra={"format": "email"})
    tier: Literal["free", "pro", "team"]
    address: Address
    referrer: str | None = Field(default=None, max_length=12)


class Measurement(BaseModel):
    sensor: str = Field(pattern=r"^[A-Z]{2}[0-9]{2}$")
    celsius: float = Field(gt=-50, lt=60)
    taken: str = Field(json_schema_extra={"format": "date"})
    readings: list[int] = Field(min_length=1, max_length=3)


CONSTRAINED = [
    (Customer, "Register a customer from Berlin."),
    (Customer, "A new pro user, please."),
    (Measurement, "Log a temperature reading."),
    (Measurement, "A sensor reading from today."),
]


@pytest.mark.parametrize("model, prompt", CONSTRAINED)
@pytest.mark.parametrize("streamed", [False, True])
def test_parse_constrained_fields(client, model, prompt, streamed):
    request = dict(model="x", messages=messages(prompt), response_format=model, max_tokens=200, temperature=0)
    if streamed:
        with client.beta.chat.completions.stream(**request) as stream:
            for _ in stream:
                pass
            reply = stream.get_final_completion()
    else:
        reply = client.beta.chat.completions.parse(**request)
    message = reply.choices[0].message
    assert isinstance(message.parsed, model)
    schema = model.model_json_schema()
    jsonschema.validate(
        json.loads(message.content), schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_json_schema_validates(client):
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["title", "tags", "rating"],
        "properties": {
            "title": {"type": "string", "maxLength": 30},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
            "rating": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
    }
    rf = {"type": "json_schema", "json_schema": {"name": "review", "schema": schema, "strict": True}}
    for seed in range(4):
        r = client.chat.completions.create(
            model="x",
            messages=messages("Review a movie."),
            response_format=rf,
            max_tokens=150,
            temperature=1.0,
            seed=seed,
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_object_mode(client):
    prompts = [
        "Describe a cat.",
        "List two fruits.",
        "Your name?",
        "Weather today?",
        "A book.",
        "Numbers one to three.",
        "A recipe.",
        "A car.",
        "Hello!",
        "Summarize: the sky is blue.",
        "A song.",
        "A planet.",
        "A game.",
        "A tree.",
        "An animal.",
        "A color.",
        "A country.",
        "A city.",
        "A tool.",
        "A sport.",
    ]
    for i, prompt in enumerate(prompts):
        r = client.chat.completions.create(
            model="x",
            messages=messages(prompt),
            max_tokens=400,
            seed=i,
            response_format={"type": "json_object"},
            temperature=0,
        )
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["city", "unit"],
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["zone"],
            "properties": {"zone": {"type": "string", "maxLength": 20}},
        },
    },
}
PARAMS = {"get_weather": WEATHER["function"]["parameters"], "get_time": CLOCK["function"]["parameters"]}

# `uniqueItems` is a keyword the constrained decoder cannot enforce.
UNIQUE_ITEMS = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}


@pytest.mark.parametrize(
    "fields, param",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": UNIQUE_ITEMS},
                }
            },
            "response_format",
        ),
        (
            {
                "tools": [
                    WEATHER,
                    {"type": "function", "function": {"name": "tag", "parameters": UNIQUE_ITEMS}},
                ],
                "tool_choice": "required",
            },
            "tools[1].function.parameters",
        ),
    ],
    ids=["response_format", "tool"],
)
def test_unsupported_keyword_is_400_naming_its_place(client, fields, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=messages("hi"), **fields)
    assert "uniqueItems" in e.value.body["message"]
    assert e.value.body["param"] == param


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"])
def test_tool_calls(client, choice):
    r = client.chat.completions.create(
        model="x",
        messages=messages("What's the weather in Oslo?"),
        tools=[WEATHER, CLOCK],
        tool_choice=choice,
        max_tokens=120,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_time"}}, "required"])
def test_tool_calls_streamed(client, choice):
    names, arguments, finish = {}, {}, None
    for chunk in client.chat.completions.create(
        model="x",
        messages=messages("What time is it in Tokyo?"),
        tools=[WEATHER, CLOCK],
        tool_choice=choice,
        max_tokens=120,
        stream=True,
    ):
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            if tc.function.name:
                names[tc.index] = tc.function.name
            arguments[tc.index] = arguments.get(tc.index, "") + (tc.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and names
    jsonschema.validate(json.loads(arguments[0]), PARAMS[names[0]])


def test_tool_conversation_round_trip(client):
    """An assistant call and its tool result in the history are accepted."""
    history = messages("What's the weather in Oslo?") + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 3}'},
    ]
    r = client.chat.completions.create(model="x", messages=history, tools=[WEATHER], max_tokens=20)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_max_tokens_inside_json_ends_with_length(client):
    r = client.chat.completions.create(
        model="x",
        messages=messages("A city."),
        max_tokens=3,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": City.model_json_schema()},
        },
    )
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.startswith("{")
