"""The POST endpoints: chat completions, text completions, embeddings.

A generation request goes: parse -> prompt tokens -> context check -> admission (429 when the
queue is full) -> [stream headers] -> wait for room (RequestTimeoutMs covers the wait and the
generation) -> jobs on the engine thread -> updates written as they come.  Whatever ends it
(done, client gone, timeout, error) releases its room and its KV slots."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import cast

import tornado.http1connection
import tornado.iostream
import tornado.web

from smallmind.errors import SmallMindError
from smallmind.server.handlers import BaseHandler
from smallmind.server.openai import responses
from smallmind.server.openai.errors import (
    BodyTooLargeError,
    QueueFullError,
    RequestTimeoutError,
    error_response,
)
from smallmind.server.openai.requests import (
    check_vocabulary,
    choice_index,
    choice_params,
    fit_max_tokens,
    parse_chat,
    parse_completion,
    parse_detokenize,
    parse_embedding,
    parse_tokenize,
)
from smallmind.server.runtime import grammar_of_request
from smallmind.server.scheduler import GenerationJob
from smallmind.values import check_token_ids

# Bodies up to this many times the limit are read and dropped so the client, still sending,
# gets its 413; larger ones are cut off at once.
_DRAIN_FACTOR = 8


class ClientGone(Exception):
    """The client closed the connection; nobody is left to answer."""


def dumps_in_pieces(value) -> str:
    """json.dumps(value, ensure_ascii=False), one C call per entry of every dict and list that
    holds containers.  json.dumps holds the GIL for its whole call, so even in a worker thread
    one call over a 4,000-embedding answer stalled the IOLoop for 650 ms; between the pieces
    the loop gets the GIL back.  Lists of plain values (an embedding) stay one call."""
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(
                json.dumps(str(k), ensure_ascii=False) + ": " + dumps_in_pieces(v) for k, v in value.items()
            )
            + "}"
        )
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        return "[" + ", ".join(dumps_in_pieces(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@tornado.web.stream_request_body
class PostHandler(BaseHandler):
    PROTECTED = True

    def initialize(self, state) -> None:
        super().initialize(state)
        self._counted = False  # in state.active_requests (the drain waits for 0)
        self._chunks: list[bytes] = []
        self._size = 0
        self._body_received = False  # post() began: Tornado will finish this request
        self._jobs: list[GenerationJob] = []
        self._ticket = None
        self._updates: asyncio.Queue | None = None
        self._deadline: asyncio.TimerHandle | None = None  # puts the timeout in _updates
        self.grammar = None  # the grammar every choice decodes under, if any
        self.vocabulary = None
        self.cached_tokens = 0  # prompt tokens the prefix cache supplied

    def prepare(self) -> None:
        self.state.active_requests += 1
        self._counted = True
        super().prepare()
        limit = self.state.options.max_body_bytes
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else 0
        if declared > limit * _DRAIN_FACTOR:
            raise self._too_large()
        # Tornado's HTTPServer serves every request over an HTTP1Connection; the request's
        # type names only the interface, which has no set_max_body_size.
        connection = cast(tornado.http1connection.HTTP1Connection, self.request.connection)
        connection.set_max_body_size(max(declared, limit) + 1)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.state.options.max_body_bytes:
            self._chunks.append(chunk)
        elif self._chunks:
            self._chunks = []

    def _too_large(self) -> Exception:
        return BodyTooLargeError(self.state.options.max_body_bytes)

    @property
    def body(self) -> bytes:
        if self._size > self.state.options.max_body_bytes:
            raise self._too_large()
        return b"".join(self._chunks)

    async def post(self) -> None:
        self._body_received = True
        with self.state.tracer.request_span(self.request.headers, self.ROUTE, "POST"):
            await self.handle()

    async def handle(self) -> None:
        raise NotImplementedError

    async def off_loop(self, fn: Callable, *args):
        """fn(*args) in a worker thread.  Parsing, chat templates, tokenizing, schema
        compiling and building large answers take time that grows with the request; the
        IOLoop meanwhile keeps answering everyone else (probes included)."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def send_built(self, build: Callable[[], dict]) -> None:
        """A 200 whose body build() makes and which is encoded off the loop."""
        body = await self.off_loop(lambda: dumps_in_pieces(build()))
        self.set_status(200)
        self.finish(body)

    # ---- endings ----

    def on_connection_close(self) -> None:
        self.client_gone = True
        super().on_connection_close()
        self.end_generation(ClientGone("the client disconnected"))
        if not self._body_received:
            # The body never completed (client gone, broken framing, too slow): Tornado drops
            # the request without finishing it, so nothing else would release its counts.
            self.on_finish()

    def on_finish(self) -> None:
        self.end_generation(None)
        if self._counted:
            self._counted = False
            self.state.active_requests -= 1
        super().on_finish()

    def end_generation(self, reason: Exception | None) -> None:
        """Stops this request's sequences, gives back its room, and wakes its coroutine."""
        for job in self._jobs:
            if not job.done():
                self.state.served.scheduler.cancel(job)
        if self._deadline is not None:
            self._deadline.cancel()
        if self._ticket is not None:
            self.state.admission.abandon(self._ticket)
            self._ticket = None
        if reason is not None and self._updates is not None:
            self._updates.put_nowait(reason)

    # ---- generation ----

    async def constrain(self, grammar) -> None:
        """Decode every choice under ``grammar`` (None: free); its matcher is built here, so a
        grammar the vocabulary's lexer refuses is a 400 before any response goes out."""
        self.grammar = grammar
        if grammar is not None:
            self.vocabulary = await self.served().vocabulary()
            await self.off_loop(grammar.prepare, self.vocabulary)  # grows with the grammar

    def remaining_s(self) -> float:
        return self.timeout_s - (time.perf_counter() - self.started)

    async def generate(self, prompts: list[list[int]], req, shape: responses.Shape) -> None:
        if self.client_gone:
            return  # it left while its request was being prepared: nothing to start
        served = self.served()
        limit_ms = self.state.options.request_timeout_ms
        self.timeout_s = min(req.timeout_ms or limit_ms, limit_ms) / 1000
        budgets = [fit_max_tokens(req, len(ids), served.n_ctx) for ids in prompts]
        self.prompt_tokens = sum(len(ids) for ids in prompts)
        try:
            self._ticket = self.state.admission.enter(req.n * len(prompts))
        except QueueFullError:
            self.state.metrics.rejected()
            raise
        try:
            if req.stream:
                await self.begin_stream()
            await self.state.admission.wait(self._ticket, self.remaining_s())
            self.submit(prompts, budgets, req)
            with self.state.tracer.generation_span(self.prompt_tokens, max(budgets)):
                if req.stream:
                    await self.stream(shape, req.include_usage)
                else:
                    texts, reasons, logprobs = await self.collect(len(prompts) * req.n)
                    usage = responses.usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
                    await self.send_built(lambda: shape.response(texts, reasons, usage, logprobs))
        except (ClientGone, tornado.iostream.StreamClosedError):
            self.end_generation(None)
        except Exception as e:
            if isinstance(e, RequestTimeoutError):
                self.state.metrics.timed_out()
            if not req.stream:
                raise
            if not isinstance(e, SmallMindError):
                self.log_exception(type(e), e, e.__traceback__)
            await self.stream_error(e)
        finally:
            self.state.metrics.tokens(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def submit(self, prompts: list[list[int]], budgets: list[int], req) -> None:
        """One job per prompt, n choices each, all feeding one queue of updates."""
        self._updates = asyncio.Queue()
        # One timer for the whole generation, not an asyncio.wait_for per update: that builds
        # a task and a timer per token, a good part of the event loop's work per token.
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(max(self.remaining_s(), 0), self._out_of_time)
        scheduler = self.state.served.scheduler
        for i, (prompt_ids, max_tokens) in enumerate(zip(prompts, budgets)):
            params = [choice_params(req, j) for j in range(req.n)]
            constraints = [self.grammar.start(self.vocabulary) for _ in params] if self.grammar else None
            # Stop strings never cut constrained output: only max_tokens may end it unfinished.
            stop = [] if self.grammar else req.stop
            self._jobs.append(
                GenerationJob(
                    prompt_ids,
                    params,
                    max_tokens=max_tokens,
                    stop=stop,
                    updates=self._updates,
                    index_base=choice_index(i, 0, req.n),
                    constraints=constraints,
                )
            )
        for job in self._jobs:
            scheduler.submit(job)

    async def updates(self, n_choices: int):
        """Yields lists of Update until every choice has finished."""
        open_choices, first = n_choices, True
        n_tokens, n_cached = [0] * n_choices, [0] * n_choices
        n_per_prompt = len(self._jobs[0].params)
        queue = self._updates
        assert queue is not None, "submit() makes the queue before updates are read"
        while open_choices:
            item = await queue.get()
            if isinstance(item, Exception):
                self.end_generation(None)
                raise item
            if first:
                first = False
                self.state.metrics.first_token((time.perf_counter() - self.started) * 1000)
            for u in item:
                n_tokens[u.index], n_cached[u.index] = u.n_tokens, u.n_cached_prompt
                open_choices -= u.finish_reason is not None
            self.completion_tokens = sum(n_tokens)
            # a prompt's tokens count once in usage, so do its cached ones (its first choice's)
            self.cached_tokens = sum(n_cached[::n_per_prompt])
            yield item

    def _out_of_time(self) -> None:
        if self._updates is not None:  # the timer is only set once submit() made the queue
            self._updates.put_nowait(RequestTimeoutError(self.timeout_s))

    async def collect(self, n_choices: int) -> tuple[list[str], list[str], list[list]]:
        """Per choice: its text, finish reason and TokenLogprob entries (if asked for)."""
        texts: list[list[str]] = [[] for _ in range(n_choices)]
        reasons = [""] * n_choices
        logprobs: list[list] = [[] for _ in range(n_choices)]
        async for updates in self.updates(n_choices):
            for u in updates:
                texts[u.index].append(u.text)
                logprobs[u.index].extend(u.logprobs)
                if u.finish_reason:
                    reasons[u.index] = u.finish_reason
        return ["".join(t) for t in texts], reasons, logprobs

    # ---- server-sent events ----

    async def begin_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass events through at once
        await self.flush()

    def write_event(self, payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self.write(f"data: {data}\n\n")

    async def stream(self, shape: responses.Shape, include_usage: bool) -> None:
        n_choices = len(self._jobs) * len(self._jobs[0].params)
        for event in shape.opening(n_choices):
            self.write_event(event)
        await self.flush()
        async for updates in self.updates(n_choices):
            # one write and one flush per engine step, whatever it brought
            events = "".join(f"data: {event}\n\n" for u in updates for event in shape.encoded_chunks(u))
            if events:
                self.write(events)
                await self.flush_in_time()
        if include_usage:
            usage = responses.usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
            self.write_event(shape.usage_chunk(usage))
        self.write_event("[DONE]")
        self.finish()

    async def flush_in_time(self) -> None:
        """A client that stops reading must not hold its slot past the deadline."""
        flushed = self.flush()
        if flushed.done():  # the socket took it all: nothing to wait for (no task, no timer)
            return flushed.result()
        try:
            await asyncio.wait_for(flushed, timeout=max(self.remaining_s(), 0))
        except asyncio.TimeoutError:
            self.end_generation(None)
            raise RequestTimeoutError(self.timeout_s) from None

    async def stream_error(self, error: Exception) -> None:
        """Headers are gone: the error travels as an event, then the stream ends."""
        if self._finished:
            return
        _, body = error_response(error, request_id=self.request_id)
        self.write_event(body)
        try:
            await self.flush()
        except tornado.iostream.StreamClosedError:
            pass
        self.finish()

    def shape_fields(self, id_prefix: str, req) -> tuple[str, int, str, Callable[[int], bytes], bool, bool]:
        """What every answer shape starts with: a new id, the time, the model, how token ids
        become bytes, whether log-probabilities and a usage chunk were asked for."""
        served = self.served()
        return (
            responses.new_id(id_prefix),
            int(time.time()),
            served.model_id,
            served.tokenizer.token_bytes,
            req.logprobs is not None,
            req.include_usage,
        )


class ChatHandler(PostHandler):
    ROUTE = "/v1/chat/completions"

    async def handle(self) -> None:
        req, prompt_ids, grammar = await self.off_loop(self.prepare_request, self.body)
        tools = req.tools if req.tool_choice != "none" else []
        mode = "off" if not tools else "auto" if req.tool_choice == "auto" else "forced"
        shape = responses.ChatShape(
            *self.shape_fields(responses.CHAT_ID_PREFIX, req),
            tools=tools,
            tool_mode=mode,
            legacy=req.legacy_functions,
        )
        await self.constrain(grammar)
        await self.generate([prompt_ids], req, shape)

    def prepare_request(self, body: bytes):
        """(request, prompt ids, grammar or None), in a worker thread.  Cheap bounds come
        first: schema sizes before compiling, the rendered prompt's bytes before tokenizing."""
        req = parse_chat(body, self.state.options.sampling_defaults())
        served = self.served()
        check_vocabulary(req, served.tokenizer.vocab_size)
        served.check_schemas(req.response_format, req.tools)
        tools = req.tools if req.tool_choice != "none" else []
        text = served.chat_text(req.messages, tools)
        fit_max_tokens(req, served.min_tokens(text), served.n_ctx, at_least=True)
        prompt_ids = served.encode_chat(text)
        return req, prompt_ids, served.grammar_for(req, tools)


class CompletionHandler(PostHandler):
    ROUTE = "/v1/completions"

    async def handle(self) -> None:
        req, prompts, echoes, grammar = await self.off_loop(self.prepare_request, self.body)
        echo_logprobs = [await self.echo_logprobs(ids, req) for ids in prompts]
        shape = responses.CompletionShape(
            *self.shape_fields(responses.COMPLETION_ID_PREFIX, req),
            echoes=[e for e in echoes for _ in range(req.n)],
            echo_logprobs=[e for e in echo_logprobs for _ in range(req.n)],
        )
        await self.constrain(grammar)
        await self.generate(prompts, req, shape)

    def prepare_request(self, body: bytes):
        """(request, prompts' ids, echoed texts, grammar or None), in a worker thread; a text
        prompt that cannot fit is refused from its bytes before it is tokenized, a schema
        over the limits before it is compiled."""
        req = parse_completion(body, self.state.options.sampling_defaults())
        served = self.served()
        check_vocabulary(req, served.tokenizer.vocab_size)
        served.check_schemas(req.response_format, [])
        for p in req.prompts:
            if isinstance(p, str):
                fit_max_tokens(req, served.min_tokens(p), served.n_ctx, at_least=True)
        prompts = [served.text_prompt(p) for p in req.prompts]
        echoes = [self.echo_text(p, ids) if req.echo else "" for p, ids in zip(req.prompts, prompts)]
        return req, prompts, echoes, grammar_of_request(req)

    async def echo_logprobs(self, ids: list[int], req) -> list:
        """(token, TokenLogprob or None) of each prompt token when echo and logprobs are both
        asked for: the first token has no prediction, as in OpenAI's answers."""
        if not (req.echo and req.logprobs is not None):
            return []
        entries = await self.state.served.scheduler.prompt_logprobs(ids, req.logprobs)
        return list(zip(ids, [None] + entries))

    def echo_text(self, prompt, ids: list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.state.served.tokenizer.decode(ids, skip_special=False)


class EmbeddingHandler(PostHandler):
    ROUTE = "/v1/embeddings"

    async def handle(self) -> None:
        req, inputs = await self.off_loop(self.prepare_request, self.body)
        served = self.served()
        self.prompt_tokens = sum(len(ids) for ids in inputs)
        vectors = await served.scheduler.embed(inputs)
        self.state.metrics.tokens(self.prompt_tokens, 0)
        await self.send_built(
            lambda: responses.embedding_list(
                served.model_id, vectors, req.encoding_format, self.prompt_tokens
            )
        )

    def prepare_request(self, body: bytes):
        """(request, inputs' ids), in a worker thread; inputs too long are refused before
        they are tokenized where their bytes already tell."""
        req = parse_embedding(body)
        served = self.served()
        check_vocabulary(req, served.tokenizer.vocab_size)
        for item in req.inputs:
            served.check_embedding_input(item)
        inputs = [served.text_prompt(item, param="input") for item in req.inputs]
        for ids in inputs:
            served.check_embedding_input(ids)
        return req, inputs


class TokenizeHandler(PostHandler):
    """llama.cpp's POST /tokenize: the prompt's token ids, optionally with their pieces."""

    ROUTE = "/tokenize"

    async def handle(self) -> None:
        body = self.body
        await self.send_built(lambda: self.tokenize(body))

    def tokenize(self, body: bytes) -> dict:
        req = parse_tokenize(body, self.state.options.max_tokenize_bytes)
        tokenizer = self.served().tokenizer
        ids = tokenizer.encode(req.content, add_special=req.add_special, parse_special=req.parse_special)
        if req.with_pieces:
            tokens = [{"id": i, "piece": responses.token_piece(tokenizer.token_bytes(i))} for i in ids]
        else:
            tokens = ids
        return {"tokens": tokens}


class DetokenizeHandler(PostHandler):
    """llama.cpp's POST /detokenize: token ids back to text."""

    ROUTE = "/detokenize"

    async def handle(self) -> None:
        body = self.body
        await self.send_built(lambda: self.detokenize(body))

    def detokenize(self, body: bytes) -> dict:
        ids = parse_detokenize(body)
        tokenizer = self.served().tokenizer
        check_token_ids(ids, tokenizer.vocab_size, "tokens")
        return {"content": tokenizer.decode(ids, skip_special=False)}
