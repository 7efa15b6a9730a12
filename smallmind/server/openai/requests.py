"""Requests of the OpenAI API: their types and the parsers that read them from a body.

``parse_chat`` / ``parse_completion`` / ``parse_embedding`` (and llama.cpp's ``parse_tokenize``
/ ``parse_detokenize``) turn a body into a typed request, or raise ``RequestValidationError``
whose ``param`` names the offending field.  Fields we do not know are ignored, because OpenAI
clients send many; those we know (``logprobs``, ``tools``, ``response_format``, ...) are all
read and checked.  A JSON ``null`` means "not given".  Sampling fields are only picked out
here: ``SamplingParams`` judges their values and holds their defaults.

Sampling determinism: choice ``j`` of a request with ``seed`` s samples with seed ``s + j``
(``choice_params``), so the ``n`` choices differ from each other yet a repeated request
reproduces every one of them.  Without a seed each choice draws its own OS entropy.

Completion choices are numbered prompt-major: choice ``j`` of prompt ``i`` has index
``i * n + j`` (``choice_index``), as OpenAI numbers them.

Vocabulary-dependent checks (token ids in range, logit_bias keys) need the loaded model and
are done by ``check_vocabulary``; context-length fitting by ``fit_max_tokens``.  How one
field is read (types, JSON null, the prompt forms) is ``fields.py``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from smallmind.engine.sampling_params import BIAS_RANGE, RANGES, SamplingParams
from smallmind.server.openai.errors import ContextLengthError, LimitExceededError
from smallmind.server.openai.fields import (
    NumberField,
    invalid,
    load_object,
    read_bool,
    read_string,
    read_text_field,
    read_texts_or_tokens,
    token_ids,
)
from smallmind.values import Range, check_token_ids, shown

__all__ = [
    "GenerationRequest",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "TokenizeRequest",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "parse_tokenize",
    "parse_detokenize",
    "choice_params",
    "choice_index",
    "fit_max_tokens",
    "check_vocabulary",
    "MAX_N",
    "MAX_STOP",
    "MAX_PROMPTS",
    "MAX_EMBEDDING_INPUTS",
]

MAX_N = 8  # choices per prompt
MAX_STOP = 4  # stop strings, as OpenAI allows
MAX_PROMPTS = 16  # prompts in one completions request
MAX_EMBEDDING_INPUTS = 2048  # inputs in one embeddings request, as OpenAI allows


@dataclass(kw_only=True)
class GenerationRequest:
    """What chat and completions requests share."""

    sampling: SamplingParams  # seed is the request's; per-choice seeds via choice_params()
    max_tokens_given: bool  # user-set max_tokens must fit the context; a default is clipped
    stop: list[str]
    n: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a final usage-only chunk
    model: str | None  # accepted and ignored: one model is served
    timeout_ms: int | None = None  # extension: at most the server's RequestTimeoutMs
    logprobs: int | None = None  # None: off; k: the chosen token's and the k most likely
    response_format: dict | None = None  # {"type": "json_object" | "json_schema", ...}; None: text
    grammar: str | None = None  # extension (llama.cpp's): a GBNF or Lark grammar the output follows
    regex: str | None = None  # extension (vLLM's guided_regex): a regex the whole output matches


@dataclass(kw_only=True)
class ChatRequest(GenerationRequest):
    messages: list[dict]  # only checked to be objects; the chat template checks deeper
    tools: list[dict] = field(default_factory=list)  # each {"type": "function", "function": {...}}
    tool_choice: str | dict = "auto"  # "none" | "auto" | "required" | {"type": "function", ...}
    legacy_functions: bool = False  # asked with functions/function_call: answer with function_call


@dataclass(kw_only=True)
class CompletionRequest(GenerationRequest):
    prompts: list[str | list[int]]  # text or token ids; each is its own prompt
    echo: bool


@dataclass(kw_only=True)
class EmbeddingRequest:
    inputs: list[str | list[int]]
    encoding_format: str  # "float" or "base64"
    model: str | None


# The sampling fields a request may send, named as in SamplingParams (whose RANGES judge them)
# or, for OpenAI's newer name of max_tokens, as in _ALIASES.
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "max_tokens",
    "max_completion_tokens",
)
_ALIASES = {"max_completion_tokens": "max_tokens"}
_N = NumberField("n", Range(True, 1, MAX_N))
_TOP_LOGPROBS = NumberField("top_logprobs", RANGES["logprobs"])
_COMPLETION_LOGPROBS = NumberField("logprobs", Range(True, 0, 5, nullable=True))
# Not OpenAI's: a client may ask for a shorter time limit than the server's RequestTimeoutMs.
_TIMEOUT_MS = NumberField("timeout_ms", Range(True, 1, nullable=True))
_BEST_OF = NumberField("best_of", Range(True, 1, 20, nullable=True))

# At most 18 digits: every token id fits, and int() never meets Python's 4,300-digit limit.
_TOKEN_ID_KEY = re.compile(r"[0-9]{1,18}", re.ASCII)


def _read_model(body: dict) -> str | None:
    return read_string(body, "model")


def _read_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    expected = f"stop must be a string or a list of at most {MAX_STOP} non-empty strings"
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise invalid("stop", f"{expected}, got {shown(stop)}")
    for text in stops:
        if not isinstance(text, str) or not text:
            raise invalid("stop", f"{expected}, got {shown(text)} in it")
    return list(stops)


def _read_logit_bias(body: dict) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise invalid(
            "logit_bias", f"logit_bias must be an object mapping token ids to numbers, got {shown(bias)}"
        )
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise invalid(
                "logit_bias", f"logit_bias keys must be token ids (decimal integers >= 0), got {shown(key)}"
            )
        if not BIAS_RANGE.accepts(value):
            raise invalid(
                "logit_bias",
                f"logit_bias value for token {key} must be {BIAS_RANGE.requirement}, got {shown(value)}",
            )
        out[int(key)] = float(value)
    return out


def _read_include_usage(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid("stream_options", "stream_options is only allowed when stream is true")
    if not isinstance(options, dict):
        raise invalid("stream_options", f"stream_options must be an object, got {shown(options)}")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise invalid(
            "stream_options", f"stream_options.include_usage must be a boolean, got {shown(include)}"
        )
    return bool(include)


def _read_sampling(body: dict, defaults: SamplingParams) -> tuple[SamplingParams, bool]:
    """SamplingParams from the body over ``defaults`` (null: not given), which judges every
    value; and whether max_tokens (or max_completion_tokens, which wins) was given."""
    given = {name: body[name] for name in _SAMPLING_FIELDS if body.get(name) is not None}
    sampling = defaults.with_values(given, aliases=_ALIASES)
    max_tokens_given = "max_tokens" in given or "max_completion_tokens" in given
    return replace(sampling, logit_bias=_read_logit_bias(body)), max_tokens_given


def _read_generation(body: dict, defaults: SamplingParams) -> dict[str, Any]:
    """The GenerationRequest fields, as keyword arguments."""
    sampling, max_tokens_given = _read_sampling(body, defaults)
    stream = read_bool(body, "stream")
    read_string(body, "user")  # accepted and ignored, but only as OpenAI accepts it
    return dict(
        sampling=sampling,
        max_tokens_given=max_tokens_given,
        stop=_read_stop(body),
        n=_N.read(body) or 1,
        stream=stream,
        include_usage=_read_include_usage(body, stream),
        model=_read_model(body),
        timeout_ms=_TIMEOUT_MS.read(body),
        grammar=read_text_field(body, "grammar"),
        regex=read_text_field(body, "regex"),
    )


def _check_one_constraint(req: GenerationRequest, forced_call: bool = False) -> None:
    """At most one of response_format, grammar, regex and a forced tool call shapes the output."""
    given = [
        name
        for name, present in (
            ("response_format", req.response_format is not None),
            ("grammar", req.grammar is not None),
            ("regex", req.regex is not None),
            ("tool_choice", forced_call),
        )
        if present
    ]
    if len(given) > 1:
        raise invalid(
            given[1], f"{given[1]} cannot be combined with {given[0]}: each fixes the output's shape"
        )


def _read_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages", "messages is required")
    if not isinstance(messages, list) or not messages:
        raise invalid(
            "messages", f"messages must be a non-empty list of message objects, got {shown(messages)}"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid("messages", f"messages[{i}] must be an object, got {shown(message)}")
    return messages


# ============================================================================================
# Parsers
# ============================================================================================


# What a request that sets no sampling field gets; the server passes its settings' defaults.
_SAMPLING_DEFAULTS = SamplingParams()


def parse_chat(body: bytes | str, defaults: SamplingParams = _SAMPLING_DEFAULTS) -> ChatRequest:
    """A /v1/chat/completions body as a ChatRequest (RequestValidationError if invalid)."""
    fields = load_object(body)
    messages = _read_messages(fields)
    req = ChatRequest(messages=messages, **_read_generation(fields, defaults))
    req.logprobs = _read_chat_logprobs(fields)
    req.response_format = _read_response_format(fields)
    req.legacy_functions = _map_legacy_functions(fields)
    req.tools = _read_tools(fields)
    req.tool_choice = _read_tool_choice(fields, req.tools)
    read_bool(fields, "parallel_tool_calls")  # at most one call per answer is found anyway
    if req.tools and req.tool_choice != "none" and req.response_format is not None:
        raise invalid("response_format", "response_format cannot be combined with tools")
    _check_one_constraint(req, forced_call=req.tool_choice not in ("none", "auto"))
    return req


def _map_legacy_functions(fields: dict) -> bool:
    """The deprecated ``functions`` / ``function_call`` become ``tools`` / ``tool_choice``
    (answers then use the legacy ``function_call`` shape)."""
    if "functions" not in fields and "function_call" not in fields:
        return False
    if "tools" in fields or "tool_choice" in fields:
        raise invalid("functions", "functions/function_call cannot be combined with tools/tool_choice")
    functions = fields.pop("functions", None)
    if functions is None:
        raise invalid("function_call", "function_call needs functions")
    if not isinstance(functions, list):
        raise invalid("functions", f"functions must be a list, got {shown(functions)}")
    fields["tools"] = [{"type": "function", "function": f} for f in functions]
    call = fields.pop("function_call", None)
    if isinstance(call, dict):
        fields["tool_choice"] = {"type": "function", "function": call}
    elif call is not None:
        fields["tool_choice"] = call
    return True


def _read_response_format(fields: dict) -> dict | None:
    """Only the shape is checked here; the engine's grammar compiler judges the schema."""
    rf = fields.get("response_format")
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise invalid(
            "response_format",
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {shown(kind)}",
        )
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise invalid("response_format", "response_format.json_schema must be an object with a 'name'")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise invalid("response_format", "response_format.json_schema.schema must be an object")
    return {
        "type": "json_schema",
        "json_schema": {"name": spec["name"], "schema": schema, "strict": bool(spec.get("strict"))},
    }


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PARAMETERS = {"type": "object", "properties": {}}  # a function declared without parameters


