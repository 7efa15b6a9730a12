"""Kernels against an independent reference: the numpy dequantizer of the `gguf` package.

For every weight type and every instruction set this CPU runs:
- dequantize equals gguf.quants.dequantize exactly;
- matmul equals the float64 product of the *dequantized* weights with the activations
  as our 8-bit quantizer rounded them, up to float summation order (REL_SUM_TOL);
- and equals the product with the original f32 activations within the rounding bound of
  8-bit activations: per element |x - x'| <= d/2 (+ fp16 rounding of d for Q8_0), weighted
  by |w| (see activation_error_bound).
Data: random blocks for every type; real Q4_K/Q6_K/Q5_0/Q8_0 blocks from the tiny
reference models and the default model."""

import functools

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from smallmind import kernels
from tests.conftest import default_model_path, reference_path

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

# float32 accumulation over <= a few thousand terms, relative to sum |w*x|
REL_SUM_TOL = 2e-5
TYPES = ["F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
K_QUANTS = {"Q4_K": (144, [0, 2]), "Q5_K": (176, [0, 2]), "Q6_K": (210, [208])}  # bytes, fp16 scale offsets
ISAS = kernels.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    before = kernels.current_isa()
    kernels.select_isa(request.param)
    yield request.param
    kernels.select_isa(before)


def random_rows(wtype: str, n_rows: int, n_cols: int, rng) -> np.ndarray:
    """Raw bytes (n_rows, row_bytes) of `wtype` holding random but well-formed blocks."""
    if wtype == "F32":
        return rng.standard_normal((n_rows, n_cols)).astype(np.float32).view(np.uint8)
    if wtype in K_QUANTS:
        block_bytes, scale_offsets = K_QUANTS[wtype]
        n_blocks = n_rows * n_cols // 256
        raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
        for off in scale_offsets:  # sane scales: no inf/nan, magnitudes like real models
            scales = (rng.random(n_blocks) * 0.02).astype(np.float16)
            raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
        return raw.reshape(n_rows, -1)
    values = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    return gguf_quantize(values, GGMLQuantizationType[wtype]).reshape(n_rows, -1)


def reference_dequantize(raw: np.ndarray, wtype: str, n_cols: int) -> np.ndarray:
    if wtype == "F32":
        return raw.view(np.float32).reshape(-1, n_cols)
    return gguf_dequantize(raw, GGMLQuantizationType[wtype]).reshape(-1, n_cols)


def decode_activation(xq: np.ndarray, wtype: str, n_cols: int) -> np.ndarray:
    """Our quantized activation rows back to float64 (independently of the C code)."""
    at = {"Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K"}.get(
        wtype
    )
    if at is None:
        return xq.view(np.float32).reshape(-1, n_cols).astype(np.float64)
    if at == "Q8_0":
        blocks = xq.reshape(-1, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
        q = blocks[:, 2:].view(np.int8).astype(np.float64)
        return (d * q).reshape(-1, n_cols)
    blocks = xq.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32).astype(np.float64)
    q = blocks[:, 4:260].view(np.int8)
    bsums = blocks[:, 260:292].copy().view(np.int16)
    assert np.array_equal(bsums, q.reshape(-1, 16, 16).astype(np.int32).sum(axis=2)), "bad Q8_K bsums"
    return (d * q.astype(np.float64)).reshape(-1, n_cols)


def activation_error_bound(x: np.ndarray, wtype: str) -> np.ndarray:
    """Per-element bound on |x - dequant(quant(x))| for the activation type of `wtype`."""
    if wtype in ("F32", "F16", "BF16"):
        return np.zeros_like(x, dtype=np.float64)
    block = 32 if wtype in ("Q4_0", "Q5_0", "Q8_0") else 256
    amax = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, block).max(axis=2, keepdims=True)
    d = amax / 127
    if block == 32:  # d is stored as fp16: |q| * |d - fp16(d)| <= 127 * d * 2^-11
        per_block = d / 2 + 127 * d * 2.0**-11
    else:
        per_block = d / 2
    return np.broadcast_to(per_block, amax.shape[:2] + (block,)).reshape(x.shape)


