"""Turn OpenAI chat ``messages`` into the prompt text a model was trained on.

A GGUF usually carries its chat format as a Jinja template in the metadata key
``tokenizer.chat_template``.  We render it the way Hugging Face ``transformers`` does, so
templates written for that ecosystem produce the same text here:

* a sandboxed environment (:class:`jinja2.sandbox.ImmutableSandboxedEnvironment`): the
  template comes from a downloaded file, so it must not reach Python internals nor mutate
  the messages.  We go one step further than the stock sandbox: touching an unsafe
  attribute (``''.__class__``) is an error straight away instead of a silent undefined;
* ``trim_blocks=True, lstrip_blocks=True`` and the ``loopcontrols`` extension
  (``{% break %}`` / ``{% continue %}``);
* a ``tojson`` filter that writes plain JSON (``ensure_ascii=False``, ``indent``,
  ``separators``, ``sort_keys``) rather than Jinja's HTML-safe variant;
* the variables ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and
  the functions ``raise_exception(message)`` and ``strftime_now(format)``.

A template calling ``raise_exception`` is refusing the conversation (say, a system role
the model does not support): that becomes a :class:`RequestValidationError` carrying the
template's message.  Any other failure while rendering is reported as
``RequestValidationError("chat template failed: ...")``; a template that does not even
compile is a broken model file, :class:`ModelFormatError`, raised when the
:class:`ChatTemplate` is built (templates are compiled once, not per request).

Without a template in the file we pick a built-in one (written here as Jinja and rendered
by the same machinery) from the architecture and the vocabulary: Gemma turns, Llama 3
headers, or ChatML as the fallback.  The default model, Gemma 3 270M, has no template, so
the Gemma built-in is what users get by default.

Messages are validated and normalised by :func:`normalize_messages` before any template
sees them: ``developer`` becomes ``system``, ``content`` becomes a plain string, and every
problem is a :class:`RequestValidationError` naming the offending index.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from smallmind.errors import ModelFormatError, RequestValidationError

__all__ = ["ChatTemplate", "normalize_messages", "BUILTIN_TEMPLATES"]

ROLES = ("system", "developer", "user", "assistant", "tool")
# OpenAI's "developer" role is the newer name of "system"; no model template knows it.
ROLE_ALIASES = {"developer": "system"}
# Content parts a text-only model cannot take; named in the error so the client knows why.
UNSUPPORTED_PART_TYPES = ("image_url", "input_audio", "file")
# Text parts are separate blocks of text: gluing them with "" can merge the last word of
# one part with the first word of the next ("Hello" + "world"), a newline keeps them apart
# without inventing more structure than the client sent.
TEXT_PART_SEPARATOR = "\n"


def _invalid(message: str) -> RequestValidationError:
    """A RequestValidationError about the ``messages`` parameter."""
    return RequestValidationError(message, param="messages")


# --------------------------------------------------------------------------- messages


def normalize_messages(messages: Any) -> list[dict]:
    """Validate OpenAI chat messages; return new dicts with ``role`` (``developer`` mapped to
    ``system``) and ``content`` as a string.  Other keys (``name``, ``tool_calls``,
    ``tool_call_id``, ...) are kept as they are for templates that use them."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise _invalid("messages must be a list of message objects")
    if not messages:
        raise _invalid("messages must not be empty")
    return [_normalize_message(message, index) for index, message in enumerate(messages)]


