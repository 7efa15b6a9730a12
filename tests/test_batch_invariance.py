"""Under every kernel table, a token's logits do not depend on how it was computed.

kernels.h promises that, within one table, vec_dot, vec_dot_n, the tile kernels, the matmul
paths and attention give a (weight row, token) the same floats whatever the batch, the
chunking or the thread count.  A table that mixed one unit's vec_dot with another unit's
batched kernels broke that on AVX-512 CPUs (batched and single-token logits differed by up
to 0.02), so the prefix cache was no longer bit-for-bit a cold run and a seeded request's
output depended on what else ran.  Here every available table (native, or under an
emulated build also the SIMDe ones: tests/test_isa_emulated_suite.py) computes the same
prompts in one call, in chunks, one token at a time, batched with another sequence and on
one thread, and all of it must be equal bit for bit: on the tiny reference models and on
the first two layers of the default model (its real Q5_0 / Q4_K / Q6_K / Q8_0 weights)."""

from pathlib import Path

import numpy as np
import pytest

from smallmind import kernels
from smallmind.engine.model import Model
from smallmind.gguf import GGUFFile
from smallmind.gguf_writer import GGUFValue, write_gguf
from tests.conftest import default_model_path, reference_path

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

TINY_MODELS = [
    "tiny-llama-q4_k_m.gguf",
    "tiny-llama-q8_0.gguf",
    "tiny-qwen2-q4_k_m.gguf",
    "tiny-qwen3-q4_k_m.gguf",
]
PROMPT_LEN = 37  # crosses the 16-row attention blocks and an 8-token kernel group unevenly
CHUNK = 7


@pytest.fixture(params=kernels.available_isas())
def isa(request):
    before = kernels.current_isa()
    kernels.select_isa(request.param)
    yield request.param
    kernels.select_isa(before)


@pytest.fixture
def one_thread():
    """Run the body on one OpenMP thread, then restore the thread count."""

    def run(fn):
        before = kernels.get_threads()
        kernels.set_threads(1)
        try:
            return fn()
        finally:
            kernels.set_threads(before)

    return run


def two_layer_copy(src: Path, dst: Path) -> Path:
    """The model at `src` cut to its first two layers (same metadata, weights and types)."""
    with GGUFFile(src) as f:
        arch = f.architecture
        meta = {}
        for key, value in f.metadata.items():
            vtype = f.metadata_types[key]
            if isinstance(vtype, tuple):
                meta[key] = GGUFValue(vtype[0], value, vtype[1])
            else:
                meta[key] = GGUFValue(vtype, value)
        meta[f"{arch}.block_count"] = GGUFValue(f.metadata_types[f"{arch}.block_count"], 2)
        tensors = {
            name: (t.type, t.ne, bytes(f.tensor_bytes(name)))
            for name, t in f.tensors.items()
            if not name.startswith("blk.") or name.split(".")[1] in ("0", "1")
        }
    write_gguf(dst, meta, tensors, alignment=32)
    return dst


@pytest.fixture(scope="module")
def gemma_two_layers(tmp_path_factory) -> Path:
    return two_layer_copy(default_model_path(), tmp_path_factory.mktemp("gemma2l") / "gemma-2-layers.gguf")


def forward_rows(model, ids, slot, start):
    n = len(ids)
    return model.forward(
        np.asarray(ids, np.int32),
        np.full(n, slot, np.int32),
        np.arange(start, start + n, dtype=np.int32),
        np.arange(n, dtype=np.int32),
    )


def ways_to_compute(model, ids, other, one_thread):
    """The logits of `ids` (from position 0) computed five ways, each in a fresh slot."""
    n = len(ids)
    whole = forward_rows(model, ids, slot=0, start=0)
    chunks = np.concatenate(
        [forward_rows(model, ids[a : a + CHUNK], slot=1, start=a) for a in range(0, n, CHUNK)]
    )
    single = np.concatenate([forward_rows(model, [t], slot=2, start=p) for p, t in enumerate(ids)])
    # together with another sequence's prompt in the same calls, in uneven pieces
    together, done, done_other = [], 0, 0
    for step in (5, 9, 1, 16, n):
        mine = ids[done : done + step]
        if not mine:
            break
        theirs = other[done_other : done_other + 3]
        tokens = list(mine) + list(theirs)
        slots = [3] * len(mine) + [0] * len(theirs)
        positions = list(range(done, done + len(mine))) + list(
            range(n + done_other, n + done_other + len(theirs))
        )
        logits = model.forward(
            np.asarray(tokens, np.int32),
            np.asarray(slots, np.int32),
            np.asarray(positions, np.int32),
            np.arange(len(mine), dtype=np.int32),
        )
        together.append(logits)
        done += len(mine)
        done_other += len(theirs)
    together = np.concatenate(together)
    alone_one_thread = one_thread(lambda: forward_rows(model, ids, slot=0, start=0))
    return {
        "chunks of 7": chunks,
        "one token at a time": single,
        "batched with another sequence": together,
        "one thread": alone_one_thread,
    }, whole


def check_invariance(model, isa, one_thread, seed):
    rng = np.random.default_rng(seed)
    high = min(model.config.vocab_size, 30000)
    ids = rng.integers(3, high, PROMPT_LEN).tolist()
    other = rng.integers(3, high, 64).tolist()
    ways, whole = ways_to_compute(model, ids, other, one_thread)
    assert np.isfinite(whole).all()
    for how, logits in ways.items():
        assert logits.shape == whole.shape, how
        differ = np.flatnonzero((logits != whole).any(axis=1))
        assert differ.size == 0, (
            f"{isa}: logits computed {how} differ from one call at positions {differ.tolist()} "
            f"(max |diff| {np.abs(logits - whole).max():.3g})"
        )


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_bit_identical_however_batched(isa, one_thread, name):
    model = Model.load(reference_path("tiny", name), n_ctx=256, n_slots=4, max_batch_tokens=64)
    try:
        check_invariance(model, isa, one_thread, seed=11)
    finally:
        model.close()


def test_default_model_two_layers_bit_identical_however_batched(isa, one_thread, gemma_two_layers):
    model = Model.load(gemma_two_layers, n_ctx=256, n_slots=4, max_batch_tokens=64)
    try:
        assert model.config.n_layers == 2
        check_invariance(model, isa, one_thread, seed=12)
    finally:
        model.close()
