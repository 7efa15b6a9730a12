"""Continuous batching over a Model: sequences join and leave the running batch at any step.

One `step()` is one forward call into C: every running sequence contributes its next token
(decode) or a chunk of its prompt (prefill), bounded by `max_batch_tokens`, and the logits of
each sequence's newest position come back, all sampled in one more call into C.  The engine
knows nothing of HTTP and is not thread-safe: one thread owns it (the server runs it in its
own thread)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from smallmind.engine.prefix_cache import MIN_REUSE, SlotPool, common_prefix_len
from smallmind.engine.sampling import Sampler, sample_batch, token_and_top_logprobs
from smallmind.engine.sampling_params import SamplingParams
from smallmind.errors import RequestValidationError
from smallmind.values import check_token_ids

if TYPE_CHECKING:
    from smallmind.engine.grammar.state import ConstraintState


@dataclass
class Sequence:
    """One generation: its prompt, what it produced so far, and where it stands."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    sampler: Sampler
    max_tokens: int  # tokens it may generate: fits the context with the prompt
    slot: int = -1
    n_cached: int = 0  # positions of this sequence already in the KV cache
    n_reused: int = 0  # prompt positions it found cached (prefix cache) when it started
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    constraint: ConstraintState | None = None  # the grammar it samples under, if any

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids


@dataclass
class TokenLogprob:
    """The raw model distribution at one step (before bias, penalties and filters): the
    chosen token's log-probability and the most likely tokens'."""

    token: int
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


@dataclass
class StepEvent:
    """What one step did for one sequence: a new token (None if it finished on a stop token)."""

    sequence: Sequence
    token: int | None
    finished: bool
    logprob: TokenLogprob | None = None


@dataclass
class _Batch:
    """The flat arrays one forward call takes, and which sequence owns what."""

    tokens: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    out_rows: list[int] = field(default_factory=list)
    sampled: list[Sequence] = field(default_factory=list)  # owner of each out row
    advances: list[tuple[Sequence, int]] = field(default_factory=list)

    def add(self, seq: Sequence, ids: list[int], sample: bool) -> None:
        self.tokens.extend(ids)
        self.slots.extend([seq.slot] * len(ids))
        self.positions.extend(range(seq.n_cached, seq.n_cached + len(ids)))
        self.advances.append((seq, len(ids)))
        if sample:
            self.out_rows.append(len(self.tokens) - 1)
            self.sampled.append(seq)


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    logprob, top_ids, top_lps = token_and_top_logprobs(logits, token, k)
    return TokenLogprob(int(token), logprob, top_ids.tolist(), top_lps.tolist())


