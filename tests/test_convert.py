"""`convert`: GGUF -> .smq -> GGUF without loss, and --smallmind-compatible output that is
what SmallMind's own importer writes (../shared/reference/smq/tiny-llama-q8_0.smq)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from smallmind.convert import (
    SMQTensor,
    convert,
    quantize_q4,
    quantize_q8,
    smallmind_reader_problems,
    write_smq,
)
from smallmind.engine.model import Model
from smallmind.errors import ModelFormatError
from smallmind.gguf import GGUFFile
from smallmind.smq import GGUF_SCHEME_BASE, SMQFile, Scheme
from tests.conftest import REPO, default_model_path, reference_path

TINY = ["tiny-llama-q4_k_m.gguf", "tiny-llama-q8_0.gguf", "tiny-qwen2-q4_k_m.gguf", "tiny-qwen3-q4_k_m.gguf"]
PROMPT = [2, 818, 5279, 529, 1032, 7, 99, 1000, 4, 17]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "smallmind", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def logits(path):
    model = Model.load(path, n_ctx=64, n_slots=1, max_batch_tokens=16)
    n = len(PROMPT)
    out = model.forward(
        np.array(PROMPT, np.int32),
        np.zeros(n, np.int32),
        np.arange(n, dtype=np.int32),
        np.arange(n, dtype=np.int32),
    )
    model.close()
    return out


def same_value(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).dtype == np.asarray(b).dtype
    return a == b and type(a) is type(b)


def assert_round_trip(src, tmp_path):
    smq, back = tmp_path / "m.smq", tmp_path / "back.gguf"
    convert(src, smq)
    convert(smq, back)
    with GGUFFile(src) as a, GGUFFile(back) as b:
        assert list(a.tensors) == list(b.tensors)
        for name, info in a.tensors.items():
            assert (info.type, info.ne) == (b.tensors[name].type, b.tensors[name].ne)
            assert np.array_equal(a.tensor_bytes(name), b.tensor_bytes(name)), name
        keys = [k for k in a.metadata if k != "general.alignment"]
        assert keys == list(b.metadata)
        for key in keys:
            assert a.metadata_types[key] == b.metadata_types[key], key
            assert same_value(a.metadata[key], b.metadata[key]), key
    reference = logits(src)
    np.testing.assert_array_equal(logits(smq), reference)
    np.testing.assert_array_equal(logits(back), reference)
    return smq


# ---------------------------------------------------------------------------------------
# lossless
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_gguf_round_trip_is_bit_identical(name, tmp_path):
    smq = assert_round_trip(reference_path("tiny", name), tmp_path)
    with SMQFile(smq) as f:
        schemes = {e.scheme for e in f.entries.values()}
        if "q8_0" in name:  # SMQ's own scheme, block 32, rebuilt into GGUF blocks at load
            assert schemes == {Scheme.F32, Scheme.Q8_0}
            assert {e.block_size for e in f.entries.values() if e.scheme == Scheme.Q8_0} == {32}
            assert {i.type_name for i in f.tensors.values()} == {"F32", "Q8_0"}
        else:
            assert schemes == {Scheme.F32, GGUF_SCHEME_BASE + 12, GGUF_SCHEME_BASE + 14}
            # extension blobs start 32-aligned and are served without a copy
            view = f.tensor("blk.0.attn_q.weight")
            assert np.shares_memory(view, np.frombuffer(f._mapping(), np.uint8))
    problems = smallmind_reader_problems(smq)
    if "q8_0" in name:
        assert problems == []
    else:  # SmallMind cannot read the extension, and the check says so
        assert len(problems) == 16 and "GGUF:Q4_K" in " ".join(problems)


def test_default_model_round_trip_is_bit_identical(tmp_path):
    smq = assert_round_trip(default_model_path(), tmp_path)
    with SMQFile(smq) as f:
        stored = {e.scheme_name for e in f.entries.values()}
    assert stored == {"F32", "Q8_0", "GGUF:Q5_0", "GGUF:Q4_K", "GGUF:Q6_K"}


def test_q4_0_converts_to_smq_signed_nibbles_and_back(tmp_path):
    """GGUF Q4_0 (nibble + 8, halves of a block in low/high nibbles) <-> SMQ Q4_0."""
    from smallmind import _kernels
    from smallmind.gguf import GGMLType
    from smallmind.gguf_writer import write_gguf

    rng = np.random.default_rng(0)
    n_rows, n_cols = 3, 64
    blocks = np.zeros((n_rows * n_cols // 32, 18), np.uint8)
    blocks[:, :2] = rng.uniform(0.01, 1, len(blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    blocks[:, 2:] = rng.integers(0, 256, (len(blocks), 16))
    src = tmp_path / "q4.gguf"
    write_gguf(src, {"general.architecture": "test"}, {"w": (GGMLType.Q4_0, (n_cols, n_rows), blocks)})
    convert(src, tmp_path / "q4.smq")
    with SMQFile(tmp_path / "q4.smq") as f:
        e = f.entries["w"]
        assert (e.scheme, e.block_size, e.dims) == (Scheme.Q4_0, 32, (n_cols, n_rows))
        want = _kernels.dequantize(blocks, GGMLType.Q4_0, n_cols).reshape(-1)
        assert np.array_equal(f.dequantized("w").view(np.uint32), want.view(np.uint32))
        assert np.array_equal(f.tensor("w").reshape(-1), blocks.reshape(-1))


# ---------------------------------------------------------------------------------------
# --smallmind-compatible
# ---------------------------------------------------------------------------------------


def test_quantizers_match_smallmind():
    expected = json.loads(reference_path("smq", "synthetic_all_schemes.expected.json").read_text())
    for t in expected["tensors"]:
        if t["scheme"] == "F32":
            continue
        source = np.array(t["source_bits"], np.uint32).view(np.float32)
        quantize = quantize_q8 if t["scheme"] == "Q8_0" else quantize_q4
        data, scales = quantize(source, t["block_size"])
        assert data.tolist() == t["quants" if t["scheme"] == "Q8_0" else "packed_bytes"], t["name"]
        assert scales.view(np.uint32).tolist() == t["scales_bits"], t["name"]


def convert_compatible(tmp_path, tiny_name):
    """(output path, CLI stdout) of `convert --smallmind-compatible` on a tiny model."""
    out = tmp_path / "c.smq"
    result = run_cli("convert", str(reference_path("tiny", tiny_name)), str(out), "--smallmind-compatible")
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.e2e  # runs `python -m smallmind`
def test_compatible_output_equals_smallminds_own_import(tmp_path):
    out, stdout = convert_compatible(tmp_path, "tiny-llama-q8_0.gguf")
    assert stdout.count("Q8_0 -> SMQ Q8_0/64") == 16
    with SMQFile(out) as ours, SMQFile(reference_path("smq", "tiny-llama-q8_0.smq")) as theirs:
        assert list(ours.entries) == list(theirs.entries)
        for name, a in ours.entries.items():
            b = theirs.entries[name]
            fields = ("scheme", "rank", "dims", "block_size", "data_length", "aux_length")
            assert [getattr(a, k) for k in fields] == [getattr(b, k) for k in fields], name
            for off_a, off_b, length in (
                (a.data_offset, b.data_offset, a.data_length),
                (a.aux_offset, b.aux_offset, a.aux_length),
            ):
                assert ours._blob(off_a, length).tobytes() == theirs._blob(off_b, length).tobytes(), name
        # back to back, as SmallMind packs them
        assert ours.file_size - ours.data_offset == theirs.file_size - theirs.data_offset
        for key, value in theirs.metadata.items():
            if key == "conversion_date":
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", ours.metadata[key])
            elif isinstance(value, float):  # SmallMind writes float32 in its shortest form
                assert np.float32(value) == np.float32(ours.metadata[key]), key
            else:
                assert same_value(ours.metadata[key], value) or np.array_equal(ours.metadata[key], value), key
    assert smallmind_reader_problems(out) == []


@pytest.mark.e2e  # runs `python -m smallmind`
def test_compatible_requantizes_k_quants_and_serves(tmp_path):
    out, stdout = convert_compatible(tmp_path, "tiny-qwen2-q4_k_m.gguf")
    assert stdout.count("Q4_K -> SMQ Q8_0/64") == 13
    assert stdout.count("Q6_K -> SMQ Q8_0/64") == 3
    with SMQFile(out) as f:
        assert {e.scheme for e in f.entries.values()} == {Scheme.F32, Scheme.Q8_0}
    # re-quantized 8-bit weights of a 4-bit model: the same greedy choice almost everywhere
    agree = logits(out).argmax(-1) == logits(reference_path("tiny", "tiny-qwen2-q4_k_m.gguf")).argmax(-1)
    assert agree.mean() >= 0.8


@pytest.mark.e2e  # runs `python -m smallmind`
def test_smallmind_smq_to_gguf(tmp_path):
    """SmallMind's own file -> GGUF: the same blocks, hence the same logits."""
    src = reference_path("smq", "tiny-llama-q8_0.smq")
    out = tmp_path / "from-smallmind.gguf"
    result = run_cli("convert", str(src), str(out))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(logits(out), logits(src))
    with GGUFFile(out) as g:
        assert "converted_from" not in g.metadata and g.metadata["general.architecture"] == "llama"


