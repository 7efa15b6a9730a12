"""Reader for SmallMind's own ``.smq`` model files (SMQv0001), presented the way
:class:`smallmind.gguf.GGUFFile` presents a GGUF, so the engine, tokenizer and registry
need no second path.

Layout (little-endian, see ../shared/reference/smq/FORMAT.md for the C# sources)::

    header 32 B: b"SMQv0001" | version u32 = 1 | header size u32 = 32 | tensor count u32
                 | metadata JSON length u32 | reserved u64
    metadata JSON (UTF-8, M bytes, none when M = 0)
    directory: N x 156 B (name 64 B NUL-padded | scheme u32 | rank i32 | dims 8 x i32
               | block size u32 | data offset u64 | data length u64 | aux offset u64
               | aux length u64 | reserved 16 B)
    blobs (offsets absolute; SmallMind packs them back to back, our writer pads to 32)

Schemes SmallMind writes: F32 (1); Q8_0 (10): one int8 per element, then float32 scales,
one per ``block size`` consecutive elements; Q4_0 (11): signed nibbles packed in element
order (element 2k low, 2k+1 high), then float32 scales.  Dims are GGUF's ``ne`` order.

Extension (ours, scheme ids SmallMind never uses): ``GGUF_SCHEME_BASE + t`` holds the
blocks of ggml type ``t`` exactly as a GGUF stores them (no aux), so K-quants, Q5_0, F16 and
BF16 convert without loss.  SmallMind's own reader refuses these ids.

How tensors reach the kernels (the C kernels read GGUF's block layouts only):

* F32 and extension blobs: zero-copy views of the mapping when the blob starts at a
  multiple of 32 (as GGUF data does), else one aligned copy.
* Q8_0/Q4_0 whose block size is a multiple of 32, whose rows are whole 32-blocks and whose
  scales are all exactly representable in float16 (every .smq converted from a GGUF Q8_0 or
  Q4_0): rebuilt at load time into GGUF Q8_0/Q4_0 blocks, bit for bit the GGUF's, so they
  run through the same kernels and give the same logits.
* Any other Q8_0/Q4_0 (SmallMind's own float32 scales, block 64): dequantized exactly to
  float32 (q x scale in float32, SmallMind's own arithmetic) and served as F32.  Exact, but
  four times the memory of the quants; running them quantized needs a kernel for a float32
  scale, which the C kernels do not have.

Metadata: the JSON object's keys, with arrays turned into numpy arrays as GGUFFile does.
Our writer records each key's GGUF value type under ``smallmind.gguf_types`` so numbers
come back with their exact types; SmallMind's files lack it and get types by inference.

Every problem with the file's contents raises :class:`ModelFormatError`; a missing file
raises ``FileNotFoundError``."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelFormatError
from .gguf import GGML_BLOCK_SIZES, GGML_TYPE_NAMES, GGMLType, GGUFValueType, MappedModelFile, TensorInfo

__all__ = [
    "SMQFile",
    "SMQEntry",
    "Scheme",
    "SMQ_MAGIC",
    "HEADER",
    "ENTRY",
    "GGUF_SCHEME_BASE",
    "TYPES_KEY",
    "scheme_name",
]

SMQ_MAGIC = b"SMQv0001"
SMQ_VERSION = 1
HEADER = struct.Struct("<8sIIIIQ")  # 32 bytes
ENTRY = struct.Struct("<64sIi8iIQQQQ16s")  # 156 bytes
MAX_RANK = 8
NAME_BYTES = 64
GGUF_SCHEME_BASE = 0x1000  # extension: scheme GGUF_SCHEME_BASE + ggml type id
TYPES_KEY = "smallmind.gguf_types"
ALIGN = 32  # blob start that allows zero-copy views
assert HEADER.size == 32 and ENTRY.size == 156


class Scheme:
    """SmallMind's QuantScheme codes (Tensors/QuantScheme.cs)."""

    F32 = 1
    F16 = 2
    Q8_0 = 10
    Q4_0 = 11
    Q4_1 = 12
    Q5_0 = 13
    Q4_K = 20
    Q6_K = 21


_SCHEME_NAMES = {v: k for k, v in vars(Scheme).items() if not k.startswith("_")}


