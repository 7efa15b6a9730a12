"""Response shapes of the OpenAI API: whole answers as plain dicts in OpenAI's exact shapes,
and the shapers (``ChatShape``, ``CompletionShape``) that turn the engine's updates into one
endpoint's stream chunks or final answer.  No I/O: the handlers write what these return."""

from __future__ import annotations

import base64
import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from smallmind import __version__ as SMALLMIND_VERSION
from smallmind.server.chat import tool_calls
from smallmind.server.scheduler import Update

__all__ = [
    "new_id",
    "usage",
    "chat_completion",
    "chat_chunk",
    "chat_logprobs",
    "completion_logprobs",
    "tool_call_deltas",
    "usage_chunk",
    "completion",
    "completion_chunk",
    "embedding_list",
    "model_entry",
    "model_list",
    "token_piece",
    "CHAT_ID_PREFIX",
    "COMPLETION_ID_PREFIX",
    "Shape",
    "ChatShape",
    "CompletionShape",
]

CHAT_ID_PREFIX = "chatcmpl"
COMPLETION_ID_PREFIX = "cmpl"

# OpenAI's system_fingerprint names the backend configuration; ours is the server's version.
SYSTEM_FINGERPRINT = f"fp_smallmind_{SMALLMIND_VERSION}"


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-`` + 24 hex digits."""
    return f"{prefix.rstrip('-')}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens taken from the prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def token_piece(piece: bytes) -> str | list[int]:
    """A token's text as llama.cpp's /tokenize shows it: a string when the bytes are whole
    UTF-8, else the list of byte values (a piece of a multi-byte character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def chat_completion(
    id: str,
    created: int,
    model: str,
    choices: Iterable[tuple[str, str]],
    usage: dict,
    logprobs: Sequence[dict | None] | None = None,
    tool_calls: Sequence[list | None] | None = None,
    legacy: bool = False,
) -> dict:
    """A chat.completion; ``choices`` are (text, finish_reason) in index order; ``logprobs``
    (from chat_logprobs) and ``tool_calls`` per choice when there are any (``legacy``: as
    the deprecated ``function_call``)."""
    choices = list(choices)
    logprobs = logprobs or [None] * len(choices)
    tool_calls = tool_calls or [None] * len(choices)
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": i,
                "message": _assistant_message(text, calls, legacy),
                "logprobs": lp,
                "finish_reason": finish_reason,
            }
            for i, ((text, finish_reason), lp, calls) in enumerate(zip(choices, logprobs, tool_calls))
        ],
        "usage": usage,
    }


def _assistant_message(text: str, calls: list | None, legacy: bool = False) -> dict:
    if calls and legacy:
        return {"role": "assistant", "content": None, "refusal": None, "function_call": calls[0]["function"]}
    if calls:
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": calls}
    return {"role": "assistant", "content": text, "refusal": None}


def tool_call_deltas(calls: list[dict], legacy: bool = False) -> list[dict]:
    """The stream deltas of finished calls, as OpenAI sends them: id, type and name first,
    then the arguments (clients concatenate argument pieces by index).  ``legacy``: the
    deprecated ``function_call`` deltas of the first call."""
    if legacy and calls:
        fn = calls[0]["function"]
        return [
            {"function_call": {"name": fn["name"], "arguments": ""}},
            {"function_call": {"arguments": fn["arguments"]}},
        ]
    deltas = []
    for i, call in enumerate(calls):
        fn = call["function"]
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": i,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": ""},
                    }
                ]
            }
        )
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
    return deltas