def _normalize_message(message: Any, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise _invalid(f"{where} must be an object with 'role' and 'content'")
    role: Any = message.get("role")  # any JSON value until checked against ROLES
    if role not in ROLES:
        shown = "missing" if role is None else repr(role)
        raise _invalid(f"{where}.role must be one of {', '.join(ROLES)} (got {shown})")
    role = ROLE_ALIASES.get(role, role)
    _check_optional_fields(message, where)
    normalized = dict(message)
    normalized["role"] = role
    normalized["content"] = _content_text(message, role, where)
    return normalized


def _check_optional_fields(message: Mapping, where: str) -> None:
    for key in ("name", "tool_call_id"):
        if key in message and not isinstance(message[key], str):
            raise _invalid(f"{where}.{key} must be a string")
    # A tool result answers one call: OpenAI refuses it without the call's id.
    if message.get("role") == "tool" and "tool_call_id" not in message:
        raise _invalid(f"{where}.tool_call_id is required for role 'tool'")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if message.get("role") != "assistant":
            raise _invalid(f"{where}.tool_calls is only allowed on assistant messages")
        if not isinstance(tool_calls, list):
            raise _invalid(f"{where}.tool_calls must be a list")
        for i, call in enumerate(tool_calls):
            _check_tool_call(call, f"{where}.tool_calls[{i}]")


def _check_tool_call(call: Any, where: str) -> None:
    """An earlier call as OpenAI requires it: {"id", "type": "function", "function":
    {"name", "arguments"}}, all strings."""
    if not isinstance(call, Mapping):
        raise _invalid(f"{where} must be an object")
    if not isinstance(call.get("id"), str):
        raise _invalid(f"{where}.id must be a string")
    if call.get("type") != "function":
        raise _invalid(f"{where}.type must be 'function'")
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise _invalid(f"{where}.function must be an object with 'name' and 'arguments'")
    for key in ("name", "arguments"):
        if not isinstance(function.get(key), str):
            raise _invalid(f"{where}.function.{key} must be a string")


def _content_text(message: Mapping, role: str, where: str) -> str:
    """The message's content as one string."""
    # An assistant turn that only calls tools has no text: OpenAI sends null or omits it.
    if (
        role == "assistant"
        and message.get("content") is None
        and ("content" in message or message.get("tool_calls"))
    ):
        return ""
    if "content" not in message:
        raise _invalid(f"{where}.content is missing")
    content = message["content"]
    if isinstance(content, str):
        return content
    if content is None:
        raise _invalid(f"{where}.content must not be null for role {role!r}")
    if isinstance(content, list):
        return _join_text_parts(content, where)
    raise _invalid(f"{where}.content must be a string or a list of content parts")


def _join_text_parts(parts: list, where: str) -> str:
    if not parts:
        raise _invalid(f"{where}.content must not be an empty list")
    texts = []
    for part_index, part in enumerate(parts):
        part_where = f"{where}.content[{part_index}]"
        if not isinstance(part, Mapping):
            raise _invalid(f"{part_where} must be an object with a 'type'")
        part_type = part.get("type")
        if part_type in UNSUPPORTED_PART_TYPES:
            raise _invalid(
                f"{part_where}: content parts of type {part_type!r} are not "
                "supported (this server serves text-only models)"
            )
        if part_type != "text":
            raise _invalid(f"{part_where}.type must be 'text' (got {part_type!r})")
        if not isinstance(part.get("text"), str):
            raise _invalid(f"{part_where}.text must be a string")
        texts.append(part["text"])
    return TEXT_PART_SEPARATOR.join(texts)


# --------------------------------------------------------------------------- environment


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, but an unsafe attribute is an error at once.  The stock
    sandbox returns an undefined that prints as "" and only fails on further use, which
    would let a probing template render quietly."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _raise_exception(message: Any) -> None:
    """``raise_exception(msg)`` in a template: the template refuses this conversation."""
    raise _invalid(str(message))


def _current_time() -> datetime:
    # A module-level hook so tests can pin the clock for templates that print the date.
    return datetime.now()


def _strftime_now(format: str) -> str:
    return _current_time().strftime(format)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Plain JSON, as HF templates expect: Jinja's own ``tojson`` escapes ``<>&'`` for HTML,
    which would change the prompt text."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _make_environment() -> jinja2.Environment:
    environment = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


# --------------------------------------------------------------------------- built-ins

# Gemma: user/model turns, no system role.  As Gemma's own template does, a system message
# is put at the start of the next user turn followed by a blank line, and contents are
# trimmed.  Tool results go in a user turn: Gemma has no tool role it was trained on.
GEMMA_TEMPLATE = r"""
{{- bos_token -}}
{%- set pending = namespace(system="") -%}
{%- for message in messages -%}
    {%- if message.role == "system" -%}
        {%- set pending.system = pending.system + (message.content | trim) + "\n\n" -%}
    {%- elif message.role == "assistant" -%}
        {{- "<start_of_turn>model\n" + (message.content | trim) + "<end_of_turn>\n" -}}
    {%- else -%}
        {{- "<start_of_turn>user\n" + pending.system + (message.content | trim) + "<end_of_turn>\n" -}}
        {%- set pending.system = "" -%}
    {%- endif -%}
{%- endfor -%}
{#- A system message with no user turn after it still reaches the model, in a turn of its own. -#}
{%- if pending.system -%}
    {{- "<start_of_turn>user\n" + (pending.system | trim) + "<end_of_turn>\n" -}}
{%- endif -%}
{%- if add_generation_prompt -%}
    {{- "<start_of_turn>model\n" -}}
{%- endif -%}
"""

# Llama 3: a header per message; contents trimmed as Meta's template does.
LLAMA3_TEMPLATE = r"""
{{- bos_token -}}
{%- for message in messages -%}
    {{- "<|start_header_id|>" + message.role + "<|end_header_id|>\n\n" + (message.content | trim) + "<|eot_id|>" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" -}}
{%- endif -%}
"""

# ChatML (Qwen and many others): contents verbatim, no BOS.
CHATML_TEMPLATE = r"""
{%- for message in messages -%}
    {{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
{%- endif -%}
"""

# name -> (source, BOS text to use when the vocabulary does not tell us)
BUILTIN_TEMPLATES: dict[str, tuple[str, str]] = {
    "gemma": (GEMMA_TEMPLATE, "<bos>"),
    "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>"),
    "chatml": (CHATML_TEMPLATE, ""),
}

