"""Admission: capacity in sequences, FIFO queue of requests, 429 when full, timeouts, abandon."""

import asyncio

import pytest

from smallmind.server.admission import Admission
from smallmind.server.openai.errors import QueueFullError, RequestTimeoutError


def run(coro):
    return asyncio.run(coro)


def test_fifo_admission_and_queue_full():
    async def main():
        adm = Admission(capacity=2, depth=2)
        a = adm.enter(1)
        b = adm.enter(1)
        assert adm.active == 2 and a.admitted.done() and b.admitted.done()
        c = adm.enter(1)
        d = adm.enter(2)
        assert adm.waiting == 2
        with pytest.raises(QueueFullError) as e:
            adm.enter(1)
        assert e.value.retry_after == 1
        adm.release(a)  # room for c, not yet for d (FIFO: d waits)
        assert c.admitted.done() and not d.admitted.done()
        adm.release(b)
        assert not d.admitted.done()  # d needs 2, c holds 1
        adm.release(c)
        assert d.admitted.done() and adm.active == 2 and adm.waiting == 0
        adm.release(d)
        adm.release(d)  # releasing twice is harmless
        assert adm.active == 0

    run(main())


def test_weight_is_capped_at_capacity():
    async def main():
        adm = Admission(capacity=2, depth=0)
        t = adm.enter(8)  # n=8 on two slots: runs in waves, holds both
        assert t.admitted.done() and adm.active == 2
        with pytest.raises(QueueFullError):
            adm.enter(1)  # depth 0: no waiting at all

    run(main())


def test_wait_timeout_leaves_the_queue():
    async def main():
        adm = Admission(capacity=1, depth=2)
        first = adm.enter(1)
        late = adm.enter(1)
        with pytest.raises(RequestTimeoutError):
            await adm.wait(late, 0.05)
        assert adm.waiting == 0
        third = adm.enter(1)
        adm.release(first)
        await adm.wait(third, 1)
        assert adm.active == 1

    run(main())


def test_abandon_queued_and_admitted():
    async def main():
        adm = Admission(capacity=1, depth=3)
        first = adm.enter(1)
        gone = adm.enter(1)
        behind = adm.enter(1)
        adm.abandon(gone)  # a queued client left: never starts
        assert adm.waiting == 1 and gone.admitted.cancelled()
        adm.abandon(first)  # a running client left: its room goes to the next
        assert behind.admitted.done() and adm.active == 1

    run(main())
