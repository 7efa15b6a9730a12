"""Function calling helpers: prompts for templates with and without tool support, the forced
call schema, finding calls in model text."""

import json

from smallmind.server.chat import tool_calls as tc

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def test_builtin_prompt_goes_into_the_system_message():
    msgs = tc.prepare_messages([{"role": "user", "content": "hi"}], [WEATHER], template_handles_tools=False)
    assert msgs[0]["role"] == "system" and "get_weather" in msgs[0]["content"] and msgs[1]["content"] == "hi"
    msgs = tc.prepare_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [WEATHER],
        template_handles_tools=False,
    )
    assert (
        msgs[0]["content"].startswith("Be brief.") and "get_weather" in msgs[0]["content"] and len(msgs) == 2
    )


def test_history_calls_and_results():
    history = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3 C"},
    ]
    as_text = tc.prepare_messages(history, [], template_handles_tools=False)
    assert json.loads(as_text[0]["content"]) == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert as_text[1] == {"role": "user", "content": "Function result: 3 C"}
    hf = tc.prepare_messages(history, [WEATHER], template_handles_tools=True)
    assert hf[0]["tool_calls"][0]["function"]["arguments"] == {
        "city": "Oslo"
    }  # objects, as HF templates expect
    assert hf[1] == history[1]


def test_call_schema():
    assert tc.call_schema([WEATHER, CLOCK], "auto") is None and tc.call_schema([WEATHER], "none") is None
    named = tc.call_schema([WEATHER, CLOCK], {"type": "function", "function": {"name": "get_time"}})
    assert named["properties"]["name"] == {"const": "get_time"}
    assert named["properties"]["arguments"] == {"$ref": "#/$defs/tool1"}
    assert named["$defs"]["tool1"] == CLOCK["function"]["parameters"]
    assert [
        o["properties"]["name"]["const"] for o in tc.call_schema([WEATHER, CLOCK], "required")["anyOf"]
    ] == ["get_weather", "get_time"]


def test_call_schema_keeps_references_working():
    # Pydantic's nested models: "#/$defs/..." relative to the parameters, which now sit deeper
    nested = {
        "type": "function",
        "function": {
            "name": "plan",
            "parameters": {
                "$defs": {
                    "Stop": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    }
                },
                "type": "object",
                "properties": {
                    "stops": {"type": "array", "items": {"$ref": "#/$defs/Stop"}},
                    "again": {"$ref": "#"},
                },
            },
        },
    }
    schema = tc.call_schema([WEATHER, nested], "required")
    plan = schema["$defs"]["tool1"]
    assert plan["properties"]["stops"]["items"] == {"$ref": "#/$defs/tool1/$defs/Stop"}
    assert plan["properties"]["again"] == {"$ref": "#/$defs/tool1"}
    from smallmind.engine.grammar import compile_json_schema

    compile_json_schema(schema)  # every reference resolves


def test_truncated_call():
    tools = [WEATHER, CLOCK]
    cut = tc.truncated_call('{"name": "get_time", "arguments": {"zone": "Eu', tools)
    assert cut[0]["function"] == {"name": "get_time", "arguments": '{"zone": "Eu'}
    assert cut[0]["id"].startswith("call_") and cut[0]["type"] == "function"
    assert tc.truncated_call('{"name": "get_w', tools)[0]["function"] == {
        "name": "get_weather",
        "arguments": "",
    }
    assert tc.truncated_call('{"name": "nothing"', tools) is None


def test_find_tool_calls():
    calls = tc.find_tool_calls('{"name": "get_weather", "arguments": {"city": "Oslo"}}', [WEATHER])
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    tagged = tc.find_tool_calls(
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', [WEATHER, CLOCK]
    )
    assert tagged[0]["function"]["name"] == "get_time"
    llama = tc.find_tool_calls('{"name": "get_weather", "parameters": {"city": "Rome"}}', [WEATHER])
    assert json.loads(llama[0]["function"]["arguments"]) == {"city": "Rome"}
    assert tc.find_tool_calls("It is sunny.", [WEATHER]) is None
    assert tc.find_tool_calls('{"name": "unknown", "arguments": {}}', [WEATHER]) is None
    assert tc.find_tool_calls('{"answer": 1}', [WEATHER]) is None


def test_could_become_call():
    assert tc.could_become_call("") and tc.could_become_call("  {") and tc.could_become_call("<tool")
    assert not tc.could_become_call("The weather") and not tc.could_become_call("<b>")