class Engine:
    def __init__(
        self,
        model,
        eog_ids: frozenset[int] | set[int] = frozenset(),
        max_batch_tokens: int | None = None,
        n_slots: int | None = None,
        max_running: int | None = None,
        prefix_cache: bool = True,
        prefill_chunk: int = 128,
    ):
        """n_slots: how many of the model's KV slots (the first ones) this engine may use; the
        rest stay free for other work of the same thread (the server embeds in the last one).
        max_running: sequences that generate at once (default n_slots); slots beyond it only
        keep finished sequences' caches for prompts that start the same way (prefix_cache).
        prefill_chunk: prompt tokens per step while other sequences decode, so a long prompt
        delays their next token by one short step rather than one long one."""
        self.model = model
        self.eog_ids = frozenset(eog_ids)
        self.max_batch_tokens = max_batch_tokens or model.max_batch_tokens
        n_slots = model.n_slots if n_slots is None else n_slots
        if not 1 <= n_slots <= model.n_slots:
            raise ValueError(f"n_slots must be between 1 and the model's {model.n_slots}")
        self.max_running = n_slots if max_running is None else max_running
        if not 1 <= self.max_running <= n_slots:
            raise ValueError(f"max_running must be between 1 and n_slots ({n_slots})")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be positive")
        self.prefill_chunk = prefill_chunk
        self.pool = SlotPool(list(range(n_slots)), reuse=prefix_cache)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reused_tokens = 0  # prompt positions taken from the prefix cache, in total
        self._ids = itertools.count(1)

    @property
    def free_slots(self) -> list[int]:
        return self.pool.slots()

    # ---- admission ----

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, constraint=None, max_tokens: int | None = None
    ) -> Sequence:
        """Queue a sequence; it starts at the next step that has a free slot.  ``constraint``
        (a grammar state) limits every token it samples to what the grammar allows.
        ``max_tokens``: its budget, already fitted to the context by the caller; None fits
        ``params.max_tokens`` to the room the prompt leaves."""
        if not prompt_ids:
            raise RequestValidationError("the prompt is empty", "prompt")
        check_token_ids(prompt_ids, self.model.vocab_size, "prompt")
        room = self.model.n_ctx - len(prompt_ids)
        budget = min(params.max_tokens, room) if max_tokens is None else max_tokens
        if not 1 <= budget <= room:
            raise RequestValidationError(
                f"the prompt has {len(prompt_ids)} tokens and asks for {budget} more; the context "
                f"holds {self.model.n_ctx}",
                "prompt",
            )
        sampler = Sampler(params, self.model.vocab_size, eog_token_ids=self.eog_ids)
        seq = Sequence(next(self._ids), list(prompt_ids), params, sampler, budget, constraint=constraint)
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is; its slot is free for the next step."""
        if seq.finished:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        seq.finish_reason = "cancelled"
        self._release(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _admit(self) -> None:
        while self.waiting and len(self.pool) and len(self.running) < self.max_running:
            seq = self.waiting.popleft()
            seq.slot, seq.n_cached = self._place(seq.prompt_ids)
            seq.n_reused = seq.n_cached
            self.reused_tokens += seq.n_reused
            self.running.append(seq)

    def _place(self, prompt_ids: list[int]) -> tuple[int, int]:
        """The slot a new sequence runs in, and how many of its prompt positions that slot
        holds: those an idle slot kept from its last sequence, or those copied from a running
        sequence that shares more of the prompt."""
        slot, n_held = self.pool.take(prompt_ids)
        donor, n_shared = self._running_prefix(prompt_ids)
        if donor is not None and n_shared > n_held:
            try:
                self.model.copy_slot(donor.slot, slot, n_shared)
                return slot, n_shared
            except ValueError:  # the donor's sliding-window ring has moved past the prefix
                pass
        try:  # drop what the slot holds beyond the shared part (refused like the copy above)
            self.model.copy_slot(slot, slot, n_held)
        except ValueError:
            n_held = 0
        return slot, n_held

    def _running_prefix(self, prompt_ids: list[int]) -> tuple[Sequence | None, int]:
        """The running sequence whose cached positions share the longest prefix with
        prompt_ids, and that length (leaving the last prompt token to run)."""
        best, best_n = None, 0
        if self.pool.reuse:
            for seq in self.running:
                n = common_prefix_len(seq.all_ids[: seq.n_cached], prompt_ids)
                if n > best_n and n >= MIN_REUSE:
                    best, best_n = seq, n
        return best, min(best_n, len(prompt_ids) - 1)

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot >= 0:
            self.pool.release(seq.slot, seq.all_ids[: seq.n_cached])
            seq.slot = -1

    # ---- one step ----

    def _plan(self) -> _Batch:
        """Tokens for this step: decode tokens first (they keep streams flowing), then prompt
        chunks in arrival order within what is left of the token budget, which is at most
        prefill_chunk prompt tokens while anything decodes."""
        batch = _Batch()
        budget = self.max_batch_tokens
        decoding = [s for s in self.running if s.n_cached >= len(s.prompt_ids)]
        prefilling = [s for s in self.running if s.n_cached < len(s.prompt_ids)]
        for seq in decoding:
            if budget == 0:
                break
            batch.add(seq, [seq.all_ids[seq.n_cached]], sample=True)
            budget -= 1
        if decoding:
            budget = min(budget, self.prefill_chunk)
        for seq in prefilling:
            if budget == 0:
                break
            chunk = seq.prompt_ids[seq.n_cached : seq.n_cached + budget]
            # Only a chunk that completes the prompt yields logits to sample the first token.
            batch.add(seq, chunk, sample=seq.n_cached + len(chunk) == len(seq.prompt_ids))
            budget -= len(chunk)
        return batch

    def step(self) -> list[StepEvent]:
        """Run one batched forward pass and sample; returns what happened to each sequence."""
        self._admit()
        if not self.running:
            return []
        batch = self._plan()
        logits = self.model.forward(
            np.asarray(batch.tokens, np.int32),
            np.asarray(batch.slots, np.int32),
            np.asarray(batch.positions, np.int32),
            np.asarray(batch.out_rows, np.int32),
        )
        for seq, n_new in batch.advances:
            seq.n_cached += n_new
        tokens = self._sample(batch.sampled, logits)
        return [
            self._take(seq, logits[row], token) for row, (seq, token) in enumerate(zip(batch.sampled, tokens))
        ]

    def _sample(self, seqs: list[Sequence], logits: np.ndarray) -> list[int]:
        """Each sequence's next token from its row of logits, the whole batch in one native
        call; a grammar's mask limits its own sequence's row only."""
        allowed = [seq.constraint.mask_words() if seq.constraint is not None else None for seq in seqs]
        # each sampler cuts its own penalty window from the sequence so far
        return sample_batch([seq.sampler for seq in seqs], logits, [seq.all_ids for seq in seqs], allowed)

    def _take(self, seq: Sequence, logits: np.ndarray, token: int) -> StepEvent:
        """What the sampled token does to its sequence: the grammar moves on, the token is
        kept (with its logprobs) or ends the sequence."""
        params = seq.params
        if params.logprobs is not None and seq.constraint is not None:
            # logprobs are reported under the grammar, as before the sampler moved to C
            logits = np.array(logits, np.float32)
            seq.constraint.mask_logits(logits)
        if seq.constraint is not None and token not in self.eog_ids:
            seq.constraint.advance(token)
        stop_ids = params.stop_token_ids | (frozenset() if params.ignore_eos else self.eog_ids)
        if token in stop_ids:
            seq.finish_reason = "stop"
            self._release(seq)
            return StepEvent(seq, None, True)
        seq.output_ids.append(token)
        logprob = None if params.logprobs is None else token_logprob(logits, token, params.logprobs)
        if seq.constraint is not None and seq.constraint.complete:
            # the grammar allows nothing but end of generation: end now, saving a step
            seq.finish_reason = "stop"
            self._release(seq)
            return StepEvent(seq, token, True, logprob)
        if len(seq.output_ids) >= seq.max_tokens:
            seq.finish_reason = "length"
            self._release(seq)
            return StepEvent(seq, token, True, logprob)
        return StepEvent(seq, token, False, logprob)

    # ---- convenience ----

    def prompt_logprobs(self, prompt_ids: list[int], k: int, slot: int, rows_per_call: int = 32) -> list:
        """TokenLogprob of every prompt token after the first (what the model thought of the
        prompt), computed in the given free slot, a few rows of logits at a time."""
        out = []
        n = len(prompt_ids)
        for start in range(0, n - 1, rows_per_call):
            end = min(start + rows_per_call, n - 1)
            # positions start..end-1 go into the cache; their rows predict tokens start+1..end
            tokens = np.asarray(prompt_ids[start:end], np.int32)
            logits = self.model.forward(
                tokens,
                np.full(len(tokens), slot, np.int32),
                np.arange(start, end, dtype=np.int32),
                np.arange(len(tokens), dtype=np.int32),
            )
            for row, target in zip(logits, prompt_ids[start + 1 : end + 1]):
                out.append(token_logprob(row, target, k))
        return out

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Tokens of one sequence as they are produced (drives the whole engine)."""
        seq = self.submit(prompt_ids, params)
        try:
            while not seq.finished:
                for event in self.step():
                    if event.sequence is seq and event.token is not None:
                        yield event.token
        finally:
            self.cancel(seq)
