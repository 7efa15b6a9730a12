"""The Tornado application: routes, handlers and the server's state.

Handlers parse with `protocol`, build prompts with `ServedModel`, and hand generation to the
engine thread (`Scheduler`); they only await and write.  Every failure becomes an OpenAI-style
JSON error through `protocol.error_response`, the one place statuses are decided."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import tornado.iostream
import tornado.web

from smallmind.errors import ModelNotFoundError, RequestValidationError, SmallMindError
from smallmind.scheduler import GenerationJob, Update
from smallmind.server import protocol
from smallmind.server.config import ServerOptions
from smallmind.server.runtime import ServedModel

log = logging.getLogger("smallmind.server")


@dataclass
class ServerState:
    """What the handlers share: settings, the model once loaded, and readiness."""

    options: ServerOptions
    served: ServedModel | None = None
    status: str = "loading"             # loading | ready | failed | draining
    reason: str = "the model is loading"
    started_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.served is not None

    def defaults(self) -> protocol.Defaults:
        o = self.options
        return protocol.Defaults(max_tokens=o.default_max_tokens, temperature=o.default_temperature,
                                 top_p=o.default_top_p, top_k=o.default_top_k)


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, state: ServerState) -> None:
        self.state = state
        self.request_id = uuid.uuid4().hex[:16]

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Request-Id", self.request_id if hasattr(self, "request_id") else "")

    def send_json(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) or exc is None:
            exc = self._typed_http_error(status_code, getattr(exc, "log_message", None))
        if isinstance(exc, protocol.MethodNotAllowedError):
            self.set_header("Allow", ", ".join(exc.allowed))
        status, body = protocol.error_response(exc, request_id=self.request_id)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, ensure_ascii=False))

    def _typed_http_error(self, status: int, message: str | None) -> Exception:
        """Tornado's own refusals (unsupported method, unreadable body) as our typed errors."""
        method, path = self.request.method, self.request.path
        if status == 405:
            base = tornado.web.RequestHandler
            allowed = [m for m in ("GET", "POST")
                       if getattr(type(self), m.lower()) is not getattr(base, m.lower())]
            return protocol.MethodNotAllowedError(method, path, allowed)
        if status == 404:
            return protocol.RouteNotFoundError(path)
        if status == 413:
            return protocol.BodyTooLargeError(self.state.options.max_body_bytes)
        if 400 <= status < 500:
            return RequestValidationError(message or f"bad request ({status})")
        return RuntimeError(message or f"HTTP {status}")

    def log_exception(self, typ, value, tb) -> None:
        # Client errors are answers, not faults: no traceback in the log for them.
        if isinstance(value, (SmallMindError, tornado.web.HTTPError)):
            status = getattr(value, "status_code", None) or protocol.error_response(value)[0]
            if status < 500:
                log.debug("request %s: %s", self.request_id, value)
                return
        log.error("request %s failed", self.request_id, exc_info=(typ, value, tb))

    def served(self) -> ServedModel:
        if not self.state.ready:
            raise protocol.NotReadyError(f"the model is not ready: {self.state.reason}")
        return self.state.served


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise protocol.RouteNotFoundError(self.request.path)


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "healthy"})


class ReadyHandler(BaseHandler):
    def get(self) -> None:
        st = self.state
        if not st.ready:
            self.send_json({"status": "not ready", "reason": st.reason}, 503)
            return
        served = st.served
        self.send_json({"status": "ready", "capabilities": {
            "model": served.model_id, "chat_completions": True, "completions": True,
            "embeddings": True, "streaming": True, "context_length": served.n_ctx,
            "max_concurrent_requests": st.options.max_concurrent_requests}})


class ModelsHandler(BaseHandler):
    def get(self, model_id: str | None = None) -> None:
        served = self.served()
        if model_id is None:
            self.send_json(protocol.model_list([(served.model_id, served.created, "smallmind")]))
        elif model_id == served.model_id:
            self.send_json(protocol.model_entry(served.model_id, served.created, "smallmind"))
        else:
            raise ModelNotFoundError(f"the model {model_id!r} does not exist; this server "
                                     f"serves {served.model_id!r}")


# Bodies up to this many times the limit are read and dropped so the client, still sending,
# gets its 413; larger ones are cut off at once.
_DRAIN_FACTOR = 8


