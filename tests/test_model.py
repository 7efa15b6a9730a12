"""The forward pass against llama.cpp's logits, and the batch/cache mechanics.

Oracles (../shared/reference, produced by llama.cpp, never by this project):
- tiny/tiny-golden.json: top-20 logits + mean/std at every prompt position of four small
  random-weight models (llama Q4_K_M and Q8_0, qwen2, qwen3);
- gemma3-270m-greedy.json: the default model's greedy continuations of 12 prompts, with
  llama.cpp's top-5 log-probabilities at each step (teacher-forced along its greedy ids).

Measured errors (AVX2 kernels, this repository's state when the test was written):
- tiny models: 98 of 100 positions agree to the reference's own 4-decimal rounding
  (max |err| 5.4e-5 over the top-20 logits); two positions (qwen2, qwen3) are off by 9.5e-3
  and 0.109: an activation whose 8-bit rounding lands on the other side of a boundary
  after a 1-ulp difference in float summation order.  Mean/std: max |err| 2.1e-4.
  The scalar kernels flip a different rounding (qwen2, one position): top-20 |err| 0.053
  and std |err| 2.3e-3 there; every other position as above.  So the moments, like the
  top-20, get a tight bar where the top-20 is exact and a loose one at flip positions.
- gemma3-270m: top-5 log-prob |err| mean 0.22-0.25 (depending on float summation order
  in the kernels), max ~1.0 nats.  This is the model's noise
  floor, not a bias: a float64 numpy implementation of the same graph over the
  dequantized weights (no activation quantization, no f16 cache) is just as far from
  llama.cpp (mean 0.22, max 1.40), and changing embed_scale by one float32 ulp moves *our*
  log-probs by the same amount (mean 0.23, max 1.14): Q8 activation rounding flips
  re-sample the quantization noise, which this model amplifies to ~0.2 nats.  Hence
  top-1 agreement is asserted where llama.cpp's top-1/top-2 gap exceeds that noise.
  Largest oracle gap at which an implementation's argmax left the oracle's (288 steps):
  llama.cpp 0.3.36 itself, run here with 2 threads (default, n_batch 1, flash attention):
  0.44 nats (16, 12, 13 mismatches); ours with the AVX2 kernels 0.37 (13), with the
  scalar kernels 0.77 (12).  Hence a 1.0-nat bar (189 of the 288 steps are above it).
  llama.cpp's own greedy run here matches 8 of the 12 continuations for 16 tokens.
- batched vs unbatched, chunked vs one token at a time: bit-identical (measured 0.0).
"""

import json
import math
import re

import numpy as np
import pytest

from smallmind.engine.model import LAYER_TENSORS, Model, read_model_config
from smallmind.errors import ModelFormatError
from smallmind.gguf import GGMLType
from smallmind.gguf_writer import write_gguf
from tests.conftest import REPO, default_model_path, reference_path

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

# tiny models: see the module docstring for the measured values
TINY_EXACT_TOL = 2e-4  # per-position top-20 |err| for the positions that are exact
TINY_EXACT_FRACTION = 0.95  # of positions within TINY_EXACT_TOL (measured 0.98)
TINY_MAX_TOL = 0.3  # any position (measured 0.109)
TINY_MOMENT_TOL = 1e-3  # logit mean and std where the top-20 is exact (measured 2.1e-4)
TINY_FLIP_MOMENT_TOL = 1e-2  # at rounding-flip positions (measured 2.3e-3, scalar kernels)
# gemma3-270m: log-probabilities of llama.cpp's top-5 (measured mean 0.22, max ~1.0)
GEMMA_LOGPROB_MEAN_TOL = 0.35
GEMMA_LOGPROB_MAX_TOL = 2.0
GEMMA_CLEAR_GAP = 1.0  # top-1 must agree where llama.cpp's top-1/top-2 gap > this
NEAR_TIE_GAP = 0.05
GEMMA_MAX_NEAR_TIE_MISMATCHES = (
    20  # of 279 steps with gap > 0.05 (measured: ours 8 AVX2, 7 scalar; llama.cpp 10)
)
GREEDY_TOKENS = 16
GREEDY_MIN_EXACT = 5  # of 12 prompts (measured 6; llama.cpp itself is the only bit-exact oracle)


def tiny_golden():
    return json.loads(reference_path("tiny", "tiny-golden.json").read_text())


def greedy_reference():
    return json.loads(reference_path("gemma3-270m-greedy.json").read_text())


