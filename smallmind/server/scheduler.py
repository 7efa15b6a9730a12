"""The engine thread: one thread owns the Engine and steps every active sequence together
(continuous batching); asyncio code submits jobs and awaits their text.

Requests never wait for each other: a job submitted while others generate joins the running
batch at the next step.  Text is assembled on the engine thread (detokenizing, stop strings),
so a stop string ends its sequence at once and the event loop only forwards finished pieces.
Each step's results reach each event loop in one ``call_soon_threadsafe``, whatever the
number of jobs: every such call writes to the loop's wake-up socket.  The heavy work
(the forward pass) runs in C with the GIL released, so the event loop stays responsive.
Nothing here knows of HTTP."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smallmind.engine.detokenize import StreamDecoder
from smallmind.engine.engine import Engine, Sequence
from smallmind.engine.sampling_params import SamplingParams
from smallmind.engine.stop_strings import StopMatcher

log = logging.getLogger("smallmind.server.scheduler")


@dataclass
class Update:
    """New text of one choice; ``finish_reason`` set on its last update."""

    index: int
    text: str
    finish_reason: str | None = None
    n_tokens: int = 0  # completion tokens so far
    logprobs: list = field(default_factory=list)  # TokenLogprob of the tokens of this step
    n_cached_prompt: int = 0  # prompt tokens its sequence took from the prefix cache


@dataclass
class _Choice:
    index: int
    params: SamplingParams
    decoder: StreamDecoder
    stops: StopMatcher
    seq: Sequence | None = None
    finish_reason: str | None = None


@dataclass
class GenerationJob:
    """One prompt and its n choices.  Its updates arrive in ``updates`` (a list of Update per
    engine step), or an exception if the engine failed.  Jobs of one request (a completion
    with several prompts) may share one queue; ``index_base`` keeps their choices apart."""

    prompt_ids: list[int]
    params: list[SamplingParams]  # one per choice
    max_tokens: int | None = None  # every choice's budget, fitted to the context by
    # the caller (None: the engine fits params.max_tokens)
    stop: list[str] = field(default_factory=list)
    updates: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop | None = None
    index_base: int = 0  # choice j reports index index_base + j
    constraints: list | None = None  # per choice: a grammar state, or None
    cancelled: bool = False
    choices: list[_Choice] = field(default_factory=list)

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    def done(self) -> bool:
        return all(c.finish_reason for c in self.choices) if self.choices else False


@dataclass
class SideJob:
    """Work done between steps in the spare KV slot: embeddings, prompt log-probabilities."""

    kind: str  # "embed" | "prompt_logprobs"
    inputs: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    top_k: int = 0


class Scheduler:
    """Owns `engine` (and its model) on a thread of its own.  ``submit``/``cancel``/``embed``
    are called from the event loop; their effects happen on the engine thread."""

    def __init__(self, engine: Engine, tokenizer, embed_slot: int | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.embed_slot = embed_slot
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._owner: dict[int, tuple[GenerationJob, _Choice]] = {}  # sequence id -> choice
        self._thread = threading.Thread(target=self._run, name="smallmind-engine", daemon=True)
        self._closing = False
        self.on_step: Callable[[int], None] | None = None  # active batch size, for metrics

    # ---- event-loop side ----

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        self._commands.put(("close", None))
        self._thread.join(timeout)

    def submit(self, job: GenerationJob) -> None:
        job.loop = asyncio.get_running_loop()
        self._commands.put(("submit", job))

    def cancel(self, job: GenerationJob) -> None:
        job.cancelled = True
        self._commands.put(("cancel", job))

    async def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """Mean-pooled, L2-normalized final hidden states, one vector per input."""
        return await self._side_job("embed", inputs)

    async def prompt_logprobs(self, prompt_ids: list[int], top_k: int) -> list:
        """TokenLogprob of each prompt token after the first."""
        return (await self._side_job("prompt_logprobs", [prompt_ids], top_k))[0]

    async def _side_job(self, kind: str, inputs: list[list[int]], top_k: int = 0) -> list:
        loop = asyncio.get_running_loop()
        job = SideJob(kind, inputs, loop.create_future(), loop, top_k)
        self._commands.put(("side", job))
        return await job.future

    # ---- engine thread ----

    def _run(self) -> None:
        while not self._closing:
            try:
                self._run_once()
            except Exception as e:  # the engine's state is unknown: fail everything it holds
                log.exception("engine step failed")
                self._fail_all(e)

    def _run_once(self) -> None:
        if not self.engine.has_work() and self.on_step is not None:
            self.on_step(0)  # idle: no batch
        self._take_commands(block=not self.engine.has_work())
        if self._closing or not self.engine.has_work():
            return
        events = self.engine.step()
        if self.on_step is not None:
            self.on_step(len(events))
        self._deliver(events)

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(block=block, timeout=None)
        except queue.Empty:
            return
        while True:
            self._execute(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _execute(self, kind: str, job: Any) -> None:
        if kind == "submit":
            self._start(job)
        elif kind == "cancel":
            self._cancel(job)
        elif kind == "side":
            self._side(job)
        elif kind == "close":
            self._closing = True

    def _start(self, job: GenerationJob) -> None:
        if job.cancelled:
            return
        try:
            for index, params in enumerate(job.params):
                choice = _Choice(
                    job.index_base + index,
                    params,
                    StreamDecoder(self.tokenizer, skip_special=True),
                    StopMatcher(job.stop),
                )
                job.choices.append(choice)
                constraint = job.constraints[index] if job.constraints else None
                choice.seq = self.engine.submit(job.prompt_ids, params, constraint, max_tokens=job.max_tokens)
                self._owner[choice.seq.id] = (job, choice)
        except Exception as e:
            self._cancel(job)
            self._post(job, e)

    def _cancel(self, job: GenerationJob) -> None:
        for choice in job.choices:
            if choice.seq is not None:
                self.engine.cancel(choice.seq)
                self._owner.pop(choice.seq.id, None)

    def _deliver(self, events) -> None:
        by_job: dict[int, tuple[GenerationJob, list[Update]]] = {}
        for event in events:
            owner = self._owner.get(event.sequence.id)
            if owner is None:
                continue
            job, choice = owner
            update = self._advance(choice, event)
            by_job.setdefault(id(job), (job, []))[1].append(update)
            if choice.finish_reason:
                self._owner.pop(event.sequence.id, None)
        by_loop: dict[int, list[tuple[GenerationJob, list[Update]]]] = {}
        for job, updates in by_job.values():
            by_loop.setdefault(id(job.loop), []).append((job, updates))
        for posts in by_loop.values():
            self._post_all(posts)

    def _advance(self, choice: _Choice, event) -> Update:
        """Detokenize the new token, apply the stop strings, and finish the choice if due."""
        seq = event.sequence
        text, stopped = ("", False)
        if event.token is not None:
            text, stopped = choice.stops.feed(choice.decoder.push(event.token))
        if stopped and not event.finished:
            self.engine.cancel(seq)
            choice.finish_reason = "stop"
        elif event.finished or stopped:
            if not stopped:
                tail, stopped = choice.stops.feed(choice.decoder.flush())
                text += tail if stopped else tail + choice.stops.flush()
            choice.finish_reason = "stop" if stopped else seq.finish_reason
        logprobs = [event.logprob] if event.logprob is not None else []
        return Update(choice.index, text, choice.finish_reason, len(seq.output_ids), logprobs, seq.n_reused)

    def _side(self, job: SideJob) -> None:
        if job.kind == "embed":
            work = self._embed_one
        else:

            def work(ids):
                return self.engine.prompt_logprobs(ids, job.top_k, self.embed_slot)

        outcome: tuple[Callable[[asyncio.Future, Any], None], Any]
        try:
            outcome = (_set_result, [work(ids) for ids in job.inputs])
        except Exception as e:
            outcome = (_set_exception, e)
        try:
            job.loop.call_soon_threadsafe(outcome[0], job.future, outcome[1])
        except RuntimeError:  # its event loop is closed
            pass

    def _embed_one(self, ids: list[int]) -> np.ndarray:
        hidden = self.engine.model.embed(ids, slot=self.embed_slot)
        pooled = hidden.astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(pooled)
        return (pooled / norm if norm > 0 else pooled).astype(np.float32)

    def _fail_all(self, error: Exception) -> None:
        jobs = {id(job): job for job, _ in self._owner.values()}
        self._owner.clear()
        for seq in list(self.engine.running) + list(self.engine.waiting):
            self.engine.cancel(seq)
        for job in jobs.values():
            self._post(job, error)

    def _post_all(self, posts: list[tuple[GenerationJob, Any]]) -> None:
        """Each job's item (this step's updates, or an exception), to jobs that share one
        event loop, in one call."""
        loop = posts[0][0].loop
        assert loop is not None, "posted to a job that was never submitted"
        try:
            loop.call_soon_threadsafe(_put_each, [(job.updates, updates) for job, updates in posts])
        except RuntimeError:  # its event loop is closed: nobody will read, stop generating
            for job, _ in posts:
                self._cancel(job)

    def _post(self, job: GenerationJob, item: Any) -> None:
        self._post_all([(job, item)])


def _put_each(posts: list[tuple[asyncio.Queue, Any]]) -> None:
    for updates, item in posts:
        updates.put_nowait(item)


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