@tornado.web.stream_request_body
class PostHandler(BaseHandler):
    """Bodies are read in pieces so that one over the size limit is refused with 413
    without being held in memory."""

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        limit = self.state.options.max_body_bytes
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else 0
        if declared > limit * _DRAIN_FACTOR:
            raise self._too_large()
        self.request.connection.set_max_body_size(max(declared, limit) + 1)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.state.options.max_body_bytes:
            self._chunks.append(chunk)
        elif self._chunks:
            self._chunks = []

    def _too_large(self) -> Exception:
        return protocol.BodyTooLargeError(self.state.options.max_body_bytes)

    @property
    def body(self) -> bytes:
        if self._size > self.state.options.max_body_bytes:
            raise self._too_large()
        return b"".join(self._chunks)

    def on_connection_close(self) -> None:
        for job in getattr(self, "_jobs", ()):
            self.state.served.scheduler.cancel(job)

    # ---- generation shared by chat and completions ----

    def start_jobs(self, prompts: list[list[int]], req) -> list[GenerationJob]:
        """One job per prompt, n choices each, all feeding one queue of updates.  Every
        prompt is checked against the context before any job starts."""
        served = self.served()
        budgets = [protocol.fit_max_tokens(req, len(ids), served.n_ctx) for ids in prompts]
        shared: asyncio.Queue = asyncio.Queue()
        self._jobs = []
        for i, (prompt_ids, max_tokens) in enumerate(zip(prompts, budgets)):
            params = [dataclasses.replace(protocol.choice_params(req, j), max_tokens=max_tokens)
                      for j in range(req.n)]
            job = GenerationJob(prompt_ids, params, stop=req.stop, updates=shared, index_base=i * req.n)
            self._jobs.append(job)
        for job in self._jobs:
            served.scheduler.submit(job)
        return self._jobs

    async def updates(self, jobs: list[GenerationJob]):
        """Yields lists of Update until every choice of every job has finished."""
        queue = jobs[0].updates
        deadline = time.monotonic() + self.state.options.request_timeout_ms / 1000
        open_choices = sum(len(job.params) for job in jobs)
        while open_choices:
            remaining = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(queue.get(), timeout=max(remaining, 0))
            except asyncio.TimeoutError:
                self.cancel_jobs()
                raise protocol.RequestTimeoutError(self.state.options.request_timeout_ms / 1000) from None
            if isinstance(item, Exception):
                self.cancel_jobs()
                raise item
            open_choices -= sum(u.finish_reason is not None for u in item)
            yield item

    def cancel_jobs(self) -> None:
        for job in getattr(self, "_jobs", ()):
            self.state.served.scheduler.cancel(job)

    async def collect(self, jobs: list[GenerationJob], n_choices: int) -> tuple[list[str], list[str], int]:
        texts = [[] for _ in range(n_choices)]
        reasons = [""] * n_choices
        n_tokens = [0] * n_choices
        async for updates in self.updates(jobs):
            for u in updates:
                texts[u.index].append(u.text)
                n_tokens[u.index] = u.n_tokens
                if u.finish_reason:
                    reasons[u.index] = u.finish_reason
        return ["".join(t) for t in texts], reasons, sum(n_tokens)

    def begin_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def send_event(self, payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        self.write(f"data: {data}\n\n")
        await self.flush()

    async def stream(self, jobs, make_chunk, usage: dict | None) -> None:
        """Writes every update as it comes; a client that left ends the generation."""
        try:
            async for updates in self.updates(jobs):
                for u in updates:
                    for chunk in make_chunk(u):
                        self.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n")
                await self.flush()
            if usage is not None:
                await self.send_event(usage())
            await self.send_event("[DONE]")
        except tornado.iostream.StreamClosedError:
            self.cancel_jobs()
        except SmallMindError as e:
            # Headers are gone: the error travels as an event, then the stream ends.
            _, body = protocol.error_response(e, request_id=self.request_id)
            try:
                await self.send_event(body)
            except tornado.iostream.StreamClosedError:
                pass
        finally:
            self.cancel_jobs()
        if not self._finished:
            self.finish()


class ChatHandler(PostHandler):
    async def post(self) -> None:
        req = protocol.parse_chat(self.body, self.state.defaults())
        served = self.served()
        protocol.check_vocabulary(req, served.tokenizer.vocab_size)
        prompt_ids = served.chat_prompt(req.messages)
        jobs = self.start_jobs([prompt_ids], req)
        rid, created, model = protocol.new_id("chatcmpl"), int(time.time()), served.model_id
        if not req.stream:
            texts, reasons, n_completion = await self.collect(jobs, req.n)
            self.send_json(protocol.chat_completion(rid, created, model, list(zip(texts, reasons)),
                                                    protocol.usage(len(prompt_ids), n_completion)))
            return
        self.begin_stream()
        for j in range(req.n):
            self.write(f"data: {json.dumps(protocol.chat_chunk(rid, created, model, j, {'role': 'assistant', 'content': ''}, None))}\n\n")
        await self.flush()
        totals = [0] * req.n

        def chunks(u: Update):
            totals[u.index] = u.n_tokens
            if u.text:
                yield protocol.chat_chunk(rid, created, model, u.index, {"content": u.text}, None)
            if u.finish_reason:
                yield protocol.chat_chunk(rid, created, model, u.index, {}, u.finish_reason)

        usage = (lambda: protocol.usage_chunk(rid, created, model,
                                              protocol.usage(len(prompt_ids), sum(totals)), chat=True)) \
            if req.include_usage else None
        await self.stream(jobs, chunks, usage)


class CompletionHandler(PostHandler):
    async def post(self) -> None:
        req = protocol.parse_completion(self.body, self.state.defaults())
        served = self.served()
        protocol.check_vocabulary(req, served.tokenizer.vocab_size)
        prompts = [served.text_prompt(p) for p in req.prompts]
        jobs = self.start_jobs(prompts, req)
        echoes = [self.echo_text(p, ids) if req.echo else "" for p, ids in zip(req.prompts, prompts)]
        rid, created, model = protocol.new_id("cmpl"), int(time.time()), served.model_id
        n_prompt = sum(len(p) for p in prompts)
        n_choices = len(prompts) * req.n
        if not req.stream:
            texts, reasons, n_completion = await self.collect(jobs, n_choices)
            texts = [echoes[i // req.n] + t for i, t in enumerate(texts)]
            self.send_json(protocol.completion(rid, created, model, list(zip(texts, reasons)),
                                               protocol.usage(n_prompt, n_completion)))
            return
        self.begin_stream()
        for i in range(n_choices):
            if echoes[i // req.n]:
                self.write(f"data: {json.dumps(protocol.completion_chunk(rid, created, model, i, echoes[i // req.n], None))}\n\n")
        totals = [0] * n_choices

        def chunks(u: Update):
            totals[u.index] = u.n_tokens
            if u.text or u.finish_reason:
                yield protocol.completion_chunk(rid, created, model, u.index, u.text, u.finish_reason)

        usage = (lambda: protocol.usage_chunk(rid, created, model,
                                              protocol.usage(n_prompt, sum(totals)), chat=False)) \
            if req.include_usage else None
        await self.stream(jobs, chunks, usage)

    def echo_text(self, prompt, ids: list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.state.served.tokenizer.decode(ids, skip_special=False)


class EmbeddingHandler(PostHandler):
    async def post(self) -> None:
        req = protocol.parse_embedding(self.body)
        served = self.served()
        protocol.check_vocabulary(req, served.tokenizer.vocab_size)
        inputs = [served.text_prompt(item, param="input") for item in req.inputs]
        for ids in inputs:
            served.check_embedding_input(ids)
        vectors = await served.scheduler.embed(inputs)
        self.send_json(protocol.embedding_list(served.model_id, vectors, req.encoding_format,
                                               sum(len(ids) for ids in inputs)))


def make_app(state: ServerState) -> tornado.web.Application:
    kw = {"state": state}
    return tornado.web.Application([
        (r"/healthz", HealthHandler, kw),
        (r"/readyz", ReadyHandler, kw),
        (r"/v1/models", ModelsHandler, kw),
        (r"/v1/models/(.+)", ModelsHandler, kw),
        (r"/v1/chat/completions", ChatHandler, kw),
        (r"/v1/completions", CompletionHandler, kw),
        (r"/v1/embeddings", EmbeddingHandler, kw),
    ], default_handler_class=NotFoundHandler, default_handler_args=kw)
