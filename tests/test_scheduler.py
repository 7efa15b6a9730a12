"""The engine thread: concurrent jobs batch together, cancel frees slots, stop strings end
sequences, embeddings run between steps.  On a tiny reference model (fast)."""

import asyncio

import numpy as np
import pytest

from conftest import reference_path
from smallmind.engine.engine import Engine
from smallmind.engine.model import Model
from smallmind.engine.sampling_params import SamplingParams
from smallmind.engine.tokenizer import Tokenizer
from smallmind.server.scheduler import GenerationJob, Scheduler


@pytest.fixture()
def parts():
    model = Model.load(reference_path("tiny", "tiny-llama-q8_0.gguf"), n_ctx=256, n_slots=3)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    engine = Engine(model, eog_ids=tokenizer.eog_ids, n_slots=2)
    scheduler = Scheduler(engine, tokenizer, embed_slot=2)
    scheduler.start()
    yield model, tokenizer, engine, scheduler
    scheduler.close()
    model.close()


def greedy(max_tokens):
    # ignore_eos: random weights may end early; the tests want a known length
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


async def drain(job):
    texts, reasons = {}, {}
    while len(reasons) < len(job.params):
        item = await asyncio.wait_for(job.updates.get(), 60)
        if isinstance(item, Exception):
            raise item
        for u in item:
            texts[u.index] = texts.get(u.index, "") + u.text
            if u.finish_reason:
                reasons[u.index] = u.finish_reason
    return texts, reasons


def solo_text(model, tokenizer, prompt, max_tokens):
    engine = Engine(model, eog_ids=tokenizer.eog_ids, n_slots=1)
    return tokenizer.decode(list(engine.generate(prompt, greedy(max_tokens))), skip_special=True)


def test_concurrent_jobs_equal_solo_runs(parts):
    model, tokenizer, engine, scheduler = parts
    prompts = [tokenizer.encode(t) for t in ("Hello there", "Once upon a time in a land")]

    async def main():
        jobs = [GenerationJob(p, [greedy(12)]) for p in prompts]
        for job in jobs:
            scheduler.submit(job)
        return [await drain(job) for job in jobs]

    results = asyncio.run(main())
    assert scheduler.engine.free_slots and len(engine.free_slots) == 2
    solo = [solo_text(model, tokenizer, p, 12) for p in prompts]
    assert [r[0][0] for r in results] == solo
    assert [r[1][0] for r in results] == ["length", "length"]


def test_late_job_joins_running_batch(parts):
    _, tokenizer, _, scheduler = parts

    async def main():
        long_job = GenerationJob(tokenizer.encode("A long one"), [greedy(60)])
        scheduler.submit(long_job)
        await long_job.updates.get()  # the long job is generating
        short_job = GenerationJob(tokenizer.encode("Short"), [greedy(3)])
        scheduler.submit(short_job)
        await drain(short_job)
        return long_job.done()

    assert asyncio.run(main()) is False  # the short job did not wait for the long one


def test_cancel_frees_the_slot(parts):
    _, tokenizer, engine, scheduler = parts

    async def main():
        job = GenerationJob(tokenizer.encode("Cancel me"), [greedy(200), greedy(200)])
        scheduler.submit(job)
        await job.updates.get()
        scheduler.cancel(job)
        for _ in range(100):
            if len(engine.free_slots) == 2 and not engine.running:
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(main())


def test_stop_string_ends_the_sequence(parts):
    model, tokenizer, engine, scheduler = parts
    prompt = tokenizer.encode("Stop strings")
    full = solo_text(model, tokenizer, prompt, 16)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    if not stop.strip():
        stop = full[-3:]

    async def main():
        job = GenerationJob(prompt, [greedy(16)], stop=[stop])
        scheduler.submit(job)
        return await drain(job)

    texts, reasons = asyncio.run(main())
    assert texts[0] == full[: full.index(stop)] and reasons[0] == "stop"
    assert len(engine.free_slots) == 2


def test_embeddings_between_steps(parts):
    _, tokenizer, _, scheduler = parts

    async def main():
        job = GenerationJob(tokenizer.encode("Busy"), [greedy(30)])
        scheduler.submit(job)
        vectors = await scheduler.embed([tokenizer.encode("hello world"), tokenizer.encode("hello world")])
        await drain(job)
        return vectors

    a, b = asyncio.run(main())
    assert a.shape == (256,) and abs(np.linalg.norm(a) - 1) < 1e-5
    np.testing.assert_array_equal(a, b)


def test_one_wake_up_per_step_for_all_jobs_of_a_loop(parts):
    """Jobs batched together get a step's updates in one call_soon_threadsafe (one write to
    the loop's wake-up socket), not one per job."""
    _, tokenizer, _, scheduler = parts
    deliveries = []

    async def main():
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):
            deliveries.append(args)
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting
        jobs = [GenerationJob(tokenizer.encode(t), [greedy(12)]) for t in ("Hello there", "Once upon a time")]
        for job in jobs:
            scheduler.submit(job)
        return [await drain(job) for job in jobs]

    results = asyncio.run(main())
    assert [r[1][0] for r in results] == ["length", "length"]
    # 12 tokens each: 24 wake-ups when each job had its own; one step may hold only one job
    # (the second was submitted after the first's prefill began), so 12 or 13
    assert 12 <= len(deliveries) <= 13, deliveries
