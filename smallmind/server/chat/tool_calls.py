"""Function calling: putting tools into the prompt, the schema a forced call must follow, and
finding calls in what the model wrote.  Knows nothing of HTTP.

A call is the JSON object ``{"name": ..., "arguments": {...}}``.  Templates that render
``tools`` themselves (Qwen's ``<tool_call>`` tags, Llama 3's JSON) get the tools and the
conversation in the Hugging Face shape; for the others a built-in system prompt describes the
functions and the call format, and earlier calls and results are written as text."""

from __future__ import annotations

import json
import re
import secrets

_BUILTIN_PROMPT = (
    "You can call functions. To call one, answer with only a JSON object of the form "
    '{{"name": <function name>, "arguments": <arguments object>}} and nothing else. '
    "The functions, as JSON schemas of their arguments:\n{functions}"
)


def tool_prompt(tools: list[dict]) -> str:
    lines = [
        json.dumps(
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "parameters": t["function"]["parameters"],
            },
            ensure_ascii=False,
        )
        for t in tools
    ]
    return _BUILTIN_PROMPT.format(functions="\n".join(lines))


def prepare_messages(messages: list, tools: list[dict], template_handles_tools: bool) -> list:
    """The conversation as the chat template should see it."""
    if template_handles_tools:
        return [_hf_message(m) for m in messages]
    out = [_as_text_message(m) for m in messages]
    if tools:
        prompt = tool_prompt(tools)
        if out and isinstance(out[0], dict) and out[0].get("role") in ("system", "developer"):
            out[0] = dict(out[0], content=f"{out[0].get('content') or ''}\n\n{prompt}".strip())
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _hf_message(message):
    """Hugging Face templates expect call arguments as objects; OpenAI sends JSON strings."""
    if not isinstance(message, dict) or not isinstance(message.get("tool_calls"), list):
        return message
    calls = []
    for call in message["tool_calls"]:
        fn = dict(call.get("function") or {}) if isinstance(call, dict) else {}
        if isinstance(fn.get("arguments"), str):
            try:
                fn["arguments"] = json.loads(fn["arguments"])
            except ValueError:
                pass
        calls.append(dict(call, function=fn, **fn) if isinstance(call, dict) else call)
    return dict(message, tool_calls=calls)


def _as_text_message(message):
    """For templates without tool support: calls and results become ordinary text."""
    if not isinstance(message, dict):
        return message
    if message.get("role") == "assistant" and isinstance(message.get("tool_calls"), list):
        calls = [
            json.dumps(
                {
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": _loads_or_text((c.get("function") or {}).get("arguments")),
                },
                ensure_ascii=False,
            )
            for c in message["tool_calls"]
            if isinstance(c, dict)
        ]
        text = "\n".join(filter(None, [message.get("content") or "", *calls]))
        return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": text}
    if message.get("role") == "tool":
        return {"role": "user", "content": f"Function result: {message.get('content') or ''}"}
    return message


def _loads_or_text(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def forced_tools(tools: list[dict], tool_choice) -> list[int]:
    """Indexes in ``tools`` of the functions a forced call may name: one (named choice), all
    (required), or none (auto / none: no constraint)."""
    if isinstance(tool_choice, dict):
        wanted = tool_choice["function"]["name"]
        return [i for i, t in enumerate(tools) if t["function"]["name"] == wanted]
    return list(range(len(tools))) if tool_choice == "required" else []


def call_schema(tools: list[dict], tool_choice) -> dict | None:
    """The JSON schema a forced call follows (None when calls are not forced).  Each chosen
    function's parameters go under ``$defs`` with their own references rebased, so a
    Pydantic schema's ``#/$defs/...`` still points where it did."""
    chosen = forced_tools(tools, tool_choice)
    if not chosen:
        return None
    defs, options = {}, []
    for i in chosen:
        fn = tools[i]["function"]
        defs[f"tool{i}"] = _rebased(fn["parameters"], f"#/$defs/tool{i}")
        options.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "arguments"],
                "properties": {"name": {"const": fn["name"]}, "arguments": {"$ref": f"#/$defs/tool{i}"}},
            }
        )
    root = options[0] if len(options) == 1 else {"anyOf": options}
    return dict(root, **{"$defs": defs})


def _rebased(schema, base: str):
    """``schema`` with every local reference (``#...``) made relative to ``base``."""
    if isinstance(schema, dict):
        return {
            k: (
                base + v[1:]
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _rebased(v, base)
            )
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_rebased(v, base) for v in schema]
    return schema


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def find_tool_calls(text: str, tools: list[dict]) -> list[dict] | None:
    """OpenAI tool_calls found in the model's text, or None when it is a plain answer: the
    whole text one call (or a list of calls), or ``<tool_call>`` blocks; unknown functions
    do not count as calls."""
    names = {t["function"]["name"] for t in tools}
    candidates = _TAGGED.findall(text) or [text.strip()]
    calls = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, names)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _as_call(item, names: set[str]) -> dict | None:
    if not isinstance(item, dict) or item.get("name") not in names:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _loads_or_text(arguments)
    if not isinstance(arguments, dict):
        return None
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": item["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


_NAME_SO_FAR = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)(")?')
_ARGUMENTS_START = re.compile(r'"arguments"\s*:\s*')


def truncated_call(text: str, tools: list[dict]) -> list[dict] | None:
    """A forced call that ``max_tokens`` cut short, as OpenAI returns one: the function (the
    first whose name fits what was written of it) and the arguments as far as they got."""
    found = _NAME_SO_FAR.search(text)
    written, closed = (found.group(1), bool(found.group(2))) if found else ("", False)
    names = [t["function"]["name"] for t in tools]
    fitting = [n for n in names if (n == written if closed else n.startswith(written))]
    if not fitting:
        return None
    start = _ARGUMENTS_START.search(text)
    arguments = text[start.end() :] if start else ""
    return [
        {
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": fitting[0], "arguments": arguments},
        }
    ]


def could_become_call(text: str) -> bool:
    """While streaming in auto mode: may this beginning still turn out to be a call? Such
    text is held back until it is known."""
    head = text.lstrip()
    return (
        head == ""
        or head.startswith(("{", "["))
        or "<tool_call>".startswith(head[:11])
        or head.startswith("<tool_call>")
    )