# ---------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------


def test_failed_write_leaves_the_old_output_and_no_temp_file(tmp_path):
    out = tmp_path / "keep.smq"
    out.write_bytes(b"old")
    bad = SMQTensor("w", Scheme.F32, (4,), 0, 16, 0, lambda: (np.zeros(3, np.float32), None))
    with pytest.raises(AssertionError):
        write_smq(out, {"a": 1}, [bad])
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.smq"]


def test_long_tensor_name_is_refused(tmp_path):
    t = SMQTensor("x" * 65, Scheme.F32, (4,), 0, 16, 0, lambda: (np.zeros(4, np.float32), None))
    with pytest.raises(ModelFormatError, match="64 bytes"):
        write_smq(tmp_path / "x.smq", None, [t])


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tiny}", "{tmp}/x.gguf"], "already GGUF"),
        (["{tiny}", "{tmp}/x.bin"], "must end in .smq or .gguf"),
        (["{tmp}/missing.gguf", "{tmp}/x.smq"], "not found"),
        (["{tmp}/bad.gguf", "{tmp}/x.smq"], "bad magic"),
        (["{tiny}", "{tmp}/no/such/dir/x.smq"], "cannot write"),
    ],
)
@pytest.mark.e2e  # runs `python -m smallmind`
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + bytes(64))
    tiny = str(reference_path("tiny", "tiny-llama-q8_0.gguf"))
    result = run_cli("convert", *[a.format(tiny=tiny, tmp=tmp_path) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not list(tmp_path.glob("**/.convert-*"))