def check_matmul(raw: np.ndarray, wtype: str, n_cols: int, x: np.ndarray) -> None:
    w = reference_dequantize(raw, wtype, n_cols).astype(np.float64)
    y = kernels.matmul(raw, wtype, n_cols, x)
    assert y.shape == (x.shape[0], w.shape[0])
    # 1. exact integer work: compare with the activations as they were quantized
    xq = kernels.quantize_activation(x, wtype)
    x_deq = decode_activation(xq, wtype, n_cols)
    exact_q = x_deq @ w.T
    scale_q = np.abs(x_deq) @ np.abs(w).T
    np.testing.assert_array_less(np.abs(y - exact_q), REL_SUM_TOL * scale_q + 1e-6)
    # 2. the 8-bit rounding of activations stays within its analytic bound
    exact = x.astype(np.float64) @ w.T
    bound = activation_error_bound(x, wtype) @ np.abs(w).T + REL_SUM_TOL * (np.abs(x) @ np.abs(w).T) + 1e-6
    np.testing.assert_array_less(np.abs(y - exact), bound)
    # 3. the pre-quantized entry point gives the same numbers
    np.testing.assert_array_equal(kernels.matmul_q(raw, wtype, n_cols, xq), y)


@pytest.mark.parametrize("wtype", TYPES)
def test_dequantize_random_blocks_exact(isa, wtype):
    rng = np.random.default_rng(1)
    n_cols = 512
    raw = random_rows(wtype, 24, n_cols, rng)
    np.testing.assert_array_equal(
        kernels.dequantize(raw, wtype, n_cols), reference_dequantize(raw, wtype, n_cols)
    )


@pytest.mark.parametrize("wtype", TYPES)
@pytest.mark.parametrize("n_tok", [1, 3])
def test_matmul_random_blocks(isa, wtype, n_tok):
    rng = np.random.default_rng(2 + n_tok)
    n_cols = 768
    raw = random_rows(wtype, 40, n_cols, rng)
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
    x[0, :40] *= 30  # outliers make per-block scales differ
    check_matmul(raw, wtype, n_cols, x)


@functools.cache
def real_tensors(path, types, max_rows=64):
    """(name, type, n_cols, raw rows) of the 2-D tensors of `types`; parsed once per session."""
    reader = GGUFReader(str(path))
    found = []
    for t in reader.tensors:
        name = t.tensor_type.name
        if name in types and len(t.shape) == 2:
            n_cols = int(t.shape[0])
            raw = np.asarray(t.data).reshape(int(t.shape[1]), -1)[:max_rows]
            found.append((t.name, name, n_cols, np.ascontiguousarray(raw)))
    return found


def check_real(tensors, isa_name):
    rng = np.random.default_rng(3)
    assert tensors, "no tensors of the wanted types"
    for name, wtype, n_cols, raw in tensors:
        np.testing.assert_array_equal(
            kernels.dequantize(raw, wtype, n_cols),
            reference_dequantize(raw, wtype, n_cols),
            err_msg=f"{name} ({isa_name})",
        )
        check_matmul(raw, wtype, n_cols, rng.standard_normal((2, n_cols)).astype(np.float32))


def test_real_blocks_tiny_models(isa):
    for model in ("tiny-llama-q4_k_m.gguf", "tiny-llama-q8_0.gguf", "tiny-qwen3-q4_k_m.gguf"):
        tensors = real_tensors(reference_path("tiny", model), frozenset({"Q4_K", "Q6_K", "Q8_0"}))
        check_real(tensors[:6], isa)


def test_real_blocks_default_model(isa):
    tensors = real_tensors(default_model_path(), frozenset({"Q4_K", "Q6_K", "Q5_0", "Q8_0"}), max_rows=48)
    seen = {}
    for t in tensors:  # one tensor of each type and shape is enough
        seen.setdefault((t[1], t[2]), t)
    assert {k[0] for k in seen} == {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}
    check_real(list(seen.values()), isa)