def run_chunk(model, ids, slot=0, start=0, rows=None):
    """Logits of `ids` at positions start.. of `slot` in one call (rows: all by default)."""
    n = len(ids)
    rows = np.arange(n, dtype=np.int32) if rows is None else np.asarray(rows, np.int32)
    return model.forward(
        np.asarray(ids, np.int32),
        np.full(n, slot, np.int32),
        np.arange(start, start + n, dtype=np.int32),
        rows,
    )


def run_one_by_one(model, ids, slot=0):
    return np.concatenate([model.forward([t], [slot], [i], [0]) for i, t in enumerate(ids)])


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def gemma():
    model = Model.load(default_model_path(), n_ctx=1024, n_slots=4, max_batch_tokens=128)
    yield model
    model.close()


# ---------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["tiny-llama-q4_k_m.gguf", "tiny-llama-q8_0.gguf", "tiny-qwen2-q4_k_m.gguf", "tiny-qwen3-q4_k_m.gguf"],
)
def test_tiny_models_match_llama_cpp(name):
    cases = tiny_golden()["models"][name]
    model = Model.load(reference_path("tiny", name), n_ctx=512, n_slots=2, max_batch_tokens=64)
    assert model.config.arch == name.split("-")[1]
    errors = []
    for case in cases:
        ids = case["prompt_ids"]
        chunked = run_chunk(model, ids, slot=0)
        single = run_one_by_one(model, ids, slot=1)
        # one chunk and one token at a time are the same computation row by row
        np.testing.assert_allclose(chunked, single, rtol=0, atol=1e-5)
        for logits, ref in zip(chunked, case["positions"]):
            top_ids, top = np.array(ref["top_ids"]), np.array(ref["top_logits"])
            errors.append(np.abs(logits[top_ids] - top).max())
            if top[0] - top[1] > NEAR_TIE_GAP:
                assert logits.argmax() == top_ids[0]
            moment_tol = TINY_MOMENT_TOL if errors[-1] < TINY_EXACT_TOL else TINY_FLIP_MOMENT_TOL
            assert abs(logits.mean() - ref["logit_mean"]) < moment_tol
            assert abs(logits.std() - ref["logit_std"]) < moment_tol
    errors = np.array(errors)
    assert errors.max() < TINY_MAX_TOL, errors.max()
    assert (errors < TINY_EXACT_TOL).mean() >= TINY_EXACT_FRACTION, np.sort(errors)[-5:]
    model.close()


# ---------------------------------------------------------------------------------------
# the default model (gemma3 270M)
# ---------------------------------------------------------------------------------------


def test_gemma_teacher_forced_matches_llama_cpp(gemma):
    errors, near_tie_mismatches = [], 0
    for case in greedy_reference()["cases"]:
        prompt, greedy = case["prompt_ids"], case["greedy_ids"]
        ids = prompt + greedy
        # logits predicting greedy[i] sit at position len(prompt) - 1 + i
        rows = np.arange(len(prompt) - 1, len(ids) - 1)
        logits = run_chunk(gemma, ids, slot=0, rows=rows)
        for lp, step in zip(log_softmax(logits), case["steps"]):
            ref_ids, ref_lp = step["top_ids"], np.array(step["top_logprobs"])
            errors.append(np.abs(lp[ref_ids] - ref_lp).max())
            gap = ref_lp[0] - ref_lp[1]
            if gap > GEMMA_CLEAR_GAP:
                assert lp.argmax() == ref_ids[0], (case["prompt"], gap)
            elif gap > NEAR_TIE_GAP and lp.argmax() != ref_ids[0]:
                near_tie_mismatches += 1
    errors = np.array(errors)
    assert errors.mean() < GEMMA_LOGPROB_MEAN_TOL, errors.mean()
    assert errors.max() < GEMMA_LOGPROB_MAX_TOL, errors.max()
    assert near_tie_mismatches <= GEMMA_MAX_NEAR_TIE_MISMATCHES


