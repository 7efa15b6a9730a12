"""Prompt-prefix reuse: which slot a prompt lands in, and that reusing a cached prefix never
changes a result, on a tiny model and on the default model's sliding-window layers."""

import numpy as np
import pytest

from smallmind.engine import engine as engine_module
from smallmind.engine.engine import Engine
from smallmind.engine.model import Model
from smallmind.engine.prefix_cache import MIN_REUSE, SlotPool, common_prefix_len
from smallmind.engine.sampling import sample_batch
from smallmind.engine.sampling_params import SamplingParams
from tests.conftest import reference_path

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True)
SYSTEM = [1] + list(range(700, 760))  # a shared "system prompt" of 61 tokens


# ---- the pool alone ----


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2]) == 2


A = list(range(100, 130))  # 30-token prompts, longer than MIN_REUSE
B = list(range(100, 120)) + [7] * 10


def test_pool_takes_the_longest_prefix_else_the_least_recently_released():
    pool = SlotPool([0, 1, 2])
    pool.release(1, A)
    pool.release(0, B)
    # slot 2 was released first of all (never used): it is the LRU victim
    assert pool.take([1, 2, 3]) == (2, 0)
    assert pool.take(A + [10]) == (1, 30)
    assert pool.take(B + [9]) == (0, 30)
    assert len(pool) == 0


def test_pool_ignores_prefixes_too_short_to_pay():
    pool = SlotPool([0, 1])
    pool.release(0, A)
    pool.release(1, [0])
    assert pool.take(A[: MIN_REUSE - 1] + [5, 6]) == (0, 0)
    assert pool.take(A[:MIN_REUSE] + [5]) == (1, 0)


def test_pool_leaves_the_last_prompt_token_to_run():
    pool = SlotPool([0])
    pool.release(0, A)
    assert pool.take(A[:20]) == (0, 19)


def test_pool_without_reuse_forgets_what_slots_hold():
    pool = SlotPool([0, 1], reuse=False)
    pool.release(1, A)
    assert pool.take(A + [8]) == (0, 0)
    assert pool.take(A + [8]) == (1, 0)


# ---- the engine on a tiny model ----


@pytest.fixture(scope="module")
def tiny():
    m = Model.load(reference_path("tiny", "tiny-llama-q8_0.gguf"), n_ctx=256, n_slots=3, max_batch_tokens=64)
    yield m
    m.close()


def fresh_logits(model, prompt):
    """Logits after the whole prompt, computed from an empty cache in the last slot."""
    slot, step = model.n_slots - 1, model.max_batch_tokens
    model.copy_slot(slot, slot, 0)
    for start in range(0, len(prompt), step):
        chunk = np.asarray(prompt[start : start + step], np.int32)
        last = start + step >= len(prompt)
        logits = model.forward(
            chunk,
            np.full(len(chunk), slot, np.int32),
            np.arange(start, start + len(chunk), dtype=np.int32),
            np.asarray([len(chunk) - 1] if last else [], np.int32),
        )
    return logits[0]


def capture_logits(monkeypatch, seq) -> list:
    """The logits rows seq will be sampled from, in order (the engine's batched sampling,
    watched)."""
    seen = []

    def recording(samplers, logits, recent_tokens, allowed):
        seen.extend(np.array(row) for s, row in zip(samplers, logits) if s is seq.sampler)
        return sample_batch(samplers, logits, recent_tokens, allowed)

    monkeypatch.setattr(engine_module, "sample_batch", recording)
    return seen


def run(engine, prompt, max_tokens):
    seq = engine.submit(prompt, SamplingParams(**GREEDY, max_tokens=max_tokens))
    while engine.has_work():
        engine.step()
    return seq


def test_a_finished_sequence_prefix_is_reused_bit_for_bit(tiny):
    engine = Engine(tiny, n_slots=2)
    first = run(engine, SYSTEM + [300, 301, 302], 5)
    before = engine.reused_tokens
    second = engine.submit(SYSTEM + [400, 401], SamplingParams(**GREEDY, max_tokens=6))
    engine.step()
    assert len(first.output_ids) == 5
    assert engine.reused_tokens - before == len(SYSTEM)
    while engine.has_work():
        engine.step()
    cold = run(Engine(tiny, n_slots=2, prefix_cache=False), SYSTEM + [400, 401], 6)
    assert second.output_ids == cold.output_ids


def test_reused_prefix_gives_the_same_logits(tiny, monkeypatch):
    engine = Engine(tiny, n_slots=2)
    run(engine, SYSTEM + [300, 301], 3)
    prompt = SYSTEM + [410, 411, 412]
    seq = engine.submit(prompt, SamplingParams(**GREEDY, max_tokens=1))
    logits_seen = capture_logits(monkeypatch, seq)
    engine.step()
    assert engine.reused_tokens == len(SYSTEM)
    np.testing.assert_array_equal(logits_seen[0], fresh_logits(tiny, prompt))


