"""The model being served: where it comes from, loading it, and turning requests into prompt
token ids that fit its context.  Holds no HTTP; the handlers call it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallmind import kernels
from smallmind.default_model import DefaultModelError, default_model
from smallmind.engine.engine import Engine
from smallmind.engine.grammar import (
    Grammar,
    GrammarError,
    Vocabulary,
    compile_gbnf,
    compile_json_schema,
    compile_regex,
    compile_response_format,
)
from smallmind.engine.model import Model, read_model_config
from smallmind.engine.sampling_params import SamplingParams
from smallmind.engine.tokenizer import Tokenizer
from smallmind.errors import ConfigError, RegistryError, RequestValidationError
from smallmind.server.chat import tool_calls
from smallmind.server.chat.template import ChatTemplate, normalize_messages
from smallmind.server.config import ServerOptions
from smallmind.server.openai.errors import ContextLengthError, LimitExceededError
from smallmind.server.scheduler import Scheduler

log = logging.getLogger("smallmind.server")

# Tokens per step: large enough for fast prefill of a prompt nobody waits behind ...
MAX_BATCH_TOKENS = 512
# ... and while streams decode, at most this many prompt tokens join a step, so a long prompt
# arriving costs each running stream a few short steps rather than one long stall.
PREFILL_CHUNK = 128


@dataclass(frozen=True)
class ModelSource:
    path: Path
    model_id: str


def resolve_model(options: ServerOptions) -> ModelSource:
    """The GGUF to serve: ModelPath, else ModelId from the registry, else the default model
    from its PyPI package.  Raises ConfigError with a one-line reason."""
    if options.model_path:
        path = Path(os.path.expanduser(options.model_path))
        if not path.is_file():
            raise ConfigError(f"ServerOptions:ModelPath {options.model_path!r} is not a file")
        return ModelSource(path, path.stem)
    if options.model_id:
        from smallmind.registry import Registry, resolve_cache_dir

        try:
            entry = Registry(resolve_cache_dir(options.cache_dir)).get(options.model_id)
        except RegistryError as e:
            raise ConfigError(f"ServerOptions:ModelId {options.model_id!r}: {e}") from None
        return ModelSource(Path(entry.path), options.model_id)
    model = default_model()
    try:
        return ModelSource(model.assemble(), model.id)
    except DefaultModelError as e:
        raise ConfigError(f"no model configured and {e} (or set ServerOptions:ModelPath)") from None


def _compile(compile_fn, source, param: str) -> Grammar:
    try:
        return compile_fn(source)
    except GrammarError as e:
        raise GrammarError(str(e), e.keyword, param) from None


def grammar_of_request(req) -> Grammar | None:
    """The grammar a request asks for itself: ``response_format``, or the extensions
    ``grammar`` (GBNF or Lark) and ``regex``; None for free text."""
    if req.response_format is not None:
        return _compile(compile_response_format, req.response_format, "response_format")
    if req.grammar is not None:
        return _compile(compile_gbnf, req.grammar, "grammar")
    if req.regex is not None:
        return _compile(compile_regex, req.regex, "regex")
    return None


class ServedModel:
    """A loaded model with its tokenizer, chat template and engine thread."""

    def __init__(self, source: ModelSource, options: ServerOptions):
        self.source = source
        self.options = options
        self.model_id = source.model_id
        self.created = int(source.path.stat().st_mtime)
        if options.threads:
            kernels.set_threads(options.threads)
        n_active = options.max_concurrent_requests
        n_engine = n_active + self._prefix_cache_slots(source.path, options)
        # One slot beyond the engine's: embeddings run there between steps.
        self.model = Model.load(
            source.path,
            n_ctx=options.max_context_tokens,
            n_slots=n_engine + 1,
            max_batch_tokens=MAX_BATCH_TOKENS,
        )
        metadata = self.model.gguf.metadata
        self.tokenizer = Tokenizer.from_gguf(metadata)
        self.chat_template = ChatTemplate.for_model(metadata, self.tokenizer.tokens)
        self.n_ctx = self.model.n_ctx
        # Longest text one token stands for: prompts are measured against the context by
        # their bytes before anyone tokenizes them.  Computed here, at load, not per request.
        self.max_token_bytes = self.tokenizer.max_token_bytes
        self.engine = Engine(
            self.model,
            eog_ids=self.tokenizer.eog_ids,
            n_slots=n_engine,
            max_running=n_active,
            prefix_cache=options.prefix_cache_mib > 0,
            prefill_chunk=PREFILL_CHUNK,
        )
        self.scheduler = Scheduler(self.engine, self.tokenizer, embed_slot=n_engine)
        self._vocabulary: Vocabulary | None = None
        self._vocabulary_lock = asyncio.Lock()

    @staticmethod
    def _prefix_cache_slots(path: Path, options: ServerOptions) -> int:
        """KV slots beyond the generating ones that fit in PrefixCacheMiB: they keep finished
        requests' caches (the generating slots keep theirs too, while idle)."""
        slot_bytes = read_model_config(path).kv_bytes_per_slot(options.max_context_tokens, MAX_BATCH_TOKENS)
        n_slots = options.prefix_cache_mib * 2**20 // slot_bytes
        log.info(
            "prefix cache: %d slots beyond the %d generating ones (%.1f MiB each)",
            n_slots,
            options.max_concurrent_requests,
            slot_bytes / 2**20,
        )
        return n_slots

    def check_schemas(self, response_format: dict | None, tools: list[dict]) -> None:
        """MaxSchemaBytes and MaxSchemaDepth for the response format's schema and each tool's
        parameters, before anything compiles or walks them."""
        o = self.options
        if response_format and response_format.get("type") == "json_schema":
            check_schema_limits(
                response_format["json_schema"]["schema"],
                "response_format",
                "response_format.json_schema.schema",
                o.max_schema_bytes,
                o.max_schema_depth,
            )
        for i, tool in enumerate(tools):
            check_schema_limits(
                tool["function"]["parameters"],
                "tools",
                f"tools[{i}].function.parameters",
                o.max_schema_bytes,
                o.max_schema_depth,
            )

    def grammar_for(self, req, tools: list[dict]) -> Grammar | None:
        """The grammar a chat answer must follow: a forced tool call's, else the requested
        response format's (or the ``grammar`` / ``regex`` extension's), else None.  A schema
        llguidance refuses is a 400 whose ``param`` names the field it came from."""
        call = tool_calls.call_schema(tools, req.tool_choice)
        if call is None:
            return grammar_of_request(req)
        for i in tool_calls.forced_tools(tools, req.tool_choice):
            _compile(
                compile_json_schema, tools[i]["function"]["parameters"], f"tools[{i}].function.parameters"
            )
        return _compile(compile_json_schema, call, "tools")

    async def vocabulary(self) -> Vocabulary:
        """The vocabulary constrained decoding masks over: warm_up builds it before the server
        is ready; else it is built once, in a worker thread, on first use."""
        async with self._vocabulary_lock:
            if self._vocabulary is None:
                loop = asyncio.get_running_loop()
                self._vocabulary = await loop.run_in_executor(None, Vocabulary.for_tokenizer, self.tokenizer)
        return self._vocabulary

    def warm_up(self) -> float:
        """One greedy token, before the engine thread starts: readiness means generation
        works, not only that the file opened.  Returns the seconds it took."""
        start = time.perf_counter()
        prompt = self.tokenizer.encode("Hello", add_special=True)
        list(self.engine.generate(prompt, SamplingParams(temperature=0, max_tokens=1)))
        # Also the vocabulary of constrained decoding: built on the first constrained request
        # instead, llguidance's ~1 s of native work on Gemma's 262k tokens holds the GIL and
        # stalled the event loop for as long (a /healthz probe waited 950 ms).
        self._vocabulary = Vocabulary.for_tokenizer(self.tokenizer)
        return time.perf_counter() - start

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.close()

    # ---- prompts ----

    def chat_prompt(self, messages: list, tools: list[dict] | None = None) -> list[int]:
        """Prompt ids of a conversation (chat_text, then encode_chat)."""
        return self.encode_chat(self.chat_text(messages, tools))

    def chat_text(self, messages: list, tools: list[dict] | None = None) -> str:
        """A conversation rendered by the chat template; with tools, the functions are
        described either by the model's own template or by a built-in system prompt."""
        handles = self.chat_template.handles_tools
        # Judged as the client sent them (preparing for a template without tool support turns
        # tool turns into plain text, which would hide a malformed one); content as one string
        # first, so list-of-parts content reaches every message shape.
        messages = tool_calls.prepare_messages(normalize_messages(messages), tools or [], handles)
        return self.chat_template.render(
            messages, add_generation_prompt=True, tools=tools if handles else None
        )

    def encode_chat(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_id
        # A template that writes the BOS text itself must not get a second one.
        has_bos = bos is not None and text.startswith(self.tokenizer.token_text(bos))
        return self.tokenizer.encode(text, add_special=not has_bos, parse_special=True)

    def min_tokens(self, text: str) -> int:
        """At least this many tokens encode ``text`` (from its length, without tokenizing)."""
        return min_prompt_tokens(text, self.max_token_bytes)

    def text_prompt(self, prompt: str | list[int], param: str = "prompt") -> list[int]:
        """Token ids of a completion prompt or embedding input (ids pass through; the
        parser checked they lie in the vocabulary)."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        else:
            ids = list(prompt)
        if not ids:
            raise RequestValidationError(f"{param} is empty", param)
        return ids

    def check_embedding_input(self, item: str | list[int]) -> None:
        """An input longer than the context: ids by their count, text before tokenizing by
        the least number of tokens its bytes need."""
        if isinstance(item, str):
            if (least := self.min_tokens(item)) > self.n_ctx:
                raise ContextLengthError(self.n_ctx, least, None, param="input", at_least=True)
        elif len(item) > self.n_ctx:
            raise ContextLengthError(self.n_ctx, len(item), None, param="input")


def min_prompt_tokens(text: str, max_token_bytes: int) -> int:
    """A lower bound on the tokens of ``text`` that needs no tokenizing: no token stands for
    more than ``max_token_bytes`` bytes of text, so B bytes take at least ceil(B / max)."""
    return -(-len(text.encode("utf-8")) // max_token_bytes)


def check_schema_limits(schema: Any, param: str, where: str, max_bytes: int, max_depth: int) -> None:
    """A LimitExceededError (naming ``param``) for a JSON schema nested deeper than
    ``max_depth`` objects/arrays or longer than ``max_bytes`` as compact JSON: measured before
    anything compiles it, since compiling costs more than linear time and memory and
    recurses once per level."""
    if _nesting_depth(schema, max_depth) > max_depth:
        raise LimitExceededError(
            f"{where} is nested more than {max_depth} levels deep (objects "
            f"and arrays); this server's limit is {max_depth} (MaxSchemaDepth)",
            param,
        )
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > max_bytes:
        raise LimitExceededError(
            f"{where} is {size} bytes as compact JSON; this server's limit "
            f"is {max_bytes} bytes (MaxSchemaBytes)",
            param,
        )


def _nesting_depth(value: Any, stop_after: int) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar: 0), counted no further than
    one past ``stop_after``; iterative, so any depth is measured safely."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