def _read_tools(fields: dict) -> list[dict]:
    tools = fields.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid("tools", f"tools must be a list, got {shown(tools)}")
    seen = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            raise invalid("tools", f'{where} must be {{"type": "function", "function": {{...}}}}')
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise invalid(
                "tools", f"{where}.function.name must be 1-64 letters, digits, _ or -, got {shown(name)}"
            )
        if name in seen:
            raise invalid("tools", f"{where}.function.name {name!r} is used twice")
        seen.add(name)
        params = fn.get("parameters", _NO_PARAMETERS)
        if not isinstance(params, dict):
            raise invalid("tools", f"{where}.function.parameters must be a JSON schema object")
    return [
        {
            "type": "function",
            "function": dict(t["function"], parameters=t["function"].get("parameters", _NO_PARAMETERS)),
        }
        for t in tools
    ]


def _read_tool_choice(fields: dict, tools: list[dict]) -> str | dict:
    choice = fields.get("tool_choice")
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise invalid("tool_choice", "tool_choice 'required' needs tools")
        return choice
    names = {t["function"]["name"] for t in tools}
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        name = choice["function"].get("name")
        if name not in names:
            raise invalid("tool_choice", f"tool_choice names function {shown(name)}, which is not in tools")
        return {"type": "function", "function": {"name": name}}
    raise invalid(
        "tool_choice",
        "tool_choice must be 'none', 'auto', 'required' or "
        f'{{"type": "function", "function": {{"name": ...}}}}, got {shown(choice)}',
    )