def scheme_name(scheme: int) -> str:
    if scheme >= GGUF_SCHEME_BASE and scheme - GGUF_SCHEME_BASE in GGML_TYPE_NAMES:
        return f"GGUF:{GGML_TYPE_NAMES[scheme - GGUF_SCHEME_BASE]}"
    return _SCHEME_NAMES.get(scheme, str(scheme))


@dataclass(frozen=True)
class SMQEntry:
    """One directory entry as stored.  ``dims`` holds the first ``rank`` dims."""

    name: str
    scheme: int
    rank: int
    dims: tuple[int, ...]
    block_size: int
    data_offset: int
    data_length: int
    aux_offset: int
    aux_length: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def scheme_name(self) -> str:
        return scheme_name(self.scheme)


def _expected_lengths(e: SMQEntry) -> tuple[int, int]:
    """(data length, aux length) the scheme implies for the entry's element count."""
    n = e.n_elements
    if e.scheme == Scheme.F32:
        return 4 * n, 0
    if e.scheme in (Scheme.Q8_0, Scheme.Q4_0):
        n_scales = -(-n // e.block_size)
        return (n if e.scheme == Scheme.Q8_0 else -(-n // 2)), 4 * n_scales
    block, size = GGML_BLOCK_SIZES[e.scheme - GGUF_SCHEME_BASE]
    return n // block * size, 0


# ------------------------------------------------------------------ metadata decoding
_VT = GGUFValueType
_VT_NAMES = {v: k for k, v in vars(GGUFValueType).items() if not k.startswith("_")}
_VT_IDS = {k: v for v, k in _VT_NAMES.items()}
_NUMPY = {
    _VT.UINT8: "u1",
    _VT.INT8: "i1",
    _VT.UINT16: "u2",
    _VT.INT16: "i2",
    _VT.UINT32: "u4",
    _VT.INT32: "i4",
    _VT.FLOAT32: "f4",
    _VT.UINT64: "u8",
    _VT.INT64: "i8",
    _VT.FLOAT64: "f8",
}
# Types of the GGUF keys SmallMind's importer copies, for its files (which carry no types).
_KNOWN_ARRAY_TYPES = {"tokenizer.ggml.scores": _VT.FLOAT32, "tokenizer.ggml.token_type": _VT.INT32}


def _decode_typed(value: Any, vtype: Any) -> Any:
    """A JSON value back to what GGUFFile gives for a GGUF value of type ``vtype``."""
    if isinstance(vtype, list) and len(vtype) == 2 and vtype[0] == "ARRAY":
        elem = _VT_IDS.get(vtype[1])
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {type(value).__name__}")
        if elem in _NUMPY:
            return np.array(value, dtype=_NUMPY[elem])
        if elem == _VT.BOOL:
            return np.array([bool(v) for v in value], dtype=bool)
        return value
    vt = _VT_IDS.get(vtype)
    if vt in (_VT.FLOAT32, _VT.FLOAT64):
        return float(value)
    if vt == _VT.BOOL:
        return bool(value)
    if vt in _NUMPY:
        return int(value)
    return value


def _decode_inferred(key: str, value: Any) -> Any:
    """A JSON value without a recorded type: numeric and bool lists become numpy arrays."""
    if not isinstance(value, list) or not value:
        return value
    if key in _KNOWN_ARRAY_TYPES:
        return np.array(value, dtype=_NUMPY[_KNOWN_ARRAY_TYPES[key]])
    if all(isinstance(v, bool) for v in value):
        return np.array(value, dtype=bool)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if all(isinstance(v, int) for v in value):
            fits32 = all(-(1 << 31) <= v < 1 << 31 for v in value)
            return np.array(value, dtype=np.int32 if fits32 else np.int64)
        return np.array(value, dtype=np.float32)
    return value


def decode_metadata(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, metadata_types) from the parsed JSON object."""
    if not isinstance(obj, dict):
        raise ValueError(f"metadata JSON is a {type(obj).__name__}, not an object")
    types = obj.get(TYPES_KEY, {})
    if not isinstance(types, dict):
        raise ValueError(f"{TYPES_KEY} is not an object")
    meta, meta_types = {}, {}
    for key, value in obj.items():
        if key == TYPES_KEY:
            continue
        if key in types:
            meta[key] = _decode_typed(value, types[key])
            vt = types[key]
            meta_types[key] = (_VT.ARRAY, _VT_IDS.get(vt[1])) if isinstance(vt, list) else _VT_IDS.get(vt)
        else:
            meta[key] = _decode_inferred(key, value)
    return meta, meta_types


# ------------------------------------------------------------------ repacking
def _scales_fit_f16(scales: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        back = scales.astype(np.float16).astype(np.float32)
    return bool(np.array_equal(back.view(np.uint32), scales.view(np.uint32)))


def _block_scales(scales: np.ndarray, block_size: int, n: int) -> np.ndarray:
    """One float16 scale per 32 elements (block_size is a multiple of 32)."""
    return np.repeat(scales, block_size // 32)[: n // 32].astype(np.float16)


def q8_to_gguf(quants: np.ndarray, scales: np.ndarray, block_size: int) -> np.ndarray:
    """SMQ Q8_0 (int8 per element, f16-exact scales) -> GGUF Q8_0 blocks (nb, 34) uint8."""
    n = quants.size
    out = np.empty((n // 32, 34), np.uint8)
    out[:, :2] = _block_scales(scales, block_size, n).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = quants.view(np.uint8).reshape(-1, 32)
    return out


def unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    """SMQ Q4_0 packing -> the n raw 4-bit codes (element 2k low nibble, 2k+1 high)."""
    codes = np.empty((packed.size, 2), np.uint8)
    codes[:, 0] = packed & 15
    codes[:, 1] = packed >> 4
    return codes.reshape(-1)[:n]


def q4_to_gguf(packed: np.ndarray, scales: np.ndarray, block_size: int, n: int) -> np.ndarray:
    """SMQ Q4_0 (signed sequential nibbles, f16-exact scales) -> GGUF Q4_0 blocks (nb, 18):
    GGUF stores nibble + 8 (two's complement code XOR 8), elements 0-15 of a block in the low
    nibbles and 16-31 in the high ones."""
    unsigned = (unpack_nibbles(packed, n) ^ 8).reshape(-1, 32)
    out = np.empty((n // 32, 18), np.uint8)
    out[:, :2] = _block_scales(scales, block_size, n).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = unsigned[:, :16] | (unsigned[:, 16:] << 4)
    return out


def dequantize(values: np.ndarray, scales: np.ndarray, block_size: int) -> np.ndarray:
    """x[i] = q[i] * scale[i // block_size], the product in float32 (SmallMind's Dequantize)."""
    n = values.size
    return values.astype(np.float32) * np.repeat(scales, block_size)[:n]


def signed_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    return (unpack_nibbles(packed, n) ^ 8).astype(np.int8) - np.int8(8)


class SMQFile(MappedModelFile):
    """An .smq file opened read-only via mmap, with GGUFFile's interface: ``path``,
    ``metadata``, ``metadata_types``, ``tensors`` (name -> TensorInfo in the ggml type the
    kernels get, see the module docstring), ``tensor()``, ``tensor_bytes()``, ``close()``.
    Also ``entries`` (name -> SMQEntry as stored) and ``file_size``."""

    format = "smq"

    def __init__(self, path: str | os.PathLike[str]):
        self.entries: dict[str, SMQEntry] = {}
        super().__init__(path, HEADER.size, "SMQ")

    def _fail(self, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {msg}")

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        magic, version, header_size, n_tensors, meta_len, _ = HEADER.unpack_from(self._mapping(), 0)
        if magic != SMQ_MAGIC:
            raise self._fail(f"bad magic {magic!r}, not an SMQ file (expected {SMQ_MAGIC!r})")
        if version != SMQ_VERSION or header_size != HEADER.size:
            raise self._fail(
                f"unsupported SMQ version {version} / header size {header_size} "
                f"(supported: version {SMQ_VERSION}, header {HEADER.size})"
            )
        self.version = version
        if meta_len > self.file_size - HEADER.size:
            raise self._fail(f"metadata length {meta_len} runs past end of file ({self.file_size} bytes)")
        dir_start = HEADER.size + meta_len
        if n_tensors > (self.file_size - dir_start) // ENTRY.size:
            raise self._fail(
                f"tensor count {n_tensors} does not fit in the "
                f"{self.file_size - dir_start} bytes after the metadata"
            )
        if meta_len:
            obj = json.loads(self._mapping()[HEADER.size : dir_start].decode("utf-8"))
            self.metadata, self.metadata_types = decode_metadata(obj)
        self.data_offset = dir_start + n_tensors * ENTRY.size
        for i in range(n_tensors):
            entry = self._read_entry(dir_start + i * ENTRY.size, i)
            if entry.name in self.entries:
                raise self._fail(f"duplicate tensor name {entry.name!r}")
            self.entries[entry.name] = entry
        self._check_no_overlap()
        for entry in self.entries.values():
            self.tensors[entry.name] = self._present(entry)

    def _read_entry(self, pos: int, index: int) -> SMQEntry:
        (raw_name, scheme, rank, *all_dims, block, d_off, d_len, a_off, a_len, _) = ENTRY.unpack_from(
            self._mapping(), pos
        )
        name = raw_name.split(b"\0", 1)[0].decode("utf-8")
        what = f"tensor #{index} ({name!r})"
        if (
            scheme not in (Scheme.F32, Scheme.Q8_0, Scheme.Q4_0)
            and scheme - GGUF_SCHEME_BASE not in GGML_BLOCK_SIZES
        ):
            raise self._fail(
                f"{what} has unsupported scheme {scheme_name(scheme)} "
                "(readable: F32, Q8_0, Q4_0 and this project's GGUF-block extension)"
            )
        if not 1 <= rank <= MAX_RANK:
            raise self._fail(f"{what} has rank {rank} (must be 1..{MAX_RANK})")
        dims = tuple(all_dims[:rank])
        if any(d <= 0 for d in dims):
            raise self._fail(f"{what} has a dimension <= 0: {list(dims)}")
        entry = SMQEntry(name, scheme, rank, dims, block, d_off, d_len, a_off, a_len)
        # bound the element count before any size arithmetic depends on it
        if entry.n_elements > 8 * self.file_size:
            raise self._fail(f"{what} dims {list(dims)} are absurd for a {self.file_size}-byte file")
        if scheme in (Scheme.Q8_0, Scheme.Q4_0):
            if rank != 2:
                raise self._fail(f"{what}: {scheme_name(scheme)} tensors have rank 2, got {rank}")
            if block == 0:
                raise self._fail(f"{what}: {scheme_name(scheme)} block size is 0")
        elif scheme >= GGUF_SCHEME_BASE:
            gblock = GGML_BLOCK_SIZES[scheme - GGUF_SCHEME_BASE][0]
            if dims[0] % gblock:
                raise self._fail(
                    f"{what}: row length {dims[0]} is not a multiple of the "
                    f"{scheme_name(scheme)} block size {gblock}"
                )
        want = _expected_lengths(entry)
        if (d_len, a_len) != want:
            raise self._fail(
                f"{what}: data/aux lengths {d_len}/{a_len}, expected "
                f"{want[0]}/{want[1]} for {scheme_name(scheme)} {list(dims)}"
            )
        for off, length, kind in ((d_off, d_len, "data"), (a_off, a_len, "aux")):
            if length and not self.data_offset <= off <= self.file_size - length:
                raise self._fail(
                    f"{what} {kind} [{off}, {off + length}) lies outside the "
                    f"blob area [{self.data_offset}, {self.file_size})"
                )
        return entry

    def _check_no_overlap(self) -> None:
        regions = sorted(
            (off, off + length, e.name)
            for e in self.entries.values()
            for off, length in ((e.data_offset, e.data_length), (e.aux_offset, e.aux_length))
            if length
        )
        for (_, end, name), (start, _, other) in zip(regions, regions[1:]):
            if start < end:
                raise self._fail(f"blobs of tensors {name!r} and {other!r} overlap")

    def _present(self, e: SMQEntry) -> TensorInfo:
        """The TensorInfo the engine sees: ggml type and ne of what tensor() returns."""
        n = e.n_elements
        ne = e.dims
        if e.scheme in (Scheme.Q8_0, Scheme.Q4_0):
            # SmallMind stores a 1-D quantized tensor as [1, n]
            ne = (e.dims[1],) if e.dims[0] == 1 else e.dims
            ttype = self._quant_served_type(e, ne[0])
        elif e.scheme == Scheme.F32:
            ttype = GGMLType.F32
        else:
            ttype = e.scheme - GGUF_SCHEME_BASE
        block, size = GGML_BLOCK_SIZES[ttype]
        return TensorInfo(
            name=e.name,
            type=ttype,
            type_name=GGML_TYPE_NAMES[ttype],
            ne=tuple(ne),
            shape=tuple(reversed(ne)),
            n_elements=n,
            n_bytes=n // block * size,
            offset=e.data_offset,
        )

    def _quant_served_type(self, e: SMQEntry, row_len: int) -> int:
        """GGUF Q8_0/Q4_0 when the blocks convert exactly, else F32 (exact dequantization)."""
        if e.block_size % 32 or row_len % 32 or not _scales_fit_f16(self._scales(e)):
            return GGMLType.F32
        return GGMLType.Q8_0 if e.scheme == Scheme.Q8_0 else GGMLType.Q4_0

    # ------------------------------------------------------------------ access
    def _blob(self, offset: int, length: int, dtype: Any = np.uint8) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self._mapping(), dtype=dtype, count=length // dtype.itemsize, offset=offset)

    def _scales(self, e: SMQEntry) -> np.ndarray:
        return self._blob(e.aux_offset, e.aux_length, "<f4")

    def quants(self, name: str) -> np.ndarray:
        """The stored quant values of a Q8_0/Q4_0 tensor as int8, one per element."""
        e = self.entries[name]
        if e.scheme == Scheme.Q8_0:
            return self._blob(e.data_offset, e.data_length, np.int8)
        return signed_nibbles(self._blob(e.data_offset, e.data_length), e.n_elements)

    def dequantized(self, name: str) -> np.ndarray:
        """Flat float32 values of any SmallMind-scheme tensor, as SmallMind's Dequantize()."""
        e = self.entries[name]
        if e.scheme == Scheme.F32:
            return self._blob(e.data_offset, e.data_length, "<f4").copy()
        if e.scheme not in (Scheme.Q8_0, Scheme.Q4_0):
            raise ValueError(f"tensor {name!r} is {e.scheme_name}, not an SMQ scheme")
        return dequantize(self.quants(name), self._scales(e), e.block_size)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Flat uint8 bytes of the tensor in its presented GGUF layout."""
        return self.tensor(name).view(np.uint8).reshape(-1)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as GGUFFile.tensor would give it for the presented type: float32 with
        ``shape``, or uint8 blocks of shape (n_rows, row_bytes).  A view of the mapping for
        F32/extension blobs at 32-aligned offsets; a new array otherwise."""
        info, e = self.tensors[name], self.entries[name]
        if e.scheme in (Scheme.Q8_0, Scheme.Q4_0):
            scales = self._scales(e)
            raw = self._blob(e.data_offset, e.data_length)
            if info.type == GGMLType.Q8_0:
                blocks = q8_to_gguf(raw.view(np.int8), scales, e.block_size)
            elif info.type == GGMLType.Q4_0:
                blocks = q4_to_gguf(raw, scales, e.block_size, info.n_elements)
            else:
                return self.dequantized(name).reshape(info.shape)
            return blocks.reshape(info.n_rows, info.row_bytes)
        view = self._blob(e.data_offset, e.data_length)
        if e.data_offset % ALIGN:
            view = view.copy()
        if info.type == GGMLType.F32:
            return view.view("<f4").reshape(info.shape)
        if info.type in (GGMLType.F16, GGMLType.BF16):
            return view.view("<f2" if info.type == GGMLType.F16 else "<u2").reshape(info.shape)
        return view.reshape(info.n_rows, info.row_bytes)

    def __repr__(self) -> str:
        return f"SMQFile({self.path!r}, tensors={len(self.tensors)}, kv={len(self.metadata)})"