def test_gemma_greedy_continuations(gemma):
    """Our own greedy decoding (prompt in one chunk, then one token per call).  Where it
    leaves llama.cpp's path, llama.cpp itself must have had a near-tie there."""
    exact = 0
    for case in greedy_reference()["cases"]:
        prompt, ref = case["prompt_ids"], case["greedy_ids"][:GREEDY_TOKENS]
        logits = run_chunk(gemma, prompt, slot=1, rows=[len(prompt) - 1])
        out = []
        for i in range(len(ref)):
            out.append(int(logits[0].argmax()))
            logits = gemma.forward([out[-1]], [1], [len(prompt) + i], [0])
        if out == ref:
            exact += 1
            continue
        k = next(i for i in range(len(ref)) if out[i] != ref[i])
        lp = case["steps"][k]["top_logprobs"]
        assert lp[0] - lp[1] < GEMMA_CLEAR_GAP, (case["prompt"], k, lp)
        assert out[k] in case["steps"][k]["top_ids"]
    print(f"greedy: {exact} of 12 prompts identical for {GREEDY_TOKENS} tokens")
    assert exact >= GREEDY_MIN_EXACT


def test_batched_equals_unbatched(gemma):
    """Four sequences of different lengths, each alone in one chunk, then together in three
    mixed calls (prompt chunks and decode tokens of different slots in one batch).  Every
    row is computed independently (per-row activation quantization, per-(token, head)
    attention), so the logits agree to float order at most."""
    rng = np.random.default_rng(1)
    seqs = [rng.integers(3, 20000, n).tolist() for n in (7, 12, 3, 9)]
    # per sequence, the [start, end) of its tokens in each of the three batched calls
    plan = [
        [(0, 5), (5, 6), (6, 7)],
        [(0, 5), (5, 10), (10, 12)],
        [(0, 1), (1, 2), (2, 3)],
        [(0, 7), (7, 8), (8, 9)],
    ]
    alone = [run_chunk(gemma, s, slot=0) for s in seqs]
    together = [[] for _ in seqs]
    for call in range(3):
        tokens, slots, positions, owners = [], [], [], []
        for i, s in enumerate(seqs):
            start, end = plan[i][call]
            tokens += s[start:end]
            slots += [i] * (end - start)
            positions += range(start, end)
            owners += [i] * (end - start)
        logits = gemma.forward(
            np.array(tokens, np.int32),
            np.array(slots, np.int32),
            np.array(positions, np.int32),
            np.arange(len(tokens), dtype=np.int32),
        )
        for row, i in enumerate(owners):
            together[i].append(logits[row])
    for i in range(len(seqs)):
        np.testing.assert_allclose(np.array(together[i]), alone[i], rtol=0, atol=1e-5)


def test_chunking_is_bit_exact(gemma):
    """Attention runs over blocks of query rows (several tokens and heads against each cache
    row), but every row is computed exactly as it would be alone: the logits of a 40-token
    prompt are identical, bit for bit, in one call, in chunks of 7 and one token at a time
    (the calls cross the 16-token attention blocks at different places)."""
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 20000, 40).astype(np.int32)
    whole = run_chunk(gemma, ids, slot=0)
    chunks = np.concatenate([run_chunk(gemma, ids[a : a + 7], slot=1, start=a) for a in range(0, 40, 7)])
    single = run_one_by_one(gemma, ids, slot=2)
    np.testing.assert_array_equal(chunks, whole)
    np.testing.assert_array_equal(single, whole)


def test_sliding_window_ring(gemma):
    """A 600-token prompt (> the 512-token window): 128-token chunks vs one token at a time
    give the same final logits, so the ring of sliding-window layers holds the right
    positions; and a third run in a slot that held a longer sequence before."""
    rng = np.random.default_rng(2)
    ids = rng.integers(3, 30000, 600).astype(np.int32)
    last = None
    for start in range(0, len(ids), 128):
        chunk = ids[start : start + 128]
        last = run_chunk(gemma, chunk, slot=2, start=start, rows=[len(chunk) - 1])
    for p, t in enumerate(ids):  # logits of the last token only: the LM head is most of a step
        single = gemma.forward([t], [3], [p], [0] if p == len(ids) - 1 else [])
    np.testing.assert_allclose(last, single, rtol=0, atol=1e-4)
    # rewriting slot 3 from position 0 with the same tokens in chunks of 100
    for start in range(0, len(ids), 100):
        chunk = ids[start : start + 100]
        again = run_chunk(gemma, chunk, slot=3, start=start, rows=[len(chunk) - 1])
    np.testing.assert_allclose(again, single, rtol=0, atol=1e-4)
    # prefix reuse: a copy of the first 590 positions continues like the original
    gemma.copy_slot(3, 0, 590)
    cont = run_chunk(gemma, ids[590:], slot=0, start=590, rows=[9])
    np.testing.assert_allclose(cont, single, rtol=0, atol=1e-4)


