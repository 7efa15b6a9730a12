"""Tests for smallmind.gguf_writer: round trips through the writer and the reader (every value
and tensor type, versions 2 and 3, several alignments) and the input the writer refuses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from smallmind.gguf import (
    GGML_BLOCK_SIZES,
    GGML_TYPE_NAMES,
    GGMLType,
    GGUFFile,
    GGUFValueType as VT,
    TensorInfo,
)
from smallmind.gguf_writer import GGUFValue, write_gguf
from tests.ggml_dtypes import NP_DTYPES

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)


def _n_bytes(ttype, ne):
    block, size = GGML_BLOCK_SIZES[ttype]
    return int(np.prod(ne)) // block * size


def _mmap_base(arr):
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def _assert_zero_copy(gf, name, view, raw):
    assert view.flags.owndata is False
    assert view.flags.writeable is False
    assert _mmap_base(view) is gf._mm  # the base chain ends at the mmap: no copy
    assert np.shares_memory(view, gf.tensor_bytes(name))
    assert view.tobytes() == raw


# ----------------------------------------------------------------------------- round trip
def _all_types_metadata():
    """(metadata for the writer, {key: (expected type id, expected decoded value)})."""
    md, exp = {}, {}

    def add(key, value, vtype, expected):
        md[key] = value
        exp[key] = (vtype, expected)

    add("general.architecture", "llama", VT.STRING, "llama")
    add("t.u8", GGUFValue(VT.UINT8, 255), VT.UINT8, 255)
    add("t.i8", GGUFValue(VT.INT8, -128), VT.INT8, -128)
    add("t.u16", GGUFValue(VT.UINT16, 65535), VT.UINT16, 65535)
    add("t.i16", GGUFValue(VT.INT16, -32768), VT.INT16, -32768)
    add("t.u32", GGUFValue(VT.UINT32, 2**32 - 1), VT.UINT32, 2**32 - 1)
    add("t.i32", GGUFValue(VT.INT32, -(2**31)), VT.INT32, -(2**31))
    add("t.f32", GGUFValue(VT.FLOAT32, 0.1), VT.FLOAT32, float(np.float32(0.1)))
    add("t.bool_t", GGUFValue(VT.BOOL, True), VT.BOOL, True)
    add("t.bool_f", GGUFValue(VT.BOOL, False), VT.BOOL, False)
    add("t.str", GGUFValue(VT.STRING, "hello"), VT.STRING, "hello")
    add("t.u64", GGUFValue(VT.UINT64, 2**64 - 1), VT.UINT64, 2**64 - 1)
    add("t.i64", GGUFValue(VT.INT64, -(2**63)), VT.INT64, -(2**63))
    add("t.f64", GGUFValue(VT.FLOAT64, 1 / 3), VT.FLOAT64, 1 / 3)
    # inferred types
    add("i.bool", True, VT.BOOL, True)
    add("i.uint", 7, VT.UINT32, 7)
    add("i.neg", -7, VT.INT64, -7)
    add("i.big", 2**40, VT.INT64, 2**40)
    add("i.float", 1.5, VT.FLOAT32, 1.5)
    add("i.unicode", "héllo ▁wörld 🦙 日本", VT.STRING, "héllo ▁wörld 🦙 日本")
    add("i.empty_str", "", VT.STRING, "")
    bad = b"ok\xff\xfe\xc3(\x80end"  # invalid UTF-8 must survive via surrogateescape
    add("i.bad_utf8", bad, VT.STRING, bad.decode("utf-8", "surrogateescape"))
    # arrays of every element type
    for t, dt in [
        (VT.UINT8, np.uint8),
        (VT.INT8, np.int8),
        (VT.UINT16, np.uint16),
        (VT.INT16, np.int16),
        (VT.UINT32, np.uint32),
        (VT.INT32, np.int32),
        (VT.FLOAT32, np.float32),
        (VT.UINT64, np.uint64),
        (VT.INT64, np.int64),
        (VT.FLOAT64, np.float64),
    ]:
        info = np.iinfo(dt) if np.issubdtype(dt, np.integer) else np.finfo(dt)
        vals = np.array([info.min, 0, 1, info.max], dtype=dt)
        add(f"a.{np.dtype(dt).name}", GGUFValue(VT.ARRAY, vals.tolist(), t), (VT.ARRAY, t), vals)
    add("a.bool", [True, False, True], (VT.ARRAY, VT.BOOL), np.array([True, False, True]))
    add("a.inferred_ints", [1, 2, 3], (VT.ARRAY, VT.UINT32), np.array([1, 2, 3], np.uint32))
    add("a.inferred_mixed_ints", [1, -2], (VT.ARRAY, VT.INT64), np.array([1, -2], np.int64))
    add("a.numpy_f32", np.arange(5, dtype=np.float32), (VT.ARRAY, VT.FLOAT32), np.arange(5, dtype=np.float32))
    strs = ["a", "", "ü", "<0x0A>", b"\x80raw".decode("utf-8", "surrogateescape")]
    add("a.str", strs, (VT.ARRAY, VT.STRING), strs)
    add("a.empty_u32", [], (VT.ARRAY, VT.UINT32), np.array([], np.uint32))
    add("a.empty_str", GGUFValue(VT.ARRAY, [], VT.STRING), (VT.ARRAY, VT.STRING), [])
    add(
        "a.nested",
        [[1, 2], [3], []],
        (VT.ARRAY, VT.ARRAY),
        [np.array([1, 2], np.uint32), np.array([3], np.uint32), np.array([], np.uint32)],
    )
    add("a.nested_str", [["x", "y"], ["z"]], (VT.ARRAY, VT.ARRAY), [["x", "y"], ["z"]])
    add(
        "a.nested3",
        [[[1.5]], [[2.5, 3.5], []]],
        (VT.ARRAY, VT.ARRAY),
        [[np.array([1.5], np.float32)], [np.array([2.5, 3.5], np.float32), np.array([], np.uint32)]],
    )
    add("a.empty_nested", GGUFValue(VT.ARRAY, [], VT.ARRAY), (VT.ARRAY, VT.ARRAY), [])
    add("ключ.юникод", 1, VT.UINT32, 1)  # unicode key
    return md, exp


def _assert_value_equal(got, want):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), got
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        assert np.array_equal(got, want)
    elif isinstance(want, list):
        assert isinstance(got, list), got
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_value_equal(g, w)
    else:
        assert type(got) is type(want), (got, want)
        assert got == want


def _sample_tensors(rng):
    """One tensor of every supported type, with random bytes."""
    tensors = {}
    for ttype in GGML_BLOCK_SIZES:
        block = GGML_BLOCK_SIZES[ttype][0]
        ne = (block * 2, 3) if block > 1 else (5, 3, 2)
        raw = rng.integers(0, 256, _n_bytes(ttype, ne), dtype=np.uint8).tobytes()
        tensors[f"blk.{GGML_TYPE_NAMES[ttype].lower()}.weight"] = (ttype, ne, raw)
    tensors["one_d"] = (GGMLType.F32, (7,), np.arange(7, dtype=np.float32).tobytes())
    tensors["four_d"] = (GGMLType.F16, (2, 3, 4, 5), np.ones(120, np.float16).tobytes())
    return tensors


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("alignment", [32, 1, 64, 4096])
def test_round_trip(tmp_path, version, alignment):
    md, exp = _all_types_metadata()
    tensors = _sample_tensors(np.random.default_rng(version * 1000 + alignment))
    path = tmp_path / "rt.gguf"
    write_gguf(path, md, tensors, alignment=alignment, version=version)
    with GGUFFile(path) as gf:
        assert gf.version == version
        assert gf.alignment == alignment
        assert gf.file_size == path.stat().st_size
        assert gf.data_offset % alignment == 0
        assert gf.architecture == "llama"
        assert gf.get("missing.key", 42) == 42
        expected_keys = list(md) + (["general.alignment"] if alignment != 32 else [])
        assert list(gf.metadata) == expected_keys
        for key, (vtype, want) in exp.items():
            assert gf.metadata_types[key] == vtype, key
            _assert_value_equal(gf.get(key), want)
        assert gf.metadata["i.bad_utf8"].encode("utf-8", "surrogateescape") == md["i.bad_utf8"]
        if alignment != 32:
            assert gf.metadata_types["general.alignment"] == VT.UINT32

        assert list(gf.tensors) == list(tensors)  # file order
        for name, (ttype, ne, raw) in tensors.items():
            info = gf.tensors[name]
            assert isinstance(info, TensorInfo)
            assert info.name == name and info.type == ttype
            assert info.type_name == GGML_TYPE_NAMES[ttype]
            assert info.ne == ne and info.shape == tuple(reversed(ne))
            assert info.n_elements == int(np.prod(ne))
            assert info.n_bytes == len(raw)
            assert info.offset % alignment == 0 and info.offset >= gf.data_offset
            with pytest.raises(dataclasses.FrozenInstanceError):
                info.name = "x"  # frozen
            view = gf.tensor(name)
            if ttype in NP_DTYPES:
                assert view.dtype == NP_DTYPES[ttype]
                assert view.shape == info.shape
            else:
                assert view.dtype == np.uint8
                assert view.shape == (info.n_elements // ne[0], len(raw) // (info.n_elements // ne[0]))
            _assert_zero_copy(gf, name, view, raw)
            flat = gf.tensor_bytes(name)
            assert flat.dtype == np.uint8 and flat.shape == (len(raw),)
            assert flat.flags.owndata is False and _mmap_base(flat) is gf._mm
            assert np.shares_memory(flat, view)
            assert flat.tobytes() == raw
        assert np.array_equal(gf.tensor("one_d"), np.arange(7, dtype=np.float32))
        assert gf.tensor("four_d").shape == (5, 4, 3, 2)


def test_no_tensors_no_metadata(tmp_path):
    path = tmp_path / "empty.gguf"
    write_gguf(path, {}, {})
    with GGUFFile(path) as gf:
        assert gf.metadata == {} and gf.tensors == {}
        assert gf.architecture is None
        assert gf.alignment == 32


def test_zero_element_tensors(tmp_path):
    path = tmp_path / "z.gguf"
    write_gguf(path, {}, {"e": (GGMLType.F32, (0, 3), b""), "q": (GGMLType.Q4_0, (0,), b"")})
    with GGUFFile(path) as gf:
        assert gf.tensor("e").shape == (3, 0)
        assert gf.tensor("q").shape == (0, 0)
        assert gf.tensors["e"].n_bytes == 0 and gf.tensor_bytes("e").size == 0


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="bytes"):
        write_gguf(tmp_path / "x.gguf", {}, {"w": (GGMLType.F32, (4,), b"\0" * 15)})
    with pytest.raises(ValueError, match="block size"):
        write_gguf(tmp_path / "x.gguf", {}, {"w": (GGMLType.Q4_K, (32,), b"\0" * 18)})
    with pytest.raises(ValueError, match="power of two"):
        write_gguf(tmp_path / "x.gguf", {}, {}, alignment=48)
    with pytest.raises(ValueError, match="dims"):
        write_gguf(tmp_path / "x.gguf", {}, {"w": (GGMLType.F32, (1, 1, 1, 1, 1), b"\0" * 4)})
    with pytest.raises(ValueError, match="mixed"):
        write_gguf(tmp_path / "x.gguf", {"k": [1, "a"]}, {})
