"""The SIMD units this machine cannot run natively, run through SIMDe emulation.

Each ISA file (csrc/dot_avx512.c, csrc/dot_neon.c) is compiled with -DSM_SIMDE, which makes
it include SIMDe's portable implementations of the intrinsics instead of the real ones,
and linked with the scalar unit into a small shared library (once per module and ISA).
Then, for every weight type, the ISA's table (scalar table + the ISA's overrides, as
dispatch.c builds it) is compared with the scalar table:
- dequant: bit-exact wherever the ISA overrides it;
- vec_dot: equal up to float summation order, |isa - scalar| <= DOT_RTOL * sum|w_i * a_i|,
  with the activations quantized by the scalar table's quantize[Q8_0 / Q8_K].
Data: random blocks (gguf.quants.quantize where it implements the type, else random bytes
with small fp16 scales; also raw random bytes for the 32-blocks, which reach values such
as -128 that the quantizer never writes) and real Q4_K/Q6_K rows of the tiny reference
model.  gcc and the SIMDe headers (libsimde-dev) are required: missing, the tests fail."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import quantize as gguf_quantize

from tests.conftest import REPO, reference_path

pytestmark = pytest.mark.e2e  # compiles the SIMD units with gcc

CSRC = REPO / "csrc"
SIMDE = Path("/usr/include/simde")

# float32 sums of at most a few hundred block terms (or a few thousand products), relative
# to sum |w_i * a_i|; the integer parts of the quantized dots are exact
DOT_RTOL = 2e-5

# name: (ggml type id, weights per block, bytes per block, activation type or None for f32)
TYPES = {
    "F32": (0, 1, 4, None),
    "F16": (1, 1, 2, None),
    "BF16": (30, 1, 2, None),
    "Q4_0": (2, 32, 18, "Q8_0"),
    "Q5_0": (6, 32, 22, "Q8_0"),
    "Q8_0": (8, 32, 34, "Q8_0"),
    "Q4_K": (12, 256, 144, "Q8_K"),
    "Q5_K": (13, 256, 176, "Q8_K"),
    "Q6_K": (14, 256, 210, "Q8_K"),
}
ACT_TYPES = {"Q8_0": (8, 32, 34), "Q8_K": (15, 256, 292)}
# byte offsets of the fp16 scales inside a block, for random-byte blocks
SCALE_OFFSETS = {"Q4_0": [0], "Q5_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
# row lengths: tails of the 16-float loops, odd and even block counts (the AVX-512 unit
# works on block pairs), one and several super-blocks
N_COLS = {1: [1, 15, 16, 100, 1000], 32: [32, 96, 416, 1024], 256: [256, 768, 1280]}
ROWS_PER_SIZE = 24

ISAS = {
    "avx512": ("dot_avx512.c", "sm_fill_kernels_avx512"),
    "neon": ("dot_neon.c", "sm_fill_kernels_neon"),
}

SHIM = r"""
#include <string.h>
#include "kernels.h"
size_t sm_kernels_size(void) { return sizeof(sm_kernels); }
void get_scalar(sm_kernels *k) { memset(k, 0, sizeof *k); sm_fill_kernels_scalar(k); }
void get_isa(sm_kernels *k) { memset(k, 0, sizeof *k); sm_fill_kernels_scalar(k); SM_ISA_FILL(k); }
"""

N_SLOTS = 31  # SM_TYPE_COUNT


class Kernels(ctypes.Structure):
    _fields_ = [
        ("dequant", ctypes.c_void_p * N_SLOTS),
        ("vec_dot", ctypes.c_void_p * N_SLOTS),
        ("quantize", ctypes.c_void_p * N_SLOTS),
        ("vec_dot_n", ctypes.c_void_p * N_SLOTS),
        ("vec_dot_tile", ctypes.c_void_p * N_SLOTS),
        ("attn_scores", ctypes.c_void_p),
        ("attn_pv", ctypes.c_void_p),
    ]


DEQUANT_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
QUANTIZE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VEC_DOT_FN = ctypes.CFUNCTYPE(
    None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int
)


def require_toolchain() -> str:
    gcc = shutil.which("gcc")
    if gcc is None or not (SIMDE / "x86" / "avx512.h").is_file() or not (SIMDE / "arm" / "neon.h").is_file():
        pytest.fail(
            "the emulated-ISA tests need gcc and the SIMDe headers in /usr/include/simde: "
            "apt-get install libsimde-dev gcc"
        )
    return gcc


def build(gcc: str, isa: str, out: Path) -> Path:
    source, fill = ISAS[isa]
    shim = out / "shim.c"
    shim.write_text(SHIM)
    common = [gcc, "-O2", "-std=c11", "-fPIC", "-Wall", "-Wno-psabi", f"-I{CSRC}", "-c"]
    jobs = [
        common + [str(CSRC / "dot_scalar.c"), "-o", str(out / "scalar.o")],
        common + ["-DSM_SIMDE", str(CSRC / source), "-o", str(out / "isa.o")],
        common + [f"-DSM_ISA_FILL={fill}", str(shim), "-o", str(out / "shim.o")],
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in jobs
    ]
    for cmd, proc in zip(jobs, procs):
        log = proc.communicate()[0]
        if proc.returncode != 0:
            pytest.fail(f"compiling for {isa} failed:\n{' '.join(cmd)}\n{log}")
    lib = out / f"libsm_{isa}.so"
    link = [
        gcc,
        "-shared",
        "-o",
        str(lib),
        str(out / "scalar.o"),
        str(out / "isa.o"),
        str(out / "shim.o"),
        "-lm",
    ]
    res = subprocess.run(link, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"linking for {isa} failed:\n{res.stdout}{res.stderr}")
    return lib


class Tables:
    """The scalar and the ISA kernel tables of one emulated build."""

    def __init__(self, isa: str, lib_path: Path):
        self.isa = isa
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.sm_kernels_size.restype = ctypes.c_size_t
        assert self.lib.sm_kernels_size() == ctypes.sizeof(Kernels), "sm_kernels layout changed"
        self.scalar, self.simd = Kernels(), Kernels()
        self.lib.get_scalar(ctypes.byref(self.scalar))
        self.lib.get_isa(ctypes.byref(self.simd))

    def overrides(self, kind: str, type_id: int) -> bool:
        return getattr(self.simd, kind)[type_id] != getattr(self.scalar, kind)[type_id]

    @staticmethod
    def dequant(table: Kernels, type_id: int, raw: np.ndarray, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        DEQUANT_FN(table.dequant[type_id])(out.ctypes.data, raw.ctypes.data, n)
        return out

    @staticmethod
    def vec_dot(table: Kernels, type_id: int, w: np.ndarray, a: np.ndarray, n: int) -> float:
        s = ctypes.c_float(np.nan)
        VEC_DOT_FN(table.vec_dot[type_id])(ctypes.byref(s), w.ctypes.data, a.ctypes.data, n)
        return s.value

    def quantize_activation(self, act_type: str, x: np.ndarray) -> np.ndarray:
        type_id, block, nbytes = ACT_TYPES[act_type]
        out = np.zeros(x.size // block * nbytes, dtype=np.uint8)
        QUANTIZE_FN(self.scalar.quantize[type_id])(
            out.ctypes.data, np.ascontiguousarray(x, np.float32).ctypes.data, x.size
        )
        return out


@pytest.fixture(scope="module", params=list(ISAS))
def tables(request, tmp_path_factory) -> Tables:
    gcc = require_toolchain()
    out = tmp_path_factory.mktemp(f"simde_{request.param}")
    return Tables(request.param, build(gcc, request.param, out))


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


def random_rows(wtype: str, n_rows: int, n_cols: int, rng, raw_bytes: bool = False) -> np.ndarray:
    """(n_rows, row_bytes) uint8 of well-formed random blocks of `wtype`."""
    _, block, nbytes, _ = TYPES[wtype]
    if wtype == "F32":
        return rng.standard_normal((n_rows, n_cols)).astype(np.float32).view(np.uint8)
    if wtype in ("F16", "BF16") or (wtype in ("Q4_0", "Q5_0", "Q8_0") and not raw_bytes):
        values = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
        q = gguf_quantize(values, GGMLQuantizationType[wtype])
        return np.ascontiguousarray(q).view(np.uint8).reshape(n_rows, -1)
    n_blocks = n_rows * n_cols // block
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[wtype]:  # no inf/nan, magnitudes like real models
        scales = (rng.random(n_blocks) * 0.02).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)


def decode_activation(xq: np.ndarray, act_type, n: int, x: np.ndarray) -> np.ndarray:
    """Quantized activation row back to float64 (for the tolerance's magnitude only)."""
    if act_type is None:
        return x.astype(np.float64)
    if act_type == "Q8_0":
        blocks = xq.reshape(-1, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
        return (d * blocks[:, 2:].view(np.int8)).reshape(n)
    blocks = xq.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32).astype(np.float64)
    return (d * blocks[:, 4:260].view(np.int8)).reshape(n)


def check_rows(t: Tables, wtype: str, rows: np.ndarray, n: int, rng, label: str) -> None:
    type_id, _, _, act_type = TYPES[wtype]
    check_dequant = t.overrides("dequant", type_id)
    acts = []
    for _ in range(4):
        x = rng.standard_normal(n).astype(np.float32)
        xq = x if act_type is None else t.quantize_activation(act_type, x)
        acts.append((xq, decode_activation(xq, act_type, n, x)))
    for r in range(rows.shape[0]):
        w = np.ascontiguousarray(rows[r])
        ref_w = Tables.dequant(t.scalar, type_id, w, n)
        if check_dequant:
            got_w = Tables.dequant(t.simd, type_id, w, n)
            if not np.array_equal(got_w.view(np.uint32), ref_w.view(np.uint32)):
                bad = np.flatnonzero(got_w.view(np.uint32) != ref_w.view(np.uint32))
                pytest.fail(
                    f"{t.isa} {wtype} dequant differs ({label}, row {r}, n={n}): "
                    f"{bad.size} values, first at {bad[0]}: {got_w[bad[0]]!r} != {ref_w[bad[0]]!r}"
                )
        xq, a = acts[r % len(acts)]
        ref = Tables.vec_dot(t.scalar, type_id, w, xq, n)
        got = Tables.vec_dot(t.simd, type_id, w, xq, n)
        magnitude = float(np.abs(ref_w.astype(np.float64) * a).sum())
        assert np.isfinite(ref) and np.isfinite(got), f"{t.isa} {wtype} non-finite dot ({label}, row {r})"
        err = abs(got - ref)
        assert err <= DOT_RTOL * magnitude + 1e-30, (
            f"{t.isa} {wtype} vec_dot ({label}, row {r}, n={n}): {got!r} vs scalar {ref!r}, "
            f"|diff| {err:.3g} > {DOT_RTOL} * sum|w*a| ({magnitude:.3g})"
        )


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------


def test_overrides_every_vec_dot(tables):
    """Otherwise the comparison below would test the scalar code against itself."""
    missing = [name for name, (tid, *_) in TYPES.items() if not tables.overrides("vec_dot", tid)]
    assert not missing, f"{tables.isa} does not override vec_dot for {missing}"


@pytest.mark.parametrize("wtype", list(TYPES))
def test_random_blocks(tables, wtype):
    rng = np.random.default_rng(1234 + TYPES[wtype][0])
    block = TYPES[wtype][1]
    for n in N_COLS[block]:
        check_rows(tables, wtype, random_rows(wtype, ROWS_PER_SIZE, n, rng), n, rng, "quantized/random")


@pytest.mark.parametrize("wtype", ["Q4_0", "Q5_0", "Q8_0"])
def test_random_bytes_32_blocks(tables, wtype):
    """Every byte value, including Q8_0's -128, with small scales."""
    rng = np.random.default_rng(99 + TYPES[wtype][0])
    for n in N_COLS[32]:
        check_rows(
            tables, wtype, random_rows(wtype, ROWS_PER_SIZE, n, rng, raw_bytes=True), n, rng, "random bytes"
        )


REAL_TENSORS = [  # (tensor, rows to take): Q4_K with 1 and 2 super-blocks, Q6_K with 1 and 2
    ("blk.0.attn_q.weight", 128),
    ("blk.0.ffn_down.weight", 96),
    ("output.weight", 128),
    ("blk.1.ffn_down.weight", 96),
]


@pytest.fixture(scope="module")
def tiny_llama():
    return GGUFReader(reference_path("tiny", "tiny-llama-q4_k_m.gguf"))


@pytest.mark.parametrize("name,n_rows", REAL_TENSORS)
def test_real_blocks(tables, tiny_llama, name, n_rows):
    tensor = next((t for t in tiny_llama.tensors if t.name == name), None)
    assert tensor is not None, f"{name} not in tiny-llama-q4_k_m.gguf"
    wtype = tensor.tensor_type.name
    assert wtype in ("Q4_K", "Q6_K"), f"{name} is {wtype}, expected a K-quant"
    n = int(tensor.shape[0])
    rows = np.ascontiguousarray(np.asarray(tensor.data)[:n_rows]).view(np.uint8)
    rng = np.random.default_rng(7)
    check_rows(tables, wtype, rows, n, rng, f"tiny-llama {name}")