def test_bad_batches_raise(gemma):
    ok = dict(tokens=[2], slots=[0], positions=[0], out_rows=[0])
    gemma.forward(**ok)
    bad = [
        dict(ok, tokens=[gemma.vocab_size]),  # token id out of range
        dict(ok, tokens=[-1]),
        dict(ok, slots=[gemma.n_slots]),  # slot out of range
        dict(ok, positions=[gemma.n_ctx]),  # beyond n_ctx
        dict(ok, positions=[5]),  # earlier positions not cached
        dict(ok, out_rows=[1]),  # out row not in the batch
        dict(tokens=[2, 3], slots=[0, 0], positions=[0, 2], out_rows=[0]),  # not contiguous
        dict(tokens=[], slots=[], positions=[], out_rows=[]),
        dict(tokens=[2] * 129, slots=[0] * 129, positions=list(range(129)), out_rows=[0]),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            gemma.forward(**kwargs)
    with pytest.raises(ValueError):
        gemma.copy_slot(0, gemma.n_slots, 1)
    # the model still works after refusing
    gemma.forward(**ok)


def test_hidden_states(gemma):
    ids = [2, 818, 5279, 529]
    logits, hidden = gemma.forward_hidden(ids, [0] * 4, list(range(4)), [3])
    assert hidden.shape == (4, gemma.config.dim)
    np.testing.assert_allclose(gemma.embed(ids, slot=1), hidden, rtol=0, atol=1e-5)
    assert logits.shape == (1, gemma.vocab_size)


def test_default_model_config(gemma):
    c = gemma.config
    assert (c.arch, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == ("gemma3", 640, 18, 4, 1, 256)
    assert c.sliding_window == 512 and c.layer_swa == tuple(int(i % 6 < 5) for i in range(18))
    assert c.attn_scale == 1 / 16 and c.embed_scale == pytest.approx(math.sqrt(640))
    assert gemma.gguf.metadata["general.architecture"] == "gemma3"
    # what the server sizes its prefix cache by is what the native model allocates
    assert c.kv_bytes_per_slot(1024, 128) * gemma.n_slots == gemma.kv_bytes()
    assert read_model_config(default_model_path()) == c


# ---------------------------------------------------------------------------------------
# files we must refuse
# ---------------------------------------------------------------------------------------


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    write_gguf(
        path,
        {"general.architecture": "mamba", "mamba.block_count": 1},
        {"token_embd.weight": (GGMLType.F32, (32, 4), np.zeros((4, 32), np.float32))},
    )
    with pytest.raises(ModelFormatError, match="mamba"):
        Model.load(path)


def test_missing_and_misshapen_tensors(tmp_path):
    meta = {
        "general.architecture": "llama",
        "llama.embedding_length": 32,
        "llama.block_count": 1,
        "llama.attention.head_count": 2,
        "llama.feed_forward_length": 64,
    }
    emb = (GGMLType.F32, (32, 8), np.zeros((8, 32), np.float32))
    path = tmp_path / "missing.gguf"
    write_gguf(path, meta, {"token_embd.weight": emb})
    with pytest.raises(ModelFormatError, match="output_norm.weight is missing"):
        Model.load(path)
    path = tmp_path / "misshapen.gguf"
    write_gguf(
        path,
        meta,
        {"token_embd.weight": emb, "output_norm.weight": (GGMLType.F32, (16,), np.ones(16, np.float32))},
    )
    with pytest.raises(ModelFormatError, match="output_norm.weight has shape"):
        Model.load(path)


def forward_h_layer_fields() -> list[str]:
    """The field names of csrc/forward.h's sm_layer_weights, in declaration order."""
    header = (REPO / "csrc" / "forward.h").read_text()
    body = re.search(r"typedef struct \{([^}]*)\} sm_layer_weights;", header).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for declaration in body.split(";"):
        if declaration.strip():
            kind, names = declaration.split(None, 1)
            assert kind == "sm_tensor", f"sm_layer_weights holds a {kind}"
            fields += [n.strip() for n in names.split(",")]
    return fields


def test_layer_tensors_follow_forward_h():
    """The native model is filled field by field in LAYER_TENSORS' order: it must be
    sm_layer_weights' own order, or weights land in the wrong slots."""
    fields = forward_h_layer_fields()
    assert len(fields) == 16 and fields[0] == "attn_norm" and fields[-1] == "post_ffn_norm"
    assert list(LAYER_TENSORS) == fields