def test_a_repeated_prompt_reruns_only_its_last_token(tiny):
    engine = Engine(tiny, n_slots=2)
    prompt = SYSTEM + [300]
    a = run(engine, prompt, 4)
    b = run(engine, prompt, 4)
    assert engine.reused_tokens == len(prompt) - 1
    assert a.output_ids == b.output_ids


def test_a_running_sequence_lends_its_prefix(tiny):
    """A second request with the same system prompt arrives while the first generates: the
    shared positions are copied, not recomputed, and both results equal their solo runs."""
    engine = Engine(tiny, n_slots=2)
    params = SamplingParams(**GREEDY, max_tokens=8)
    first = engine.submit(SYSTEM + [300, 301], params)
    engine.step()  # the first prompt is cached now
    second = engine.submit(SYSTEM + [500], params)
    engine.step()
    assert engine.reused_tokens == len(SYSTEM)
    assert second.slot != first.slot
    while engine.has_work():
        engine.step()
    solo = Engine(tiny, n_slots=2, prefix_cache=False)
    assert first.output_ids == run(solo, SYSTEM + [300, 301], 8).output_ids
    assert second.output_ids == run(solo, SYSTEM + [500], 8).output_ids


def test_cache_slots_beyond_max_running_keep_prefixes(tiny):
    """With 3 slots but 1 running sequence, three different prompts stay cached."""
    engine = Engine(tiny, n_slots=3, max_running=1)
    prompts = [[1, 800 + i] + list(range(600, 620)) for i in range(3)]
    for p in prompts:
        run(engine, p, 2)
    assert engine.reused_tokens == 0
    for p in prompts:
        run(engine, p + [42], 2)
    assert engine.reused_tokens == sum(len(p) for p in prompts)


def test_max_running_bounds_the_batch(tiny):
    engine = Engine(tiny, n_slots=3, max_running=2)
    seqs = [engine.submit([1, 2, 3 + i], SamplingParams(**GREEDY, max_tokens=3)) for i in range(3)]
    engine.step()
    assert len(engine.running) == 2 and len(engine.waiting) == 1
    while engine.has_work():
        engine.step()
    assert all(len(s.output_ids) == 3 for s in seqs)
    with pytest.raises(ValueError):
        Engine(tiny, n_slots=2, max_running=3)


def test_prompts_join_a_decoding_batch_in_bounded_chunks(tiny):
    engine = Engine(tiny, n_slots=2, prefill_chunk=8)
    params = SamplingParams(**GREEDY, max_tokens=20)
    running = engine.submit([1, 5, 6], params)
    engine.step()
    late = engine.submit([1] + list(range(900, 940)), params)
    steps_until_first_token = 0
    while not late.output_ids:
        before = running.n_cached
        engine.step()
        steps_until_first_token += 1
        assert running.n_cached == before + 1  # the stream advances every step
    assert steps_until_first_token == 6  # 41 prompt tokens, 8 per step
    while engine.has_work():
        engine.step()
    solo = Engine(tiny, n_slots=2, prefix_cache=False)
    assert late.output_ids == run(solo, [1] + list(range(900, 940)), 20).output_ids


# ---- the default model: sliding-window rings ----


@pytest.fixture(scope="module")
def gemma(default_model):
    m = Model.load(default_model, n_ctx=1024, n_slots=3, max_batch_tokens=64)
    yield m
    m.close()


def test_sliding_window_prefix_is_reused_only_while_the_ring_holds_it(gemma, monkeypatch):
    """Sliding-window layers keep sliding_window + max_batch_tokens positions per slot: after a
    700-token prompt, a 690-token prefix is still in the ring (reuse); after the 692 tokens
    that reuse leaves in the slot, a 100-token prefix is gone from it (no reuse).  Both give
    exactly the logits of a fresh run."""
    assert gemma.config.sliding_window == 512 and gemma.max_batch_tokens == 64
    rng = np.random.default_rng(5)
    long_prompt = [2] + rng.integers(1000, 200000, 699).tolist()
    engine = Engine(gemma, n_slots=1)
    run(engine, long_prompt, 1)
    for n_shared, reused in ((690, 690), (100, 0)):
        prompt = long_prompt[:n_shared] + [3000, 3001]
        seq = engine.submit(prompt, SamplingParams(**GREEDY, max_tokens=1))
        seen = capture_logits(monkeypatch, seq)
        before = engine.reused_tokens
        while engine.has_work():
            engine.step()
        assert engine.reused_tokens - before == reused
        np.testing.assert_array_equal(seen[0], fresh_logits(gemma, prompt))