def _read_chat_logprobs(fields: dict) -> int | None:
    """Chat asks with logprobs: true and top_logprobs: k (which needs logprobs)."""
    wanted = read_bool(fields, "logprobs")
    top = _TOP_LOGPROBS.read(fields)
    if top is not None and not wanted:
        raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
    return (top or 0) if wanted else None


def parse_completion(body: bytes | str, defaults: SamplingParams = _SAMPLING_DEFAULTS) -> CompletionRequest:
    """A /v1/completions body as a CompletionRequest (RequestValidationError if invalid)."""
    fields = load_object(body)
    # An empty text prompt is allowed, as OpenAI allows it: generation starts from BOS.
    prompts = read_texts_or_tokens(fields, "prompt", max_items=MAX_PROMPTS, allow_empty_text=True)
    req = CompletionRequest(
        prompts=prompts, echo=read_bool(fields, "echo"), **_read_generation(fields, defaults)
    )
    # Accepted and ignored as before, but only with the types OpenAI accepts.
    read_string(fields, "suffix")
    _BEST_OF.read(fields)
    req.logprobs = _COMPLETION_LOGPROBS.read(fields)
    req.response_format = _read_response_format(fields)  # as vLLM takes it on completions
    _check_one_constraint(req)
    return req


def parse_embedding(body: bytes | str) -> EmbeddingRequest:
    """A /v1/embeddings body as an EmbeddingRequest (RequestValidationError if invalid)."""
    fields = load_object(body)
    inputs = read_texts_or_tokens(fields, "input", max_items=MAX_EMBEDDING_INPUTS, allow_empty_text=False)
    encoding_format = fields.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    elif encoding_format not in ("float", "base64"):
        raise invalid(
            "encoding_format", f"encoding_format must be 'float' or 'base64', got {shown(encoding_format)}"
        )
    if fields.get("dimensions") is not None:
        raise invalid(
            "dimensions", "dimensions is not supported: embeddings always have the model's own size"
        )
    read_string(fields, "user")
    return EmbeddingRequest(inputs=inputs, encoding_format=encoding_format, model=_read_model(fields))


