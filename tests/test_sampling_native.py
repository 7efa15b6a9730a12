"""The native sampler (csrc/sample.c through sample_batch and Sampler.sample) against the
numpy one it replaced: the same token, bit for bit, from the same generator state, for one
sequence and for every row of a mixed batch sampled in one native call.

Synthetic logits are checked against the numpy chain kept as Sampler.sample_numpy; the
default model's seeded generations against token ids recorded with the numpy sampler
(commit ecd1d4f, before csrc/sample.c) by ``seeded_generations`` below, in
tests/data/sampling_seeded_gemma3.json."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from smallmind import kernels
from smallmind.engine.sampling import Sampler, sample_batch
from smallmind.engine.sampling_params import SamplingParams

BIG_V = 262_144  # the default model's vocabulary
SMALL_V = 1000  # small enough for a draw over the whole vocabulary in float64
RECORDED = Path(__file__).parent / "data" / "sampling_seeded_gemma3.json"

SETTINGS = [
    {},  # the defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8
    dict(temperature=0.0),
    dict(temperature=0.0, logit_bias={3: 100.0}, repetition_penalty=1.5),
    dict(top_k=0),  # top-p over the whole vocabulary (numpy's float32 path)
    dict(top_k=0, top_p=1.0),  # min-p alone
    dict(top_k=0, top_p=1.0, min_p=0.0),  # no filter at all
    dict(top_k=BIG_V + 5, top_p=1.0, min_p=0.0, temperature=1.0),  # top-k beyond the vocabulary
    dict(top_k=40, top_p=1.0, min_p=0.0),
    dict(top_k=1024, top_p=1.0, min_p=0.0),  # k = the number of 256-token blocks of BIG_V
    dict(top_k=4, top_p=1.0, min_p=0.0),  # k = the number of blocks of SMALL_V
    dict(top_k=1, temperature=1.3),
    dict(top_k=5000, top_p=1.0, min_p=0.0),  # a draw over more than 4096 tokens
    dict(top_k=100_000, top_p=0.99, min_p=0.0, temperature=2.0),
    dict(temperature=1.7, min_p=0.2),
    dict(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.3, penalty_last_n=-1),
    dict(repetition_penalty=0.7, frequency_penalty=-0.4, logit_bias={5: 3.0, 100: -100.0, 7: 50.0}),
    dict(logit_bias={11: -100.0}, ignore_eos=True),
]


def logits_of(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    x = (rng.standard_normal(n) * rng.uniform(0.5, 5.0)).astype(np.float32)
    if kind == "ties":  # whole numbers: many equal logits, at the top and at every cut
        x = np.round(x)
    elif kind == "-inf":  # most of the vocabulary banned, as a grammar would
        x[rng.integers(0, n, int(n * 0.9))] = -np.inf
    elif kind == "few":  # fewer finite logits than top_k keeps
        x[:] = -np.inf
        x[rng.integers(0, n, 7)] = rng.standard_normal(7).astype(np.float32)
    elif kind == "head":  # a Zipf-like head over the bulk, like a real LM's output
        head = rng.choice(n, 200, replace=False)
        x[head] = (22 - 2.5 * np.log(np.arange(1, 201))).astype(np.float32)
    return x


def random_mask(n: int, rng: np.random.Generator, allowed: int) -> np.ndarray:
    """llguidance's layout: bit i % 32 of uint32 word i // 32 allows token i."""
    bits = np.zeros(32 * ((n + 31) // 32), np.uint8)
    bits[rng.choice(n, allowed, replace=False)] = 1
    return np.packbits(bits, bitorder="little").view(np.uint32)


def assert_same_tokens(params: SamplingParams, n: int, rows, recent, masks=None, steps=4):
    native, reference = Sampler(params, n, eog_token_ids=[1]), Sampler(params, n, eog_token_ids=[1])
    for i, x in enumerate(rows):
        mask = None if masks is None else masks[i]
        for _ in range(steps):
            got, want = native.sample(x, recent, mask), reference.sample_numpy(x, recent, mask)
            assert got == want, (params, i)
    # and both consumed the same draws
    assert native.rng.random() == reference.rng.random()


@pytest.mark.parametrize("values", SETTINGS, ids=repr)
@pytest.mark.parametrize("n", [BIG_V, SMALL_V])
def test_native_matches_the_numpy_sampler(values, n):
    rng = np.random.default_rng(len(repr(values)) + n)
    rows = [logits_of(kind, n, rng) for kind in ("normal", "ties", "-inf", "few", "head") for _ in range(2)]
    recent = rng.integers(0, n, 80).tolist() + [3, 3, 3, n + 7, -2]  # repeats; ids outside are ignored
    for seed in range(3):
        assert_same_tokens(SamplingParams(seed=seed, **values), n, rows, recent)


@pytest.mark.parametrize("values", SETTINGS[:3] + SETTINGS[4:5] + SETTINGS[12:14], ids=repr)
@pytest.mark.parametrize("allowed", [1, 5, 39, 41, 3000, BIG_V - 1])
def test_native_matches_the_numpy_sampler_under_a_grammar_mask(values, allowed):
    rng = np.random.default_rng(allowed)
    rows = [logits_of(kind, BIG_V, rng) for kind in ("normal", "ties", "head")]
    masks = [random_mask(BIG_V, rng, allowed) for _ in rows]
    assert_same_tokens(SamplingParams(seed=allowed, **values), BIG_V, rows, [5, 6, 6, 7], masks)


def exp_sensitive_cuts(rng: np.random.Generator) -> list[tuple[float, float]]:
    """(a, top_p) such that top-p over the logits (0, a) keeps one token with numpy's float64
    exp and two with libm's, or the other way round: where the two exps differ in a bit that
    survives 1 + exp(a)."""
    out = []
    for a in (-rng.uniform(0.0, 0.69, 20_000)).astype(np.float32):
        e_numpy, e_libm = float(np.exp(np.array([float(a)]))[0]), math.exp(float(a))
        top_p = math.nextafter(1.0 / (1.0 + e_numpy), 0.0)
        for _ in range(6):
            if (top_p * (1.0 + e_numpy) <= 1.0) != (top_p * (1.0 + e_libm) <= 1.0):
                out.append((float(a), top_p))
                break
            top_p = math.nextafter(top_p, 1.0)
    return out


def test_top_p_cut_on_the_last_bit_of_exp():
    """The native sampler's exponentials are numpy's (its own SIMD kernel on CPUs with
    AVX-512F, which differs from libm's in the last bit of ~5% of arguments), so top-p cuts
    that hang on that bit agree with the numpy sampler's."""
    cases = exp_sensitive_cuts(np.random.default_rng(7))
    if not cases:
        pytest.skip("numpy's float64 exp is libm's on this CPU: no cut depends on which one is used")
    for a, top_p in cases:
        x = np.full(SMALL_V, -np.inf, np.float32)
        x[[10, 20]] = [0.0, a]
        params = SamplingParams(seed=1, top_k=2, top_p=top_p, min_p=0.0, temperature=1.0)
        assert_same_tokens(params, SMALL_V, [x], [], steps=8)


# One batch mixing every kind of row: (settings, logits kind, grammar mask?, what C does).
MIXED_BATCH = [
    (dict(temperature=0.0), "normal", False, "native"),
    ({}, "head", False, "native"),  # the defaults
    (dict(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.3), "ties", False, "native"),
    (dict(logit_bias={5: 3.0, 100: -100.0, 7: 50.0}, temperature=1.4), "normal", False, "native"),
    ({}, "head", True, "native"),
    (dict(temperature=0.0, logit_bias={3: 100.0}), "-inf", True, "native"),
    (dict(top_k=0, top_p=1.0), "normal", False, "native"),  # min-p alone
    (dict(top_k=0, logit_bias={9: 2.0}), "head", True, "fallback"),  # top-p over the whole vocabulary
    (dict(top_k=5000, top_p=1.0, min_p=0.0, repetition_penalty=1.2), "normal", False, "fallback"),  # > 4096
    (dict(top_k=40), "+inf", False, "fallback"),
    (dict(top_k=1, temperature=1.3), "few", False, "native"),
]


def mixed_rows(rng: np.random.Generator):
    """A batch's logits (rows, BIG_V) and grammar masks, in MIXED_BATCH's order."""
    rows, masks = [], []
    for _, kind, masked, _ in MIXED_BATCH:
        x = logits_of("normal" if kind == "+inf" else kind, BIG_V, rng)
        if kind == "+inf":
            x[rng.integers(0, BIG_V, 2)] = np.inf
        rows.append(x)
        masks.append(random_mask(BIG_V, rng, 3000) if masked else None)
    return np.stack(rows), masks


def test_a_mixed_batch_in_one_call_is_each_row_alone_in_numpy():
    """Each row's token from the batched call is what its own sampler's numpy chain draws, so
    a row depends on nothing else in the batch; the rows C leaves to numpy really do."""
    rng = np.random.default_rng(18)
    recent = rng.integers(0, BIG_V, 60).tolist() + [3, 3, 7, BIG_V + 2]
    params = [SamplingParams(seed=i, **values) for i, (values, *_) in enumerate(MIXED_BATCH)]
    batched = [Sampler(p, BIG_V, eog_token_ids=[1]) for p in params]
    alone = [Sampler(p, BIG_V, eog_token_ids=[1]) for p in params]
    for _ in range(4):
        logits, masks = mixed_rows(rng)
        with np.errstate(invalid="ignore"):  # +inf logits: numpy's weights are NaN, as before C
            got = sample_batch(batched, logits, [recent] * len(params), masks)
            want = [s.sample_numpy(x, recent, m) for s, x, m in zip(alone, logits, masks)]
        assert got == want
    for b, a in zip(batched, alone):  # and every sequence consumed the same draws
        assert b.rng.random() == a.rng.random()
    codes = kernels.sample_batch(
        [s._native for s in batched],
        logits,
        masks,
        [s._native_window(recent) for s in batched],
        [0.5] * len(params),
        np.empty_like(logits),
        kernels.sample_scratch(BIG_V),
    )
    expected = [kernels.SAMPLE_FALLBACK if how == "fallback" else "token" for *_, how in MIXED_BATCH]
    assert [c if c == kernels.SAMPLE_FALLBACK else "token" for c in codes] == expected


def test_a_batch_row_s_error_is_the_numpy_sampler_error():
    samplers = [Sampler(SamplingParams(seed=1), SMALL_V) for _ in range(3)]
    logits = np.zeros((3, SMALL_V), np.float32)
    logits[1] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        sample_batch(samplers, logits, [()] * 3, [None] * 3)
    with pytest.raises(ValueError, match="expected 3 rows"):
        sample_batch(samplers, logits[:2], [()] * 3, [None] * 3)
    assert sample_batch([], np.zeros((0, SMALL_V), np.float32), [], []) == []


def test_errors_are_the_numpy_sampler_errors():
    for values in ({}, dict(temperature=0.0)):
        sampler = Sampler(SamplingParams(**values), SMALL_V)
        with pytest.raises(FloatingPointError, match="NaN"):
            sampler.sample(np.full(SMALL_V, np.nan, np.float32))
        with pytest.raises(FloatingPointError, match="-inf"):
            sampler.sample(np.full(SMALL_V, -np.inf, np.float32))
        x = np.zeros(SMALL_V, np.float32)
        with pytest.raises(FloatingPointError, match="-inf"):
            sampler.sample(x, (), np.zeros(SMALL_V // 32 + 1, np.uint32))  # the mask allows nothing
        with pytest.raises(ValueError, match="grammar mask covers"):
            sampler.sample(x, (), np.zeros(3, np.uint32))
        with pytest.raises(ValueError, match="expected 1000 logits"):
            sampler.sample(np.zeros(SMALL_V + 1, np.float32))


def test_the_caller_s_window_is_not_reordered():
    recent = np.array([9, 3, 7, 3], np.int64)
    Sampler(SamplingParams(repetition_penalty=1.2), SMALL_V).sample(np.zeros(SMALL_V, np.float32), recent)
    assert recent.tolist() == [9, 3, 7, 3]


# ---- the default model: seeded generations as the numpy sampler made them ----------------

RUNS = {
    "defaults seed 1": dict(seed=1),
    "defaults seed 2": dict(seed=2),
    "greedy": dict(temperature=0.0),
    "penalties and bias": dict(
        seed=3, repetition_penalty=1.2, frequency_penalty=0.4, presence_penalty=0.3, logit_bias={563: 4.0}
    ),
    "min-p alone, hot": dict(seed=4, top_k=0, top_p=1.0, min_p=0.1, temperature=1.2),
    "top-p alone": dict(seed=5, top_k=0, top_p=0.9, min_p=0.0),
}


def seeded_generations(model_path, native_rows: list[int] | None = None) -> dict[str, list[int]]:
    """Each RUNS entry, 24 tokens from one prompt, all in one batch through Engine.step.
    native_rows: appended to, the rows of each native sampling call."""
    from smallmind.engine.engine import Engine
    from smallmind.engine.model import Model

    model = Model.load(model_path, n_ctx=256, n_slots=len(RUNS), max_batch_tokens=256)
    engine = Engine(model)
    prompt = [2, 818, 5279, 529, 7001, 563, 496, 6290, 529, 506, 5279, 236764]
    seqs = {
        name: engine.submit(prompt, SamplingParams(max_tokens=24, ignore_eos=True, **values))
        for name, values in RUNS.items()
    }
    while engine.has_work():
        calls_before = 0 if native_rows is None else len(native_rows)
        events = engine.step()
        if native_rows is not None:  # one native call per step, for the whole batch
            assert len(native_rows) - calls_before == 1 and native_rows[-1] == len(events)
    return {name: seq.output_ids for name, seq in seqs.items()}


def test_default_model_seeded_generations_are_the_recorded_ones(default_model, monkeypatch):
    native_rows: list[int] = []
    native = kernels.sample_batch

    def counted(settings, *args):
        native_rows.append(len(settings))
        return native(settings, *args)

    monkeypatch.setattr(kernels, "sample_batch", counted)
    assert seeded_generations(default_model, native_rows) == json.loads(RECORDED.read_text())
    assert native_rows[0] == len(RUNS)


if __name__ == "__main__":  # records tests/data/sampling_seeded_gemma3.json (run on the numpy sampler)
    from tests.conftest import default_model_path

    runs = seeded_generations(default_model_path())
    RECORDED.write_text(
        "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in runs.items()) + "\n}\n"
    )
