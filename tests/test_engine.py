"""The continuous-batching engine on a tiny real model: batching never changes a result."""

import numpy as np
import pytest

from smallmind.engine.engine import Engine
from smallmind.engine.model import Model
from smallmind.engine.sampling_params import SamplingParams
from smallmind.errors import RequestValidationError
from tests.conftest import reference_path

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
PROMPTS = [
    [1, 450, 7483, 310, 3444, 338],
    [1, 9038, 2501, 263, 931],
    [1, 306, 763],
    [1] + list(range(500, 540)),
]


@pytest.fixture(scope="module")
def model():
    m = Model.load(reference_path("tiny", "tiny-llama-q8_0.gguf"), n_ctx=256, n_slots=4, max_batch_tokens=64)
    yield m
    m.close()


def manual_greedy(model, prompt, n_new):
    """Greedy decoding by hand, one sequence in slot 0: the oracle for the engine."""
    ids = list(prompt)
    logits = model.forward(
        np.asarray(ids, np.int32),
        np.zeros(len(ids), np.int32),
        np.arange(len(ids), dtype=np.int32),
        np.asarray([len(ids) - 1], np.int32),
    )
    out = []
    for _ in range(n_new):
        token = int(np.argmax(logits[0]))
        out.append(token)
        ids.append(token)
        logits = model.forward(
            np.asarray([token], np.int32),
            np.zeros(1, np.int32),
            np.asarray([len(ids) - 1], np.int32),
            np.zeros(1, np.int32),
        )
    return out


def run_all(engine, seqs):
    while engine.has_work():
        engine.step()
    return [s.output_ids for s in seqs]


def test_single_sequence_matches_manual_greedy(model):
    engine = Engine(model)
    got = list(engine.generate(PROMPTS[0], SamplingParams(**GREEDY, max_tokens=12, ignore_eos=True)))
    assert got == manual_greedy(model, PROMPTS[0], 12)


def test_batched_sequences_equal_their_solo_runs(model):
    params = SamplingParams(**GREEDY, max_tokens=10, ignore_eos=True)
    solo = [manual_greedy(model, p, 10) for p in PROMPTS]
    engine = Engine(model)
    seqs = [engine.submit(p, params) for p in PROMPTS]
    assert run_all(engine, seqs) == solo
    assert all(s.finish_reason == "length" for s in seqs)


def test_staggered_arrivals_and_chunked_prompts(model):
    """Sequences join a running batch mid-way, and long prompts are split over steps."""
    params = SamplingParams(**GREEDY, max_tokens=8, ignore_eos=True)
    engine = Engine(model, max_batch_tokens=7)
    first = engine.submit(PROMPTS[3], params)
    for _ in range(3):
        engine.step()
    later = [engine.submit(p, params) for p in PROMPTS[:2]]
    run_all(engine, [first] + later)
    assert first.output_ids == manual_greedy(model, PROMPTS[3], 8)
    assert [s.output_ids for s in later] == [manual_greedy(model, p, 8) for p in PROMPTS[:2]]


def test_more_sequences_than_slots_queue_and_finish(model):
    params = SamplingParams(**GREEDY, max_tokens=4, ignore_eos=True)
    engine = Engine(model)
    seqs = [engine.submit(PROMPTS[i % 3], params) for i in range(9)]
    outputs = run_all(engine, seqs)
    assert all(len(o) == 4 for o in outputs)
    assert outputs[0] == outputs[3] == outputs[6]
    assert sorted(engine.free_slots) == [0, 1, 2, 3]


def test_seeded_sampling_is_independent_of_the_batch(model):
    params = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234, max_tokens=12, ignore_eos=True
    )
    alone = Engine(model)
    solo = list(alone.generate(PROMPTS[1], params))
    engine = Engine(model)
    noise = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    seqs = [
        engine.submit(PROMPTS[0], noise),
        engine.submit(PROMPTS[1], params),
        engine.submit(PROMPTS[2], noise),
    ]
    run_all(engine, seqs)
    assert seqs[1].output_ids == solo
    other = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=99, max_tokens=12, ignore_eos=True
    )
    assert list(Engine(model).generate(PROMPTS[1], other)) != solo


def test_stop_token_ends_without_emitting_it(model):
    expected = manual_greedy(model, PROMPTS[0], 6)
    stop = expected[3]
    engine = Engine(model)
    seq = engine.submit(PROMPTS[0], SamplingParams(**GREEDY, max_tokens=20, stop_token_ids=frozenset({stop})))
    run_all(engine, [seq])
    assert seq.finish_reason == "stop"
    assert seq.output_ids == expected[: expected.index(stop)]


def test_budget_given_by_the_caller_ends_the_sequence(model):
    # the server fits the budget to the context once and hands it over; params.max_tokens
    # then plays no part
    engine = Engine(model)
    seq = engine.submit(PROMPTS[0], SamplingParams(**GREEDY, max_tokens=50, ignore_eos=True), max_tokens=3)
    run_all(engine, [seq])
    assert (seq.finish_reason, len(seq.output_ids)) == ("length", 3)


def test_cancel_frees_the_slot(model):
    engine = Engine(model)
    seq = engine.submit(PROMPTS[0], SamplingParams(**GREEDY, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.cancel(seq)
    assert seq.finish_reason == "cancelled"
    assert not engine.has_work() and sorted(engine.free_slots) == [0, 1, 2, 3]


def test_context_limit_ends_with_length(model):
    engine = Engine(model)
    prompt = [1] + [500] * 250
    seq = engine.submit(prompt, SamplingParams(**GREEDY, max_tokens=100, ignore_eos=True))
    run_all(engine, [seq])
    assert seq.finish_reason == "length"
    assert len(seq.all_ids) == model.n_ctx


def test_bad_requests_are_refused(model):
    engine = Engine(model)
    with pytest.raises(RequestValidationError, match="empty"):
        engine.submit([], SamplingParams())
    with pytest.raises(RequestValidationError, match="vocabulary"):
        engine.submit([1, 10**6], SamplingParams())
    with pytest.raises(RequestValidationError, match="context"):
        engine.submit([1] * 300, SamplingParams())
    with pytest.raises(RequestValidationError, match="context"):  # no room for its budget
        engine.submit([1] * 250, SamplingParams(), max_tokens=7)
    with pytest.raises(RequestValidationError, match="vocabulary"):
        engine.submit([1, 2], SamplingParams(logit_bias={10**6: 1.0}))