@dataclass(kw_only=True)
class TokenizeRequest:
    """llama.cpp's POST /tokenize."""

    content: str
    add_special: bool
    parse_special: bool
    with_pieces: bool


def parse_tokenize(body: bytes | str, max_bytes: int) -> TokenizeRequest:
    """A /tokenize body; content longer than ``max_bytes`` (UTF-8) is a LimitExceededError."""
    fields = load_object(body)
    content = fields.get("content")
    if not isinstance(content, str):
        raise invalid("content", f"content must be a string, got {shown(content)}")
    if len(content) > max_bytes or len(content.encode("utf-8")) > max_bytes:
        raise LimitExceededError(
            f"content is longer than this server's limit of {max_bytes} bytes (MaxTokenizeBytes)", "content"
        )
    parse_special = fields.get("parse_special", True)
    if not isinstance(parse_special, bool):
        raise invalid("parse_special", f"parse_special must be a boolean, got {shown(parse_special)}")
    return TokenizeRequest(
        content=content,
        add_special=read_bool(fields, "add_special"),
        parse_special=parse_special,
        with_pieces=read_bool(fields, "with_pieces"),
    )


def parse_detokenize(body: bytes | str) -> list[int]:
    """The token ids of a POST /detokenize body."""
    fields = load_object(body)
    tokens = fields.get("tokens")
    if not isinstance(tokens, list):
        raise invalid("tokens", f"tokens must be a list of token ids, got {shown(tokens)}")
    return token_ids(tokens, "tokens", "tokens") if tokens else []


# ============================================================================================
# Helpers for the server
# ============================================================================================


def choice_params(req: GenerationRequest, choice: int) -> SamplingParams:
    """Sampling settings of choice ``choice`` (0-based within its prompt): seed s -> s + choice,
    so choices differ yet reproduce; no seed stays no seed (fresh entropy per choice)."""
    seed = req.sampling.seed
    if seed is not None and choice > 0:
        seed += choice
    return replace(req.sampling, seed=seed, logprobs=req.logprobs)


def choice_index(prompt: int, choice: int, n: int) -> int:
    """OpenAI's prompt-major index of choice ``choice`` of prompt ``prompt``."""
    return prompt * n + choice


def fit_max_tokens(
    req: GenerationRequest, prompt_tokens: int, context_length: int, at_least: bool = False
) -> int:
    """The max_tokens to generate with: a default is clipped to the room the prompt leaves,
    a user-given one that does not fit is a ContextLengthError, as is a prompt that leaves
    no room at all.  With ``at_least``, prompt_tokens is only a lower bound (from
    runtime.min_prompt_tokens): the refusals are as certain, the returned number is not final."""
    param = "messages" if isinstance(req, ChatRequest) else "prompt"
    room = context_length - prompt_tokens
    if room < 1:
        raise ContextLengthError(context_length, prompt_tokens, None, param=param, at_least=at_least)
    wanted = req.sampling.max_tokens
    if wanted <= room:
        return wanted
    if req.max_tokens_given:
        raise ContextLengthError(context_length, prompt_tokens, wanted, param=param, at_least=at_least)
    return room


def check_vocabulary(req: GenerationRequest | EmbeddingRequest, vocab_size: int) -> None:
    """The checks that need the model: token ids in prompts / inputs and logit_bias keys
    must lie in the vocabulary (RequestValidationError naming the field)."""
    if isinstance(req, GenerationRequest):
        req.sampling.check_vocabulary(vocab_size)
    if isinstance(req, CompletionRequest):
        items, param = req.prompts, "prompt"
    elif isinstance(req, EmbeddingRequest):
        items, param = req.inputs, "input"
    else:  # chat: its messages hold text only
        return
    for item in items:
        if isinstance(item, list):
            check_token_ids(item, vocab_size, param)
