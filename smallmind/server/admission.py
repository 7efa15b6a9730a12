"""Admission control: at most `capacity` sequences generate at once; requests beyond that wait
in a FIFO queue of at most `depth` requests; a request that finds the queue full is refused
at once (429) without reaching the engine.

It all happens on the event loop thread, so the counts are exact: a request holds its
sequences from admission until its handler releases them, after the engine has let go of
them (finished, or cancelled before any new job is handed over)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from smallmind.server.openai.errors import QueueFullError, RequestTimeoutError


@dataclass(eq=False)
class Ticket:
    weight: int  # sequences it will run (n choices x prompts, capped)
    admitted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    released: bool = False


class Admission:
    def __init__(self, capacity: int, depth: int, retry_after_s: int = 1):
        self.capacity = capacity
        self.depth = depth
        self.retry_after_s = retry_after_s
        self.active = 0  # sequences of admitted requests
        self.queue: deque[Ticket] = deque()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def enter(self, n_sequences: int) -> Ticket:
        """A ticket, admitted at once if there is room and nobody waits, else queued (FIFO).
        QueueFullError when the queue is full: the request never reaches the engine."""
        ticket = Ticket(min(n_sequences, self.capacity))
        if not self.queue and self.active + ticket.weight <= self.capacity:
            self._admit(ticket)
            return ticket
        if len(self.queue) >= self.depth:
            raise QueueFullError(
                f"the server is busy: {self.active} sequences are running and "
                f"{len(self.queue)} requests are queued; retry later",
                retry_after=self.retry_after_s,
            )
        self.queue.append(ticket)
        return ticket

    async def wait(self, ticket: Ticket, timeout_s: float) -> None:
        """Until the ticket is admitted; RequestTimeoutError after timeout_s (the ticket
        leaves the queue).  Cancelled tickets (abandon) raise CancelledError."""
        if ticket.admitted.done():
            ticket.admitted.result()
            return
        try:
            await asyncio.wait_for(asyncio.shield(ticket.admitted), timeout=max(timeout_s, 0))
        except asyncio.TimeoutError:
            if ticket.admitted.done() and not ticket.admitted.cancelled():
                return  # admitted at the very last moment
            self.abandon(ticket)
            raise RequestTimeoutError(timeout_s) from None

    def abandon(self, ticket: Ticket) -> None:
        """The request is gone (client left, timed out): leave the queue, or give the room
        back if it was admitted."""
        if ticket in self.queue:
            self.queue.remove(ticket)
            ticket.admitted.cancel()
            self._admit_waiting()  # those behind it may fit now
        else:
            self.release(ticket)

    def release(self, ticket: Ticket) -> None:
        if ticket.released or not ticket.admitted.done() or ticket.admitted.cancelled():
            return
        ticket.released = True
        self.active -= ticket.weight
        self._admit_waiting()

    def _admit(self, ticket: Ticket) -> None:
        self.active += ticket.weight
        ticket.admitted.set_result(True)

    def _admit_waiting(self) -> None:
        while self.queue and self.active + self.queue[0].weight <= self.capacity:
            self._admit(self.queue.popleft())
