"""Token sampler: parameters/validation, greedy, determinism, filters, penalties, bias, logprobs."""

import math

import numpy as np
import pytest

from smallmind.engine.sampling import (
    Sampler,
    log_softmax,
    logsumexp,
    token_logprobs,
    top_logprobs,
)
from smallmind.engine.sampling_params import RANGES, SamplingParams
from smallmind.errors import RequestValidationError

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

V = 1000
BIG_V = 262_144  # the default model's vocabulary: exercises the block/threshold code paths


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def random_logits(seed, n=V, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def peaked_logits(seed, n=BIG_V):
    """A bulk around 0 plus a Zipf-like head, roughly like a real LM's output."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    head = rng.choice(n, 200, replace=False)
    x[head] = (22 - 2.5 * np.log(np.arange(1, 201))).astype(np.float32)
    return x


def draws(sampler, logits, n, recent=()):
    return [sampler.sample(logits, recent) for _ in range(n)]


def chi_square(counts, probs):
    n = counts.sum()
    expected = probs * n
    return float(((counts - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------------------------- greedy


def test_greedy_is_argmax():
    for seed in range(5):
        x = random_logits(seed)
        assert Sampler(SamplingParams(temperature=0), V).sample(x) == int(np.argmax(x))


def test_greedy_ties_go_to_lowest_id():
    x = np.zeros(V, np.float32)
    x[[700, 42, 900]] = 5.0
    assert Sampler(SamplingParams(temperature=0), V).sample(x) == 42


def test_greedy_ignores_seed_and_does_not_touch_rng():
    x = random_logits(3)
    outs = {Sampler(SamplingParams(temperature=0, seed=s), V).sample(x) for s in (None, 0, 1, 99)}
    assert outs == {int(np.argmax(x))}
    s = Sampler(SamplingParams(temperature=0, seed=5), V)
    state = s.rng.bit_generator.state
    draws(s, x, 10)
    assert s.rng.bit_generator.state == state


def test_greedy_big_vocab_and_logits_not_modified():
    x = peaked_logits(0)
    before = x.copy()
    p = SamplingParams(temperature=0, repetition_penalty=1.3, logit_bias={5: 2.0})
    assert Sampler(p, BIG_V).sample(x, [1, 2, 3]) == int(np.argmax(x))
    np.testing.assert_array_equal(x, before)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(seed=1234, temperature=1.0),
        SamplingParams(seed=1234, temperature=1.5, top_k=0, top_p=0.9),
        SamplingParams(seed=1234, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    ],
)
def test_same_seed_same_sequence(params):
    x = random_logits(7, scale=1.0)
    hist = [1, 2, 3, 2]
    a = draws(Sampler(params, V), x, 200, hist)
    b = draws(Sampler(params, V), x, 200, hist)
    assert a == b
    assert len(set(a)) > 1  # really sampling


def test_different_seeds_differ():
    x = random_logits(7, scale=1.0)
    p = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = draws(Sampler(SamplingParams(seed=1, **p), V), x, 200)
    b = draws(Sampler(SamplingParams(seed=2, **p), V), x, 200)
    assert a != b


def test_draws_independent_of_other_samplers():
    x = random_logits(8, scale=1.0)
    y = random_logits(9, scale=1.0)
    p = dict(temperature=1.0, top_k=50, top_p=0.95, min_p=0.0)
    alone = draws(Sampler(SamplingParams(seed=11, **p), V), x, 200)
    s1 = Sampler(SamplingParams(seed=11, **p), V)
    s2 = Sampler(SamplingParams(seed=11, **p), V)  # same seed, different logits
    s3 = Sampler(SamplingParams(seed=None, temperature=1.3, top_k=0, min_p=0.0), V)
    mixed = []
    for i in range(200):
        s2.sample(y)
        mixed.append(s1.sample(x))
        s3.sample(y, [i])
    assert mixed == alone


def test_seedless_samplers_differ():
    x = random_logits(7, scale=0.5)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    assert draws(Sampler(p, V), x, 100) != draws(Sampler(p, V), x, 100)


def test_negative_seed_is_deterministic():
    x = random_logits(7, scale=0.5)
    p = SamplingParams(seed=-5, temperature=1.0, top_k=0, min_p=0.0)
    assert draws(Sampler(p, V), x, 50) == draws(Sampler(p, V), x, 50)


# --------------------------------------------------------------------------------- filters


def test_top_k_1_is_greedy():
    for seed in range(5):
        x = random_logits(seed)
        s = Sampler(SamplingParams(seed=seed, temperature=1.5, top_k=1, top_p=1.0, min_p=0.0), V)
        assert set(draws(s, x, 50)) == {int(np.argmax(x))}


def test_top_k_keeps_only_k_largest():
    x = random_logits(1, scale=0.3)
    s = Sampler(SamplingParams(seed=3, temperature=2.0, top_k=5, top_p=1.0, min_p=0.0), V)
    allowed = set(np.argsort(-x)[:5].tolist())
    got = set(draws(s, x, 2000))
    assert got == allowed


def test_top_p_tiny_keeps_only_top_token():
    x = random_logits(2, scale=0.5)
    for top_k in (0, 40):
        s = Sampler(SamplingParams(seed=1, temperature=2.0, top_k=top_k, top_p=1e-6, min_p=0.0), V)
        assert set(draws(s, x, 100)) == {int(np.argmax(x))}


def test_top_p_keeps_smallest_prefix_reaching_p():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    # cumulative 0.5, 0.8, 0.95, 1.0: top_p 0.8 keeps exactly the first two
    for top_k in (0, 4):
        s = Sampler(SamplingParams(seed=4, temperature=1.0, top_k=top_k, top_p=0.8, min_p=0.0), 4)
        counts = np.bincount(draws(s, x, 4000), minlength=4)
        assert counts[2] == counts[3] == 0
        assert abs(counts[0] / counts[:2].sum() - 0.5 / 0.8) < 0.03


def test_min_p_one_keeps_only_max():
    x = random_logits(3, scale=0.2)
    for top_k in (0, 40):
        s = Sampler(SamplingParams(seed=2, temperature=2.0, top_k=top_k, top_p=1.0, min_p=1.0), V)
        assert set(draws(s, x, 100)) == {int(np.argmax(x))}


def test_min_p_threshold():
    # p relative to max: 1, 0.5, 0.2, 0.09 -> min_p 0.1 drops only the last
    x = np.log(np.array([1.0, 0.5, 0.2, 0.09], np.float32))
    for top_k in (0, 4):
        s = Sampler(SamplingParams(seed=9, temperature=1.0, top_k=top_k, top_p=1.0, min_p=0.1), 4)
        assert set(draws(s, x, 3000)) == {0, 1, 2}


def test_min_p_applies_before_temperature():
    # min_p is computed on the untempered distribution (llama.cpp: temperature comes last):
    # token 1 has p/p_max = e^-3 ~ 0.05 at T=1 -> dropped by min_p=0.1 even at T=2.
    x = np.array([0.0, -3.0], np.float32)
    s = Sampler(SamplingParams(seed=1, temperature=2.0, top_k=0, top_p=1.0, min_p=0.1), 2)
    assert set(draws(s, x, 500)) == {0}


X5 = np.array([1.0, 0.5, 0.0, -0.5, -1.5], np.float32)


@pytest.mark.parametrize(
    "temperature,expected", [(1.0, softmax(X5)), (0.5, softmax(2 * X5)), (2.0, softmax(X5 / 2))]
)
def test_distribution_matches_softmax(temperature, expected):
    s = Sampler(SamplingParams(seed=2024, temperature=temperature, top_k=0, top_p=1.0, min_p=0.0), 5)
    counts = np.bincount(draws(s, X5, 20_000), minlength=5)
    # 4 degrees of freedom: P(chi2 > 18.5) ~ 0.001
    assert chi_square(counts, expected) < 18.5, (counts / counts.sum(), expected)


def test_distribution_big_vocab_block_draw():
    """Full-distribution sampling over 262,144 tokens (two-level block draw) is unbiased."""
    x = np.full(BIG_V, -30.0, np.float32)
    ids = np.array([3, 1023, 1024, 70_000, BIG_V - 1])
    x[ids] = X5
    x[5000:9000] = -8.0  # mass ~ 4000*e^-8 ~ 1.3, spread over many blocks
    s = Sampler(SamplingParams(seed=7, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), BIG_V)
    out = np.array(draws(s, x, 8_000))
    probs = softmax(x)
    groups = [probs[i] for i in ids] + [probs[5000:9000].sum()]
    counts = [int((out == i).sum()) for i in ids] + [int(((out >= 5000) & (out < 9000)).sum())]
    rest = len(out) - sum(counts)
    assert rest <= 2  # everything else has ~1e-6 total mass
    assert chi_square(np.array(counts, float), np.array(groups) / sum(groups)) < 20.5


def test_top_p_distribution_big_vocab_matches_reference():
    """top_k off + top_p + min_p on 262,144 tokens match a brute-force sorted implementation."""
    x = peaked_logits(1)
    for top_p, min_p in ((0.9, 0.05), (0.8, 0.0), (0.999, 0.0), (0.5, 0.01)):
        order = np.argsort(-x.astype(np.float64), kind="stable")
        p = softmax(x)[order]
        cut = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        keep = order[:cut]
        if min_p:
            keep = keep[x[keep] >= x.max() + math.log(min_p)]
        s = Sampler(SamplingParams(seed=3, temperature=1.0, top_k=0, top_p=top_p, min_p=min_p), BIG_V)
        out = set(draws(s, x, 400))
        assert out <= set(keep.tolist())
        assert len(out) >= min(len(keep), 3)


def test_top_k_big_vocab_matches_reference():
    x = peaked_logits(2)
    top = np.argsort(-x.astype(np.float64), kind="stable")[:40]
    s = Sampler(SamplingParams(seed=1, temperature=2.0, top_k=40, top_p=1.0, min_p=0.0), BIG_V)
    out = set(draws(s, x, 1000))
    assert out <= set(top.tolist())
    # flat logits: the top-40 cut lands inside a dense band
    y = random_logits(5, n=BIG_V, scale=1.0)
    top = set(np.argsort(-y.astype(np.float64))[:40].tolist())
    s = Sampler(SamplingParams(seed=1, temperature=2.0, top_k=40, top_p=1.0, min_p=0.0), BIG_V)
    got = set(draws(s, y, 1000))
    assert got <= top and len(got) > 30


def test_flat_top_p_only_big_vocab():
    """top_p alone on a flat distribution: the prefix holds most of the vocabulary."""
    y = random_logits(6, n=BIG_V, scale=0.5)
    s = Sampler(SamplingParams(seed=1, temperature=1.0, top_k=0, top_p=0.5, min_p=0.0), BIG_V)
    order = np.argsort(-y.astype(np.float64), kind="stable")
    cut = int(np.searchsorted(np.cumsum(softmax(y)[order]), 0.5)) + 1
    thr = y[order[cut - 1]]
    out = np.array(draws(s, y, 100))
    assert (y[out] >= thr).all()


# ------------------------------------------------------------------------------- penalties


def processed(params, logits, recent):
    return Sampler(params, len(logits)).apply_logit_processors(logits, recent).copy()


def test_repetition_penalty_both_signs():
    x = np.array([2.0, -2.0, 1.0, 0.0], np.float32)
    out = processed(SamplingParams(repetition_penalty=2.0), x, [0, 1, 0])
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, 0.0])


def test_presence_and_frequency_exact():
    x = np.array([1.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = processed(p, x, [1, 2, 2, 3, 3, 3])
    np.testing.assert_allclose(out, [1.0, 1 - 0.5 - 0.25, 1 - 0.5 - 0.5, 1 - 0.5 - 0.75, 1.0], rtol=1e-6)


def test_negative_presence_frequency_encourage():
    x = np.zeros(3, np.float32)
    out = processed(SamplingParams(presence_penalty=-1.0, frequency_penalty=-0.5), x, [2, 2])
    np.testing.assert_allclose(out, [0.0, 0.0, 2.0])


def test_all_penalties_combined():
    x = np.array([3.0, -1.0], np.float32)
    p = SamplingParams(repetition_penalty=1.5, presence_penalty=0.1, frequency_penalty=0.2)
    out = processed(p, x, [0, 1, 1])
    np.testing.assert_allclose(out, [3 / 1.5 - 0.2 - 0.1, -1 * 1.5 - 0.4 - 0.1], rtol=1e-6)


def test_penalty_last_n_window():
    x = np.ones(4, np.float32)
    recent = [0, 0, 1, 2]
    p = dict(presence_penalty=1.0, frequency_penalty=0.0)
    np.testing.assert_allclose(processed(SamplingParams(penalty_last_n=2, **p), x, recent), [1, 0, 0, 1])
    np.testing.assert_allclose(processed(SamplingParams(penalty_last_n=-1, **p), x, recent), [0, 0, 0, 1])
    np.testing.assert_allclose(processed(SamplingParams(penalty_last_n=0, **p), x, recent), [1, 1, 1, 1])
    # a longer window than the history is the whole history
    np.testing.assert_allclose(processed(SamplingParams(penalty_last_n=64, **p), x, recent), [0, 0, 0, 1])


def test_penalty_window_accepts_deque_and_array():
    from collections import deque

    x = np.ones(4, np.float32)
    p = SamplingParams(penalty_last_n=2, frequency_penalty=1.0)
    want = [1, 0, 0, 1]
    for recent in (deque([0, 0, 1, 2]), np.array([0, 0, 1, 2]), (0, 0, 1, 2)):
        np.testing.assert_allclose(processed(p, x, recent), want)


def test_penalty_changes_greedy_choice():
    x = np.array([2.0, 1.9, 0.0], np.float32)
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=1.3), 3)
    assert s.sample(x, []) == 0
    assert s.sample(x, [0]) == 1


def test_processors_do_not_modify_input():
    x = random_logits(0)
    before = x.copy()
    p = SamplingParams(repetition_penalty=1.2, presence_penalty=1.0, logit_bias={1: 5.0})
    Sampler(p, V).sample(x, [1, 2, 3])
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------------------------------------ logit bias


def test_logit_bias_minus_100_bans_argmax():
    x = random_logits(4)
    top = int(np.argmax(x))
    s = Sampler(SamplingParams(temperature=0, logit_bias={top: -100}), V)
    assert s.sample(x) != top
    s = Sampler(
        SamplingParams(seed=1, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, logit_bias={top: -100}), V
    )
    assert top not in draws(s, x, 500)


def test_logit_bias_plus_100_forces():
    x = random_logits(5)
    low = int(np.argmin(x))
    for params in (
        SamplingParams(temperature=0, logit_bias={low: 100}),
        SamplingParams(seed=3, temperature=2.0, logit_bias={low: 100}),
        SamplingParams(seed=3, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, logit_bias={low: 100}),
    ):
        assert set(draws(Sampler(params, V), x, 100)) == {low}


def test_logit_bias_string_keys_normalised():
    p = SamplingParams(logit_bias={"7": -100, 8: 1.5})
    assert p.logit_bias == {7: -100, 8: 1.5}


def test_ignore_eos_bans_eog_tokens():
    x = np.zeros(10, np.float32)
    x[1] = 10.0
    p = SamplingParams(temperature=0, ignore_eos=True)
    assert Sampler(p, 10, eog_token_ids=[1]).sample(x) != 1
    p = SamplingParams(temperature=0, ignore_eos=False)
    assert Sampler(p, 10, eog_token_ids=[1]).sample(x) == 1


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs,param",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=2.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(min_p=-0.01), "min_p"),
        (dict(min_p=1.5), "min_p"),
        (dict(seed=1.5), "seed"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(presence_penalty=-2.01), "presence_penalty"),
        (dict(frequency_penalty=3), "frequency_penalty"),
        (dict(frequency_penalty=-3), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(penalty_last_n=-2), "penalty_last_n"),
        (dict(logit_bias={V: 1.0}), "logit_bias"),
        (dict(logit_bias={-1: 1.0}), "logit_bias"),
        (dict(logit_bias={"abc": 1.0}), "logit_bias"),
        (dict(logit_bias={3: 101.0}), "logit_bias"),
        (dict(logit_bias={3: -100.5}), "logit_bias"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=1.5), "max_tokens"),
        (dict(stop_token_ids=frozenset({V + 5})), "stop_token_ids"),
    ],
)
def test_validate_rejects(kwargs, param):
    p = SamplingParams(**kwargs)
    with pytest.raises(RequestValidationError) as ei:
        p.validate(V)
    assert param in str(ei.value)
    assert ei.value.param == param
    value = kwargs[param]
    if param in RANGES:  # a value from outside is judged where it comes in
        with pytest.raises(RequestValidationError) as ei:
            SamplingParams().with_values({param: value})
        assert ei.value.param == param
    elif param == "stop_token_ids" or (param == "logit_bias" and set(value.values()) == {1.0}):
        with pytest.raises(RequestValidationError):  # ids the sampler's vocabulary lacks
            Sampler(p, V)


def test_with_values_judges_by_ranges_and_makes_floats():
    p = SamplingParams().with_values({"temperature": 0, "top_k": 3, "seed": None})
    assert p.temperature == 0.0 and isinstance(p.temperature, float) and p.top_k == 3
    with pytest.raises(RequestValidationError) as ei:
        SamplingParams().with_values({"temperature": 5, "top_p": 0})
    assert ei.value.params == ["temperature", "top_p"]
    assert str(ei.value).startswith("temperature must be a number between 0 and 2, got 5; top_p")
    # another name of a field is judged under that name and wins over the field's own
    aliases = {"max_completion_tokens": "max_tokens"}
    assert (
        SamplingParams().with_values({"max_tokens": 3, "max_completion_tokens": 9}, aliases).max_tokens == 9
    )
    with pytest.raises(RequestValidationError) as ei:
        SamplingParams().with_values({"max_completion_tokens": 0}, aliases)
    assert ei.value.param == "max_completion_tokens"


def test_validate_accepts_edges():
    for kw in (
        dict(temperature=0),
        dict(temperature=2),
        dict(top_p=1.0),
        dict(top_p=1e-9),
        dict(top_k=0),
        dict(min_p=0),
        dict(min_p=1),
        dict(presence_penalty=-2),
        dict(frequency_penalty=2),
        dict(penalty_last_n=-1),
        dict(penalty_last_n=0),
        dict(logit_bias={0: -100, V - 1: 100}),
        dict(max_tokens=1),
        dict(seed=0),
        dict(stop_token_ids=[1, 2]),
    ):
        SamplingParams(**kw).validate(V)
    SamplingParams().validate(V)


def test_validate_reports_all_problems_in_order():
    p = SamplingParams(temperature=5, top_p=0, max_tokens=0)
    with pytest.raises(RequestValidationError) as ei:
        p.validate(V)
    msg = str(ei.value)
    assert msg.index("temperature") < msg.index("top_p") < msg.index("max_tokens")
    assert ei.value.params == ["temperature", "top_p", "max_tokens"]


def test_params_defaults_match_llama_cpp():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repetition_penalty, p.penalty_last_n, p.max_tokens) == (1.0, 64, 100)
    assert p.stop_token_ids == frozenset() and p.logit_bias == {} and p.seed is None
    assert not p.greedy and SamplingParams(temperature=0).greedy


def test_bad_logits():
    s = Sampler(SamplingParams(seed=1), V)
    with pytest.raises(ValueError):
        s.sample(np.zeros(V + 1, np.float32))
    x = random_logits(0)
    x[3] = np.nan
    for p in (SamplingParams(temperature=0), SamplingParams(seed=1)):
        with pytest.raises(FloatingPointError):
            Sampler(p, V).sample(x)
    # float64 input is accepted (converted)
    assert 0 <= s.sample(random_logits(1).astype(np.float64)) < V


# -------------------------------------------------------------------------------- logprobs


def test_log_softmax_stable_and_normalised():
    x = np.array([1000.0, 999.0, -1000.0], np.float32)
    lp = log_softmax(x)
    assert lp.dtype == np.float32
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(lp[0] - lp[1], 1.0, rtol=1e-6)
    lp64 = log_softmax(x.astype(np.float64))
    assert lp64.dtype == np.float64
    two_d = log_softmax(np.stack([x, x]))
    np.testing.assert_allclose(two_d[1], lp)


def test_top_logprobs_raw_distribution():
    x = random_logits(10)
    ids, lps = top_logprobs(x, 5)
    ref = log_softmax(x.astype(np.float64))
    want = np.argsort(-ref, kind="stable")[:5]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(lps, ref[want], atol=1e-5)
    assert np.all(np.diff(lps) <= 0)
    assert top_logprobs(x, 0)[0].size == 0
    assert top_logprobs(x, V + 10)[0].size == V


def test_top_logprobs_big_vocab_and_ties():
    x = peaked_logits(3)
    ids, lps = top_logprobs(x, 20)
    ref = log_softmax(x.astype(np.float64))
    want = np.argsort(-ref, kind="stable")[:20]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(lps, ref[want], atol=1e-4)
    y = np.zeros(BIG_V, np.float32)
    ids, lps = top_logprobs(y, 3)
    np.testing.assert_array_equal(ids, [0, 1, 2])
    np.testing.assert_allclose(lps, -math.log(BIG_V), rtol=1e-6)


def test_logsumexp_and_token_logprobs():
    x = random_logits(11)
    ref = np.log(np.exp(x.astype(np.float64)).sum())
    assert logsumexp(x) == pytest.approx(ref, rel=1e-6)
    assert token_logprobs(x, 3) == pytest.approx(x[3] - ref, abs=1e-5)
    np.testing.assert_allclose(token_logprobs(x, [1, 2]), x[[1, 2]] - ref, atol=1e-5)


# --------------------------------------------------- against a brute-force llama.cpp chain


def reference_distribution(x, p):
    """llama.cpp's chain on a fully sorted vocabulary (bias/penalties not involved here)."""
    x = x.astype(np.float64)
    order = np.lexsort((np.arange(x.size), -x))
    ids, vals = order, x[order]
    if p.top_k > 0:
        ids, vals = ids[: p.top_k], vals[: p.top_k]
    if p.top_p < 1.0:
        pr = softmax(vals)
        cut = int(np.searchsorted(np.cumsum(pr), p.top_p)) + 1
        ids, vals = ids[:cut], vals[:cut]
    if p.min_p > 0.0:
        keep = max(int((vals >= vals[0] + math.log(p.min_p)).sum()), 1)
        ids, vals = ids[:keep], vals[:keep]
    return ids, softmax(vals / p.temperature)


@pytest.mark.parametrize("n", [5, V, BIG_V])
def test_distribution_matches_brute_force_chain(n):
    rng = np.random.default_rng(n)
    settings = [
        dict(),
        dict(top_k=0),
        dict(top_k=0, min_p=0.0),
        dict(top_k=0, top_p=1.0),
        dict(top_k=5, top_p=0.5, min_p=0.0),
        dict(top_k=100, top_p=0.99, min_p=0.01),
        dict(top_k=0, top_p=0.3, min_p=0.0, temperature=1.7),
        dict(top_k=0, top_p=1.0, min_p=0.0, temperature=0.3),
    ]
    shapes = [
        lambda: (rng.standard_normal(n) * 3).astype(np.float32),
        lambda: (rng.standard_normal(n) * 0.3).astype(np.float32),
        lambda: np.round(rng.standard_normal(n) * 2).astype(np.float32),
    ]  # many ties
    if n == BIG_V:
        shapes.append(lambda: peaked_logits(int(rng.integers(1 << 30))))
    for make in shapes:
        x = make()
        for kw in settings:
            p = SamplingParams(seed=0, **kw)
            ids, probs = Sampler(p, n).distribution(x)
            rids, rprobs = reference_distribution(x, p)
            # top_p's cut may differ by one token when the cumulative sum lands on top_p
            # within rounding; everything else must agree exactly
            m = min(len(ids), len(rids))
            assert abs(len(ids) - len(rids)) <= 1, (kw, len(ids), len(rids))
            np.testing.assert_array_equal(ids[:m], rids[:m], err_msg=str(kw))
            if len(ids) == len(rids):
                np.testing.assert_allclose(probs, rprobs, rtol=1e-5, atol=1e-9)