GEMMA_ARCHITECTURES = {"gemma", "gemma2", "gemma3", "gemma3n"}
QWEN_ARCHITECTURES = {"qwen2", "qwen3"}
LLAMA3_PRE_TOKENIZERS = {"llama-bpe", "llama3"}
LLAMA3_MARKER_TOKEN = "<|start_header_id|>"


def _builtin_name(metadata: Mapping, tokens: Sequence[str] | None) -> str:
    architecture = metadata.get("general.architecture")
    if architecture in GEMMA_ARCHITECTURES:
        return "gemma"
    if architecture == "llama" and _has_llama3_vocabulary(metadata, tokens):
        return "llama3"
    # Qwen speaks ChatML, and so does the fallback: the most widely trained-on format.
    return "chatml"


def _has_llama3_vocabulary(metadata: Mapping, tokens: Sequence[str] | None) -> bool:
    # A "llama" GGUF may be Llama 2, Mistral, ... ; only Llama 3's vocabulary has headers.
    if metadata.get("tokenizer.ggml.pre") in LLAMA3_PRE_TOKENIZERS:
        return True
    return tokens is not None and LLAMA3_MARKER_TOKEN in tokens


def _special_token_text(metadata: Mapping, tokens: Sequence[str] | None, key: str) -> str:
    """The text of the token whose id is stored under ``key``; "" when unknown."""
    if key not in metadata or tokens is None:
        return ""
    try:
        token_id = operator.index(metadata[key])
    except TypeError:
        raise ModelFormatError(f"{key} is not an integer: {metadata[key]!r}") from None
    if not 0 <= token_id < len(tokens):
        raise ModelFormatError(f"{key} = {token_id} is outside the vocabulary of {len(tokens)} tokens")
    return tokens[token_id]


# --------------------------------------------------------------------------- template


class ChatTemplate:
    """A compiled chat template.  ``name`` is ``"gguf"`` for a model's own template, or
    the built-in's name (``"gemma"``, ``"llama3"``, ``"chatml"``)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "gguf"):
        if not isinstance(source, str):
            raise ModelFormatError(f"chat template {name!r} is not a string")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        try:
            self._template = _make_environment().from_string(source)
        except jinja2.TemplateError as error:
            raise ModelFormatError(f"chat template {name!r} does not compile: {error}") from None

    @classmethod
    def for_model(cls, metadata: Mapping, tokens: Sequence[str] | None = None) -> ChatTemplate:
        """The template for a GGUF: its own ``tokenizer.chat_template`` if it has one, else
        a built-in chosen by architecture and vocabulary.  ``metadata`` is the GGUF
        key/value dict; ``tokens`` defaults to its ``tokenizer.ggml.tokens``."""
        if tokens is None:
            tokens = metadata.get("tokenizer.ggml.tokens")
        bos_token = _special_token_text(metadata, tokens, "tokenizer.ggml.bos_token_id")
        eos_token = _special_token_text(metadata, tokens, "tokenizer.ggml.eos_token_id")
        source = metadata.get("tokenizer.chat_template")
        if source:  # an empty string is as good as no template
            return cls(source, bos_token, eos_token, name="gguf")
        name = _builtin_name(metadata, tokens)
        builtin_source, default_bos = BUILTIN_TEMPLATES[name]
        return cls(builtin_source, bos_token or default_bos, eos_token, name=name)

    @property
    def handles_tools(self) -> bool:
        """Whether the template renders a ``tools`` list itself (HF convention)."""
        return re.search(r"\btools\b", self.source) is not None

    def render(self, messages: list, add_generation_prompt: bool = True, tools: list | None = None) -> str:
        """The prompt text for ``messages`` (validated with :func:`normalize_messages`);
        ``tools`` (OpenAI tool objects) are given to templates that handle them."""
        normalized = normalize_messages(messages)
        extra = {"tools": tools} if tools else {}
        try:
            return self._template.render(
                messages=normalized,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except RequestValidationError:
            raise  # raise_exception() from the template: its message says it all
        except Exception as error:
            # The template is data from the model file: whatever goes wrong inside it
            # (Jinja errors, sandbox refusals, a TypeError from `"a" + none`) is the
            # template failing on this conversation, not a bug of the server.
            raise _invalid(f"chat template failed: {type(error).__name__}: {error}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r})"