@pytest.mark.parametrize("wtype", TYPES)
def test_every_isa_agrees_with_scalar(wtype):
    rng = np.random.default_rng(4)
    n_cols = 1024
    raw = random_rows(wtype, 33, n_cols, rng)  # 33: a tile boundary and a ragged last tile
    x = rng.standard_normal((5, n_cols)).astype(np.float32)
    before = kernels.current_isa()
    try:
        kernels.select_isa("scalar")
        ref = kernels.matmul(raw, wtype, n_cols, x)
        for name in ISAS:
            kernels.select_isa(name)
            y = kernels.matmul(raw, wtype, n_cols, x)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)
    finally:
        kernels.select_isa(before)


def test_threads_give_same_result():
    rng = np.random.default_rng(5)
    raw = random_rows("Q4_K", 512, 1024, rng)
    x = rng.standard_normal((2, 1024)).astype(np.float32)
    before = kernels.get_threads()
    try:
        kernels.set_threads(1)
        one = kernels.matmul(raw, "Q4_K", 1024, x)
        kernels.set_threads(2)
        two = kernels.matmul(raw, "Q4_K", 1024, x)
    finally:
        kernels.set_threads(before)
    np.testing.assert_array_equal(one, two)  # rows are independent: threads only split them


def test_bad_shapes_and_types_raise_typed_errors():
    from smallmind.errors import KernelError

    raw = np.zeros((4, 144), dtype=np.uint8)
    with pytest.raises(KernelError, match="unsupported"):
        kernels.matmul(raw, "Q2_K", 256, np.zeros(256, np.float32))
    with pytest.raises(KernelError, match="blocks"):
        kernels.dequantize(np.zeros((4, 18), np.uint8), "Q4_0", 33)
    with pytest.raises(ValueError, match="columns"):
        kernels.matmul(raw, "Q4_K", 256, np.zeros(128, np.float32))
    with pytest.raises(ValueError, match="whole number"):
        kernels.matmul(np.zeros(100, np.uint8), "Q4_K", 256, np.zeros(256, np.float32))


