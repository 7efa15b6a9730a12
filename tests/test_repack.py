"""The Q4_K repacking prototype (csrc/repack.h): its matmul over the 8-row interleaved copy
gives exactly the floats of today's path (sm_matmul_q on the avx2 table, whose Q4_K
kernels are vec_dot / vec_dot_n of dot_avx2.c), and of that table's one-row vec_dot, for
any number of rows (also not a multiple of 8) and of tokens (also past a group of 8)."""

import numpy as np
import pytest

from smallmind import kernels
from smallmind.errors import KernelError
from smallmind.gguf import GGUFFile
from smallmind.isa_bench import random_weights
from tests.conftest import default_model_path

pytestmark = pytest.mark.skipif(
    "avx2" not in kernels.available_isas(), reason="the repacked Q4_K matmul is AVX2 code"
)

ROW_COUNTS = [1, 7, 8, 13, 64]
TOKEN_COUNTS = [1, 2, 5, 8, 9, 32, 64]


@pytest.fixture(autouse=True)
def avx2_table():
    before, threads = kernels.current_isa(), kernels.get_threads()
    kernels.select_isa("avx2")
    kernels.set_threads(1)
    yield
    kernels.select_isa(before)
    kernels.set_threads(threads)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def check_bit_identical(w: np.ndarray, n_rows: int, n_cols: int, n_tok: int, rng) -> None:
    x = rng.standard_normal((n_tok, n_cols), dtype=np.float32)
    xq = kernels.quantize_activation(x, "Q4_K")
    current = kernels.matmul_q(w, "Q4_K", n_cols, xq)
    reference = kernels.matmul_q(w, "Q4_K", n_cols, xq, vec_dot_only=True)
    repacked = kernels.matmul_q4_K_x8(kernels.repack_q4_K_x8(w, n_cols), n_rows, n_cols, xq)
    assert same_bits(current, reference)
    assert same_bits(repacked, current), (
        f"{n_rows}x{n_cols}, {n_tok} tokens: max |diff| {np.abs(repacked - current).max()}"
    )


@pytest.mark.parametrize("n_rows", ROW_COUNTS)
@pytest.mark.parametrize("n_tok", TOKEN_COUNTS)
def test_random_q4_K_bit_identical(n_rows, n_tok):
    rng = np.random.default_rng(1000 * n_rows + n_tok)
    n_cols = 512
    check_bit_identical(random_weights("Q4_K", n_rows, n_cols, rng), n_rows, n_cols, n_tok, rng)


def test_default_model_q4_K_bit_identical():
    """Real blocks: the first 45 rows (5 groups + 5) of an attn_output and an ffn_down."""
    with GGUFFile(default_model_path()) as gguf:
        names = [n for n, t in gguf.tensors.items() if t.type_name == "Q4_K"]
        picked = [next(n for n in names if "attn_output" in n), next(n for n in names if "ffn_down" in n)]
        for name in picked:
            info = gguf.tensors[name]
            w = np.array(gguf.tensor_bytes(name)).reshape(info.n_rows, -1)[:45]
            for n_tok in (1, 8, 11):
                check_bit_identical(w, 45, info.ne[0], n_tok, np.random.default_rng(n_tok))


def test_repacked_layout_size():
    """8 rows of a super-block in 1184 bytes; a short last group padded to 8 rows."""
    w = random_weights("Q4_K", 13, 512, np.random.default_rng(0))
    assert kernels.repack_q4_K_x8(w, 512).nbytes == 2 * 2 * 1184


def test_bad_shapes_are_errors():
    w = random_weights("Q4_K", 8, 256, np.random.default_rng(0))
    with pytest.raises(KernelError):
        kernels.repack_q4_K_x8(w, 300)  # not whole 256-blocks
    wr = kernels.repack_q4_K_x8(w, 256)
    xq = kernels.quantize_activation(np.ones((1, 256), np.float32), "Q4_K")
    with pytest.raises(ValueError):
        kernels.matmul_q4_K_x8(wr, 16, 256, xq)  # not the repack of 16 rows
    with pytest.raises(ValueError):
        kernels.matmul_q4_K_x8(wr, 8, 256, xq[:, :-1])  # not whole activation rows
