"""The model's load-time repacking of Q4_K matrices (csrc/repack.h, SMALLMIND_REPACK): where
the kernel table takes Q4_K's dot kernels from the avx2 unit, the default model keeps a
repacked copy of each Q4_K layer matrix and its logits keep every bit of the model without
(prefill and decode, 1 and 2 threads, and across a switch of kernel table while loaded).
One-token matmuls read the original rows (matmul.c X8_MIN_TOKENS): the same path either way."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from smallmind import kernels
from smallmind.engine.model import LAYER_TENSORS, Model
from smallmind.errors import ConfigError
from smallmind.gguf import GGUFFile
from tests.conftest import default_model_path

pytestmark = pytest.mark.skipif(
    "avx2" not in kernels.available_isas(), reason="the repacked Q4_K matmul is AVX2 code"
)

PREFILL = 40


def q4_K_layer_matrices(path) -> int:
    """Q4_K matrices among the layer weights the model reads (LAYER_TENSORS)."""
    names = set(LAYER_TENSORS.values())
    with GGUFFile(path) as gguf:
        return sum(
            1
            for name, t in gguf.tensors.items()
            if t.type_name == "Q4_K" and name.startswith("blk.") and name.split(".", 2)[2] in names
        )


@pytest.fixture(autouse=True)
def default_table_and_settings():
    """Each test starts on a table whose Q4_K dots are the avx2 unit's (the one dispatch
    chooses on x86 unless SMALLMIND_ISA forces another), and leaves the settings as found."""
    isa, threads, repack = kernels.current_isa(), kernels.get_threads(), kernels.repack_enabled()
    if kernels.entry_unit("dot", "Q4_K") != "avx2":
        kernels.select_isa("avx2")
    yield
    kernels.select_isa(isa)
    kernels.set_threads(threads)
    kernels.set_repack(repack)


def load(repack: bool) -> Model:
    kernels.set_repack(repack)
    return Model.load(default_model_path(), n_ctx=256, n_slots=2, max_batch_tokens=64)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def run(model: Model) -> list[np.ndarray]:
    """Logits of a prefill of PREFILL tokens into slot 0 (every row), then a decode step of
    slot 0 beside the first token of slot 1, then one of both slots."""
    i32 = lambda v: np.asarray(v, dtype=np.int32)  # noqa: E731
    tokens = (np.arange(PREFILL) * 37 + 11) % 1000 + 2
    out = [model.forward(i32(tokens), i32([0] * PREFILL), i32(range(PREFILL)), i32(range(PREFILL))).copy()]
    out.append(model.forward(i32([5, 9]), i32([0, 1]), i32([PREFILL, 0]), i32([0, 1])).copy())
    out.append(model.forward(i32([6, 10]), i32([0, 1]), i32([PREFILL + 1, 1]), i32([0, 1])).copy())
    return out


def assert_same_logits(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert same_bits(x, y), f"step {step}: max |diff| {np.abs(x - y).max()}"


def test_q4_K_matrices_are_repacked_only_when_on():
    expected = q4_K_layer_matrices(default_model_path())
    assert expected > 0  # the default model is Q4_K_M: most attention and ffn matrices
    assert load(True).repacked_matrices() == expected
    assert load(False).repacked_matrices() == 0


def test_no_repacking_where_q4_K_dots_are_not_avx2():
    kernels.select_isa("scalar")
    assert load(True).repacked_matrices() == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_same_logits_with_and_without_repacking(threads):
    kernels.set_threads(threads)
    plain, repacked = load(False), load(True)
    assert repacked.repacked_matrices() > 0
    assert_same_logits(run(repacked), run(plain))


def test_kernel_table_switch_while_loaded():
    """After a switch to a table whose Q4_K dots are not the avx2 unit's, the repacked
    model reads its original rows (paged back in if they were released), and on the way
    back its copies again: the logits of the plain model on each table."""
    plain, repacked = load(False), load(True)
    best = kernels.current_isa()
    kernels.select_isa("scalar")
    assert_same_logits(run(repacked), run(plain))
    kernels.select_isa(best)
    assert_same_logits(run(repacked), run(plain))


def test_environment_switch():
    kernels.configure_from_env({"SMALLMIND_REPACK": "0"})
    assert not kernels.repack_enabled()
    kernels.configure_from_env({"SMALLMIND_REPACK": "1"})
    assert kernels.repack_enabled()
    # unset: on only where it was measured faster (an Intel CPU with AMX, as sm_cpu_class)
    kernels.configure_from_env({})
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert kernels.repack_enabled() == ("GenuineIntel" in cpuinfo and " amx_tile" in cpuinfo)
    with pytest.raises(ConfigError, match="SMALLMIND_REPACK"):
        kernels.configure_from_env({"SMALLMIND_REPACK": "yes"})


def mapping_rss_kib(address: int) -> int:
    """Resident KiB of the mapping (/proc/self/smaps) that holds `address`."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m.group(1), 16) <= address < int(m.group(2), 16)
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the originals are released on Linux only")
def test_originals_are_released():
    """After the same steps, the repacked model's file mapping holds less than the plain
    one's by about the Q4_K layer matrices: their originals were dropped and never read."""
    with GGUFFile(default_model_path()) as gguf:
        q4_K_bytes = sum(
            t.n_bytes for name, t in gguf.tensors.items() if t.type_name == "Q4_K" and name.startswith("blk.")
        )
    rss = {}
    for repack in (False, True):
        model = load(repack)
        run(model)
        first = next(iter(model.gguf.tensors))
        rss[repack] = mapping_rss_kib(model.gguf.tensor_bytes(first).ctypes.data)
        model.close()
    assert rss[False] - rss[True] > 0.9 * q4_K_bytes / 1024, rss