def test_matmul_releases_the_gil():
    """A Python thread keeps running while a large matmul runs in another thread."""
    import threading
    import time

    rng = np.random.default_rng(6)
    n_rows, n_cols = 65536, 640
    raw = random_rows("Q8_0", 1024, n_cols, rng)
    raw = np.ascontiguousarray(np.tile(raw, (n_rows // 1024, 1)))
    x = rng.standard_normal((1, n_cols)).astype(np.float32)
    before = kernels.get_threads()
    kernels.set_threads(1)  # leave the other core to the counting thread
    durations = []

    def work():
        start = time.perf_counter()
        for _ in range(8):
            kernels.matmul(raw, "Q8_0", n_cols, x)
        durations.append(time.perf_counter() - start)

    try:
        worker = threading.Thread(target=work)
        ticks = 0
        worker.start()
        while worker.is_alive():
            ticks += 1
        worker.join()
    finally:
        kernels.set_threads(before)
    # Held GIL: the counting loop would only run at the 5 ms switch interval (~100 ticks/0.5 s).
    # Released: it spins freely, millions of ticks per second.
    assert durations[0] > 0.02, "matmul too short to tell"
    assert ticks / durations[0] > 200_000, f"only {ticks} ticks in {durations[0]:.3f}s: GIL held?"


@pytest.mark.parametrize("wtype", TYPES)
@pytest.mark.parametrize("n_tok", [2, 5, 8, 9])
def test_batched_matmul_equals_per_token_matvecs(isa, wtype, n_tok):
    """n_tok > 1 goes through the multi-row dot (vec_dot_n: each weight block decoded once
    for up to 8 tokens, 9 = a group of 8 and a single one); the result must be the n_tok
    matvecs.  The integer block sums are exact either way, so only the float order could
    differ; the scalar and AVX2 units produce bit-identical numbers by construction."""
    rng = np.random.default_rng(10 + n_tok)
    n_cols = 1024 if wtype in K_QUANTS else 640  # 640: 20 blocks, a ragged group of 4
    raw = random_rows(wtype, 37, n_cols, rng)  # 37: ragged last row tile
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
    x[:, :32] *= 1 + 20 * rng.random((n_tok, 1)).astype(np.float32)  # block scales differ per token
    xq = kernels.quantize_activation(x, wtype)
    batched = kernels.matmul_q(raw, wtype, n_cols, xq)
    single = np.stack([kernels.matmul_q(raw, wtype, n_cols, xq[t : t + 1])[0] for t in range(n_tok)])
    assert batched.shape == single.shape == (n_tok, 37)
    if isa in ("scalar", "avx2"):
        np.testing.assert_array_equal(batched, single)
    else:  # e.g. AVX-512: vec_dot_n may come from the AVX2 unit, vec_dot from its own
        w = reference_dequantize(raw, wtype, n_cols).astype(np.float64)
        scale = np.abs(decode_activation(xq, wtype, n_cols)) @ np.abs(w).T
        np.testing.assert_array_less(np.abs(batched - single), REL_SUM_TOL * scale + 1e-6)
    check_matmul(raw, wtype, n_cols, x)  # and both against the float64 reference


def test_batched_matmul_real_default_model_rows(isa):
    """Real Q4_K/Q6_K/Q5_0/Q8_0 rows of the default model, 8 tokens at once vs one by one."""
    tensors = real_tensors(default_model_path(), frozenset({"Q4_K", "Q6_K", "Q5_0", "Q8_0"}), max_rows=48)
    seen = {}
    for t in tensors:
        seen.setdefault(t[1], t)
    rng = np.random.default_rng(11)
    for name, wtype, n_cols, raw in seen.values():
        xq = kernels.quantize_activation(rng.standard_normal((8, n_cols)).astype(np.float32), wtype)
        batched = kernels.matmul_q(raw, wtype, n_cols, xq)
        single = np.stack([kernels.matmul_q(raw, wtype, n_cols, xq[t : t + 1])[0] for t in range(8)])
        np.testing.assert_allclose(
            batched, single, rtol=1e-5, atol=1e-5 * np.abs(single).max(), err_msg=f"{name} ({isa})"
        )


# 32-block rows as the tile kernels (vec_dot_tile) see them: block counts with every
# remainder mod 4 (the leftover blocks of vec_dot's 4-block groups), row counts around the
# 8-row tiles, and 203 rows (several threads, a ragged last 16-row chunk).
TILE_COLS = [32, 96, 160, 640, 1024]  # 1, 3, 5, 20, 32 blocks
TILE_ROWS = [1, 7, 8, 9, 17]


def random_raw_32_blocks(wtype: str, n_rows: int, n_cols: int, rng) -> np.ndarray:
    """Random bytes with small fp16 scales: Q8_0 quants of -128, any Q5_0 high bits."""
    nbytes = {"Q4_0": 18, "Q5_0": 22, "Q8_0": 34}[wtype]
    n_blocks = n_rows * n_cols // 32
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    raw[:, :2] = (rng.random(n_blocks) * 0.02).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)


def assert_matmul_is_vec_dot(raw, wtype: str, n_cols: int, xq, isa: str) -> np.ndarray:
    """The batched matmul of every prefix of `xq`'s tokens equals the one-row-at-a-time
    vec_dot reference bit for bit; the reference, for further checks."""
    n_rows = raw.shape[0]
    reference = kernels.matmul_q(raw, wtype, n_cols, xq, vec_dot_only=True)
    for n_tok in range(1, len(xq) + 1):
        got = kernels.matmul_q(raw, wtype, n_cols, xq[:n_tok])
        np.testing.assert_array_equal(
            got.view(np.uint32),
            reference[:n_tok].view(np.uint32),
            err_msg=f"{wtype} {n_rows}x{n_cols}, {n_tok} tokens ({isa})",
        )
    return reference


@pytest.mark.parametrize("wtype", ["Q4_0", "Q5_0", "Q8_0"])
@pytest.mark.parametrize("n_cols", TILE_COLS)
def test_matmul_equals_vec_dot_bit_for_bit(isa, wtype, n_cols):
    """Every path of matmul (tile kernel, multi-row dot, one token or up to 9, any row
    count) gives, for each (weight row, token), exactly the float of the ISA's vec_dot for
    that pair alone: batching and tiling never change a result."""
    rng = np.random.default_rng(20 + n_cols)
    x = rng.standard_normal((9, n_cols)).astype(np.float32)
    x *= 1 + 20 * rng.random((9, n_cols // 32, 1)).astype(np.float32).repeat(32, axis=2).reshape(9, n_cols)
    xq = kernels.quantize_activation(x, wtype)
    for n_rows in TILE_ROWS + [203]:
        for raw in (
            random_rows(wtype, n_rows, n_cols, rng),
            random_raw_32_blocks(wtype, n_rows, n_cols, rng),
        ):
            reference = assert_matmul_is_vec_dot(raw, wtype, n_cols, xq, isa)
            # the float entry point (quantizes, then sm_matmul_multi) agrees too
            np.testing.assert_array_equal(
                kernels.matmul(raw, wtype, n_cols, x).view(np.uint32), reference.view(np.uint32)
            )


@pytest.mark.parametrize(
    "wtype,n_cols", [("Q4_K", 256), ("Q5_K", 768), ("Q6_K", 1280), ("F32", 100), ("F16", 640), ("BF16", 64)]
)
def test_matmul_equals_vec_dot_bit_for_bit_other_types(isa, wtype, n_cols):
    """The same contract for the K-quants (multi-row dots) and the float types: a table
    whose multi-row kernel came from another unit than its vec_dot broke it on AVX-512."""
    rng = np.random.default_rng(40 + n_cols)
    x = rng.standard_normal((9, n_cols)).astype(np.float32)
    xq = kernels.quantize_activation(x, wtype)
    for n_rows in (1, 9, 40):
        raw = random_rows(wtype, n_rows, n_cols, rng)
        assert_matmul_is_vec_dot(raw, wtype, n_cols, xq, isa)


# ---- attention kernels (sm_kernels.attn_scores / attn_pv), through a small ctypes build ----

ATTN_SHIM = r"""
#include <string.h>
#include "kernels.h"
static sm_kernels tab[2];
static int ready;
static void init(void) {
    if (ready) return;
    sm_fill_kernels_scalar(&tab[0]);
    tab[1] = tab[0];
    sm_fill_kernels_avx2(&tab[1]);
    ready = 1;
}
void scores(int isa, float *s, size_t ss, const float *q, size_t qs, int nq, const sm_half *k, size_t ks,
            int nk, int n) { init(); tab[isa].attn_scores(s, ss, q, qs, nq, k, ks, nk, n); }
void pv(int isa, float *o, size_t os, const float *p, size_t ps, int nq, const sm_half *v, size_t vs,
        int nk, int n) { init(); tab[isa].attn_pv(o, os, p, ps, nq, v, vs, nk, n); }
"""


@functools.lru_cache(maxsize=1)
def attn_lib(tmp: str):
    import ctypes
    import shutil
    import subprocess
    from pathlib import Path

    from tests.conftest import REPO

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found")
    out = Path(tmp)
    (out / "shim.c").write_text(ATTN_SHIM)
    csrc = REPO / "csrc"
    cmd = [
        gcc,
        "-O2",
        "-std=gnu11",
        "-fPIC",
        "-shared",
        f"-I{csrc}",
        "-mavx2",
        "-mfma",
        "-mf16c",
        str(csrc / "dot_scalar.c"),
        str(csrc / "dot_avx2.c"),
        str(out / "shim.c"),
        "-o",
        str(out / "libattn.so"),
        "-lm",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return ctypes.CDLL(str(out / "libattn.so"))


def _rows(a: np.ndarray):
    """(pointer, row stride in elements) of a C-contiguous 2-D array, as the shim takes them."""
    import ctypes

    assert a.ndim == 2 and a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(a.shape[1])


def attn_scores(lib, isa: int, s: np.ndarray, q: np.ndarray, k: np.ndarray) -> None:
    """s (nq, nk) = q (nq, n) @ k (nk, n).T through table `isa`."""
    lib.scores(isa, *_rows(s), *_rows(q), q.shape[0], *_rows(k), k.shape[0], q.shape[1])


def attn_pv(lib, isa: int, o: np.ndarray, p: np.ndarray, v: np.ndarray) -> None:
    """o (nq, n) += p (nq, nk) @ v (nk, n) through table `isa`."""
    lib.pv(isa, *_rows(o), *_rows(p), p.shape[0], *_rows(v), v.shape[0], v.shape[1])


@pytest.mark.e2e  # compiles a C shim with gcc
@pytest.mark.skipif("avx2" not in ISAS, reason="needs AVX2")
@pytest.mark.parametrize(
    "n_q,n_k,n", [(1, 1, 256), (4, 7, 256), (7, 5, 64), (64, 33, 256), (3, 9, 100), (5, 3, 13)]
)
def test_attention_kernels(tmp_path_factory, n_q, n_k, n):
    """attn_scores and attn_pv of the scalar and the AVX2 table against float64 numpy: equal
    up to float summation order; a score does not depend on the other rows of the call; a
    zero probability adds nothing."""

    lib = attn_lib(str(tmp_path_factory.mktemp("attn")))
    rng = np.random.default_rng(n_q * 1000 + n_k * 10 + n)
    q = rng.standard_normal((n_q, n)).astype(np.float16).astype(np.float32)
    k = rng.standard_normal((n_k, n)).astype(np.float16)
    v = rng.standard_normal((n_k, n)).astype(np.float16)
    p = rng.random((n_q, n_k)).astype(np.float16).astype(np.float32)
    p[:, ::3] = 0.0
    o0 = rng.standard_normal((n_q, n)).astype(np.float32)
    ref_s = q.astype(np.float64) @ k.astype(np.float64).T
    ref_o = o0.astype(np.float64) + p.astype(np.float64) @ v.astype(np.float64)
    for isa in (0, 1):
        s = np.zeros((n_q, n_k), np.float32)
        attn_scores(lib, isa, s, q, k)
        bound = np.abs(q).astype(np.float64) @ np.abs(k.astype(np.float64)).T
        assert np.all(np.abs(s - ref_s) <= REL_SUM_TOL * bound + 1e-30), isa
        # row by row, one cache row at a time: the same floats
        for i in range(n_q):
            for j in range(n_k):
                one = np.zeros((1, 1), np.float32)
                attn_scores(lib, isa, one, q[i : i + 1], k[j : j + 1])
                assert one[0, 0] == s[i, j], (isa, i, j)
        o = o0.copy()
        attn_pv(lib, isa, o, p, v)
        bound = np.abs(o0).astype(np.float64) + p.astype(np.float64) @ np.abs(v.astype(np.float64))
        assert np.all(np.abs(o - ref_o) <= REL_SUM_TOL * bound + 1e-30), isa
        # the columns of p split into two calls: the same floats (the terms go in order)
        o2 = o0.copy()
        h = n_k // 2
        pa, pb = np.ascontiguousarray(p[:, :h]), np.ascontiguousarray(p[:, h:])
        if h:
            attn_pv(lib, isa, o2, pa, v[:h])
        attn_pv(lib, isa, o2, pb, v[h:])
        np.testing.assert_array_equal(o2, o)


@pytest.mark.e2e  # imports the extension in child processes
def test_openmp_threads_sleep_while_waiting_unless_told_otherwise():
    """libgomp reads OMP_WAIT_POLICY when it loads: importing smallmind sets it first, and a
    user's own setting wins."""
    import os
    import subprocess
    import sys

    code = "import os, smallmind._kernels; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env, OMP_WAIT_POLICY="active"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "active"