def chat_logprobs(entries: Iterable, piece: Callable[[int], bytes]) -> dict:
    """OpenAI's choice.logprobs of a chat answer from TokenLogprob-like entries (token,
    logprob, top_ids, top_logprobs); ``piece(id)`` gives a token's bytes."""

    def one(token: int, logprob: float) -> dict:
        raw = piece(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    content = [
        dict(one(e.token, e.logprob), top_logprobs=[one(t, lp) for t, lp in zip(e.top_ids, e.top_logprobs)])
        for e in entries
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Sequence, piece: Callable[[int], bytes], text_start: int = 0) -> dict:
    """The legacy completions logprobs object: tokens, token_logprobs, top_logprobs and each
    token's character offset in the choice's text (counting from ``text_start``).  An entry
    may be None: the first prompt token under echo, which nothing predicts."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_start
    for token, e in entries:
        text = piece(token).decode("utf-8", "replace")
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_logprobs.append(None if e is None else e.logprob)
        tops.append(
            None
            if e is None
            else {piece(t).decode("utf-8", "replace"): lp for t, lp in zip(e.top_ids, e.top_logprobs)}
        )
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_chunk(
    id: str,
    created: int,
    model: str,
    index: int,
    delta: dict,
    finish_reason: str | None = None,
    *,
    include_usage: bool = False,
    logprobs: dict | None = None,
) -> dict:
    """One chat.completion.chunk for choice ``index``; ``delta`` e.g. {"role": "assistant"},
    {"content": "..."} or {} with the finish_reason.  With include_usage every chunk carries
    "usage": null, as OpenAI does, before the final usage_chunk."""
    return _chunk(
        "chat.completion.chunk",
        id,
        created,
        model,
        include_usage,
        {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason},
    )


def _chunk(kind: str, id: str, created: int, model: str, include_usage: bool, choice: dict) -> dict:
    chunk = {
        "id": id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(id: str, created: int, model: str, usage: dict, *, chat: bool = True) -> dict:
    """The last chunk of a stream with include_usage: no choices, only usage."""
    return {
        "id": id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": usage,
    }


def completion(
    id: str,
    created: int,
    model: str,
    choices: Iterable[tuple[str, str]],
    usage: dict,
    logprobs: Sequence[dict | None] | None = None,
) -> dict:
    """A text_completion; ``choices`` are (text, finish_reason) in (prompt-major) index order."""
    choices = list(choices)
    logprobs = logprobs or [None] * len(choices)
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": i, "text": text, "logprobs": lp, "finish_reason": finish_reason}
            for i, ((text, finish_reason), lp) in enumerate(zip(choices, logprobs))
        ],
        "usage": usage,
    }


def completion_chunk(
    id: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None = None,
    *,
    include_usage: bool = False,
    logprobs: dict | None = None,
) -> dict:
    """One streamed text_completion piece for choice ``index`` (``include_usage``: as in
    chat_chunk)."""
    return _chunk(
        "text_completion",
        id,
        created,
        model,
        include_usage,
        {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason},
    )


def _encode_embedding(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    values = np.asarray(vector, dtype="<f4").ravel()  # OpenAI's base64 is little-endian f32
    if encoding_format == "base64":
        return base64.b64encode(values.tobytes()).decode("ascii")
    return values.tolist()


def embedding_list(
    model: str, vectors: Sequence[np.ndarray], encoding_format: str, prompt_tokens: int
) -> dict:
    """The /v1/embeddings response: one embedding per input, in input order."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_embedding(vector, encoding_format)}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_entry(id: str, created: int, owned_by: str) -> dict:
    """One model object (GET /v1/models/{id})."""
    return {"id": id, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: Iterable[tuple[str, int, str]]) -> dict:
    """GET /v1/models: ``models`` are (id, created, owned_by)."""
    return {"object": "list", "data": [model_entry(*m) for m in models]}


# ============================================================================================
# Stream shapers
# ============================================================================================

# Stands for the text in a chunk encoded once per choice; JSON escapes its NULs, so no id or
# model name can hold its encoding by accident (and a template that would is not used).
_TEXT_MARK = json.dumps("\x00text\x00")


@dataclass
class Shape(ABC):
    """How one endpoint's answers look: ids, builders, and log-probabilities when asked for
    (``piece(id)`` gives a token's bytes).  In a stream, log-probabilities of tokens whose
    text is still held back (half a character, a possible stop string) ride with the next
    piece of text.  ``include_usage``: every chunk carries ``"usage": null`` before the last."""

    rid: str
    created: int
    model: str
    piece: Callable[[int], bytes]
    logprobs: bool = False
    include_usage: bool = False
    pending: dict = field(default_factory=dict)  # choice -> entries not sent yet
    templates: dict = field(default_factory=dict)  # choice -> (before, after) its text in a plain chunk

    @abstractmethod
    def opening(self, n_choices: int) -> Iterator[dict]:
        """The chunks a stream starts with, before any generated text."""

    @abstractmethod
    def chunks(self, u: Update) -> Iterator[dict]:
        """The chunks one update of one choice becomes."""

    @abstractmethod
    def usage_chunk(self, usage: dict) -> dict:
        """The stream's last chunk when include_usage asks for one."""

    @abstractmethod
    def response(self, texts: list[str], reasons: list[str], usage: dict, logprobs: list[list]) -> dict:
        """The whole answer, when not streamed: per choice its text, finish reason and entries."""

    def encoded_chunks(self, u: Update) -> list[str]:
        """``chunks(u)`` as JSON texts (``json.dumps``, ``ensure_ascii=False``).  A plain piece
        of text (no log-probabilities, not the last, nothing held back), nearly every chunk of
        a stream, is its choice's chunk encoded once around a mark: per token only the text is
        encoded, and the bytes are json.dumps' own."""
        if u.text and u.finish_reason is None and self.plain(u):
            template = self.templates.get(u.index) or self._template(u.index)
            if template:
                return [template[0] + json.dumps(u.text, ensure_ascii=False) + template[1]]
        return [json.dumps(chunk, ensure_ascii=False) for chunk in self.chunks(u)]

    def _template(self, index: int) -> tuple[str, str] | None:
        encoded = json.dumps(self.text_chunk(index, json.loads(_TEXT_MARK)), ensure_ascii=False)
        if encoded.count(_TEXT_MARK) != 1:
            return None
        before, _, after = encoded.partition(_TEXT_MARK)
        self.templates[index] = (before, after)
        return before, after

    @abstractmethod
    def plain(self, u: Update) -> bool:
        """Whether ``chunks(u)`` of an unfinished update with text is one ``text_chunk``."""

    @abstractmethod
    def text_chunk(self, index: int, text: str) -> dict:
        """The chunk of a plain piece of text."""

    def take_logprobs(self, u: Update, flush: bool) -> list | None:
        if not self.logprobs:
            return None
        entries = self.pending.setdefault(u.index, [])
        entries.extend(u.logprobs)
        if not (u.text or flush):
            return None
        self.pending[u.index] = []
        return entries


@dataclass
class ChatShape(Shape):
    """Chat answers, with function calling: in "forced" mode (tool_choice required or named)
    the whole answer is a call (one cut short by max_tokens still comes back as a call, with
    the arguments so far); in "auto" mode text that may still become a call is held back
    until it cannot, and a finished call goes out as tool_calls deltas.  ``legacy``: the
    request used ``functions``, so calls come back as ``function_call``."""

    tools: list = field(default_factory=list)
    tool_mode: str = "off"  # off | auto | forced
    legacy: bool = False
    held: dict = field(default_factory=dict)  # choice -> text not yet sent
    released: set = field(default_factory=set)  # auto choices known to be text

    def opening(self, n_choices: int) -> Iterator[dict]:
        # a forced call has no text: content is null from the start, as OpenAI sends it
        content = None if self.tool_mode == "forced" else ""
        for j in range(n_choices):
            yield self._chunk(j, {"role": "assistant", "content": content}, None, None)

    def chunks(self, u: Update) -> Iterator[dict]:
        text, calls = self._route(u)
        entries = self.take_logprobs(
            Update(u.index, text, u.finish_reason, u.n_tokens, u.logprobs), flush=bool(u.finish_reason)
        )
        logprobs = None if entries is None else chat_logprobs(entries, self.piece)
        if text:
            yield self._chunk(u.index, {"content": text}, None, logprobs)
            logprobs = None
        for delta in tool_call_deltas(calls or [], self.legacy):
            yield self._chunk(u.index, delta, None, None)
        if u.finish_reason:
            yield self._chunk(u.index, {}, self._finish_reason(u.finish_reason, calls), logprobs)

    def plain(self, u: Update) -> bool:
        return not self.logprobs and (self.tool_mode == "off" or u.index in self.released)

    def text_chunk(self, index: int, text: str) -> dict:
        return self._chunk(index, {"content": text}, None, None)

    def _chunk(self, index, delta, finish_reason, logprobs):
        return chat_chunk(
            self.rid,
            self.created,
            self.model,
            index,
            delta,
            finish_reason,
            include_usage=self.include_usage,
            logprobs=logprobs,
        )

    def _finish_reason(self, reason: str, calls: list | None) -> str:
        if not calls or reason == "length":
            return reason
        return "function_call" if self.legacy else "tool_calls"

    def _calls(self, text: str, reason: str) -> list | None:
        """The calls in a finished choice's text: complete ones, or in forced mode one that
        max_tokens cut short."""
        calls = tool_calls.find_tool_calls(text, self.tools) if reason in ("stop", "length") else None
        if calls is None and self.tool_mode == "forced" and reason == "length":
            calls = tool_calls.truncated_call(text, self.tools)
        return calls

    def _route(self, u: Update) -> tuple[str, list | None]:
        """(text to send now, calls found at the end) for this update."""
        if self.tool_mode == "off" or u.index in self.released:
            return u.text, None
        held = self.held.get(u.index, "") + u.text
        if self.tool_mode == "auto" and not tool_calls.could_become_call(held):
            self.released.add(u.index)
            self.held[u.index] = ""
            return held, None
        self.held[u.index] = held
        if not u.finish_reason:
            return "", None
        calls = self._calls(held, u.finish_reason)
        return ("" if calls else held), calls

    def usage_chunk(self, usage: dict) -> dict:
        return usage_chunk(self.rid, self.created, self.model, usage, chat=True)

    def response(self, texts: list[str], reasons: list[str], usage: dict, logprobs: list[list]) -> dict:
        lps = [chat_logprobs(e, self.piece) for e in logprobs] if self.logprobs else None
        calls: list[list | None] = [None] * len(texts)
        if self.tool_mode != "off":
            calls = [self._calls(t, r) for t, r in zip(texts, reasons)]
            reasons = [self._finish_reason(r, c) for c, r in zip(calls, reasons)]
        return chat_completion(
            self.rid,
            self.created,
            self.model,
            list(zip(texts, reasons)),
            usage,
            lps,
            calls,
            legacy=self.legacy,
        )


@dataclass
class CompletionShape(Shape):
    echoes: list[str] = field(default_factory=list)  # per choice, "" without echo
    echo_logprobs: list[list] = field(default_factory=list)  # per choice: (token, entry)
    offsets: dict = field(default_factory=dict)  # choice -> text offset so far

    def opening(self, n_choices: int) -> Iterator[dict]:
        for i, echo in enumerate(self.echoes):
            if echo:
                yield completion_chunk(
                    self.rid,
                    self.created,
                    self.model,
                    i,
                    echo,
                    include_usage=self.include_usage,
                    logprobs=self._legacy(i, self.echo_logprobs[i]),
                )

    def chunks(self, u: Update) -> Iterator[dict]:
        if u.text or u.finish_reason:
            entries = self.take_logprobs(u, flush=bool(u.finish_reason))
            logprobs = None if entries is None else self._legacy(u.index, [(e.token, e) for e in entries])
            yield completion_chunk(
                self.rid,
                self.created,
                self.model,
                u.index,
                u.text,
                u.finish_reason,
                include_usage=self.include_usage,
                logprobs=logprobs,
            )

    def plain(self, u: Update) -> bool:
        return not self.logprobs

    def text_chunk(self, index: int, text: str) -> dict:
        return completion_chunk(
            self.rid, self.created, self.model, index, text, include_usage=self.include_usage
        )

    def _legacy(self, index: int, pairs: list) -> dict | None:
        if not self.logprobs:
            return None
        start = self.offsets.get(index, 0)
        out = completion_logprobs(pairs, self.piece, text_start=start)
        self.offsets[index] = start + sum(len(t) for t in out["tokens"])
        return out

    def usage_chunk(self, usage: dict) -> dict:
        return usage_chunk(self.rid, self.created, self.model, usage, chat=False)

    def response(self, texts: list[str], reasons: list[str], usage: dict, logprobs: list[list]) -> dict:
        texts = [echo + text for echo, text in zip(self.echoes, texts)]
        lps = None
        if self.logprobs:
            lps = [
                completion_logprobs(prefix + [(e.token, e) for e in entries], self.piece)
                for prefix, entries in zip(self.echo_logprobs, logprobs)
            ]
        return completion(self.rid, self.created, self.model, list(zip(texts, reasons)), usage, lps)
