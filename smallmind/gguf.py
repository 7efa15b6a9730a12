"""Reader for GGUF v2/v3 model files (the writer is smallmind.gguf_writer).

Pure Python + numpy.  The file is memory-mapped read-only; tensor data is exposed as
zero-copy numpy views over the mapping.

Layout (little-endian)::

    magic b"GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x  (key: string, value_type: u32, value)
    tensor_count x (name: string, n_dims: u32, ne: u64 * n_dims, type: u32, offset: u64)
    padding to `general.alignment` (default 32)
    tensor data (each tensor's offset is relative to the start of this section)

    string = u64 length + bytes;  array = elem_type u32 + count u64 + elements

Decoded metadata values:

* integer scalars -> ``int``; float32/float64 -> ``float``; bool -> ``bool``;
* strings -> ``str`` decoded as UTF-8 with ``errors="surrogateescape"`` (invalid bytes
  survive as lone surrogates; ``s.encode("utf-8", "surrogateescape")`` restores them);
* arrays of numbers or bools -> a 1-D numpy array (a private copy in native byte order,
  independent of the mapping); arrays of strings -> ``list[str]``; arrays of arrays ->
  ``list`` of the decoded inner arrays.

Errors: every problem with the file's contents raises
:class:`smallmind.errors.ModelFormatError` naming the problem.  A missing file raises the
usual ``FileNotFoundError`` (an ``OSError``), not ``ModelFormatError``.

``close()`` releases the mapping.  If tensor views are still alive the mapping cannot be
unmapped yet; ``close()`` then only drops the reader's reference and the mapping is
released when the last view is garbage-collected (views stay valid until then).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelFormatError

__all__ = [
    "GGUFFile",
    "TensorInfo",
    "GGMLType",
    "GGUFValueType",
    "GGML_TYPE_NAMES",
    "GGML_BLOCK_SIZES",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_ARRAY_DEPTH = 8
MAX_DIMS = 4
_HEADER_SIZE = 24


class GGUFValueType:
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


VT = GGUFValueType

# value type id -> (struct format, numpy little-endian dtype, size)
_SCALARS: dict[int, tuple[struct.Struct, np.dtype, int]] = {
    t: (struct.Struct("<" + f), np.dtype(d), struct.calcsize("<" + f))
    for t, f, d in [
        (VT.UINT8, "B", "<u1"),
        (VT.INT8, "b", "<i1"),
        (VT.UINT16, "H", "<u2"),
        (VT.INT16, "h", "<i2"),
        (VT.UINT32, "I", "<u4"),
        (VT.INT32, "i", "<i4"),
        (VT.FLOAT32, "f", "<f4"),
        (VT.BOOL, "B", "<u1"),
        (VT.UINT64, "Q", "<u8"),
        (VT.INT64, "q", "<i8"),
        (VT.FLOAT64, "d", "<f8"),
    ]
}
_VALUE_TYPE_NAMES = {
    v: k for k, v in vars(GGUFValueType).items() if not k.startswith("_") and isinstance(v, int)
}
# Smallest encoded size of one value of each type (bounds counts before looping).
_MIN_SIZE = {t: s for t, (_, _, s) in _SCALARS.items()}
_MIN_SIZE[VT.STRING] = 8
_MIN_SIZE[VT.ARRAY] = 12

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")


class GGMLType:
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30


# ggml type id -> (block size in elements, bytes per block)
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.BF16: (1, 2),
}
GGML_TYPE_NAMES: dict[int, str] = {
    v: k for k, v in vars(GGMLType).items() if not k.startswith("_") and isinstance(v, int)
}
# numpy dtype of tensor views for the non-quantized types (BF16 -> raw uint16 bits)
_TENSOR_DTYPES: dict[int, np.dtype] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.BF16: np.dtype("<u2"),
    GGMLType.I8: np.dtype("i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
    GGMLType.F64: np.dtype("<f8"),
}

_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's descriptor.  ``ne`` is in ggml order (``ne[0]`` = row length);
    ``shape`` is numpy order (reversed ``ne``); ``offset`` is the absolute file offset."""

    name: str
    type: int
    type_name: str
    ne: tuple[int, ...]
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    offset: int

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.ne[0] if self.ne[0] else 0

    @property
    def row_bytes(self) -> int:
        block, size = GGML_BLOCK_SIZES[self.type]
        return self.ne[0] // block * size


class MappedModelFile:
    """What GGUFFile and smq.SMQFile share: a read-only mapping (``_mm``), ``metadata``, and
    the mapping's life cycle."""

    def __init__(self, path: str | os.PathLike[str], header_size: int, kind: str):
        """Maps the file and calls ``self._parse()``; any decoding error becomes a one-line
        ModelFormatError naming the file (FileNotFoundError propagates as-is)."""
        self.path = os.fspath(path)
        self._mm: mmap.mmap | None = None
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        with open(self.path, "rb") as f:
            self.file_size = os.fstat(f.fileno()).st_size
            if self.file_size < header_size:
                raise ModelFormatError(
                    f"{self.path}: file too short for the {kind} header "
                    f"({self.file_size} bytes, need at least {header_size})"
                )
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse()
        except ModelFormatError:
            self.close()
            raise
        except (
            struct.error,
            ValueError,
            UnicodeError,
            OverflowError,
            IndexError,
            TypeError,
            RecursionError,
            MemoryError,
        ) as e:
            self.close()
            raise ModelFormatError(f"{self.path}: malformed {kind} file: {e}") from e

    def _parse(self) -> None:
        raise NotImplementedError

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def _mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError(f"{type(self).__name__} {self.path} is closed")
        return self._mm

    def close(self) -> None:
        """Release the mapping.  If views are alive, unmapping is deferred until the last
        view is garbage-collected; the views remain valid."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # views still export the buffer; dropped ref -> unmapped on their GC

    @property
    def closed(self) -> bool:
        return self._mm is None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GGUFFile(MappedModelFile):
    """A GGUF file opened read-only via mmap.  Use as a context manager or call close().

    Attributes: ``path``, ``version``, ``metadata`` (key -> decoded value, file order),
    ``metadata_types`` (key -> value type id; for arrays ``(9, element_type_id)``),
    ``tensors`` (name -> :class:`TensorInfo`, file order), ``alignment``, ``data_offset``,
    ``file_size``.
    """

    format = "gguf"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path, _HEADER_SIZE, "GGUF")  # FileNotFoundError propagates as-is

    # ------------------------------------------------------------------ parsing
    def _fail(self, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {msg}")

    def _need(self, pos: int, n: int, what: str) -> None:
        if n > self.file_size - pos:
            raise self._fail(
                f"unexpected end of file reading {what} at offset {pos} "
                f"(need {n} bytes, {max(self.file_size - pos, 0)} left)"
            )

    def _read_string(self, pos: int, what: str) -> tuple[str, int]:
        self._need(pos, 8, what + " length")
        (n,) = _U64.unpack_from(self._mapping(), pos)
        pos += 8
        if n > self.file_size - pos:
            raise self._fail(f"{what} length {n} at offset {pos - 8} runs past end of file")
        return self._mapping()[pos : pos + n].decode("utf-8", "surrogateescape"), pos + n

    def _read_value(self, vtype: int, pos: int, what: str, depth: int = 0) -> tuple[Any, int]:
        mm = self._mapping()
        sc = _SCALARS.get(vtype)
        if sc is not None:
            self._need(pos, sc[2], what)
            (v,) = sc[0].unpack_from(mm, pos)
            return (bool(v) if vtype == VT.BOOL else v), pos + sc[2]
        if vtype == VT.STRING:
            return self._read_string(pos, what)
        if vtype != VT.ARRAY:
            raise self._fail(f"unknown metadata value type {vtype} for {what}")
        if depth >= MAX_ARRAY_DEPTH:
            raise self._fail(f"array nesting deeper than {MAX_ARRAY_DEPTH} levels in {what}")
        self._need(pos, 12, what + " array header")
        (etype,) = _U32.unpack_from(mm, pos)
        (count,) = _U64.unpack_from(mm, pos + 4)
        pos += 12
        if etype not in _MIN_SIZE:
            raise self._fail(f"unknown metadata value type {etype} in array {what}")
        left = self.file_size - pos
        if count > left // _MIN_SIZE[etype]:
            raise self._fail(f"array {what} count {count} does not fit in the {left} bytes left in the file")
        sc = _SCALARS.get(etype)
        if sc is not None:
            arr = np.frombuffer(mm, dtype=sc[1], count=count, offset=pos)
            out = (arr != 0) if etype == VT.BOOL else arr.astype(sc[1].newbyteorder("="))
            del arr  # release the buffer export on the mmap
            return out, pos + count * sc[2]
        if etype == VT.STRING:
            size = self.file_size
            unpack = _U64.unpack_from
            strings: list[str] = []
            append = strings.append
            for _ in range(count):
                if pos + 8 > size:
                    raise self._fail(f"unexpected end of file in string array {what}")
                (n,) = unpack(mm, pos)
                pos += 8
                if n > size - pos:
                    raise self._fail(f"string length {n} in array {what} runs past end of file")
                append(mm[pos : pos + n].decode("utf-8", "surrogateescape"))
                pos += n
            return strings, pos
        items = []
        for i in range(count):
            v, pos = self._read_value(VT.ARRAY, pos, f"{what}[{i}]", depth + 1)
            items.append(v)
        return items, pos

    def _parse(self) -> None:
        mm = self._mapping()
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(mm, 0)
        if magic != GGUF_MAGIC:
            raise self._fail(f"bad magic {magic!r}, not a GGUF file (expected b'GGUF')")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in (1, 2, 3):
                raise self._fail(
                    f"big-endian GGUF (version {swapped} byte-swapped, read as {version}) is not supported"
                )
            raise self._fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        pos = _HEADER_SIZE
        left = self.file_size - pos
        # each kv is at least: key length (8) + value type (4) + 1 byte of value
        if n_kv > left // 13:
            raise self._fail(f"absurd metadata kv_count {n_kv} for a {self.file_size}-byte file")
        # each tensor info is at least: name length (8) + n_dims (4) + 1 dim (8) + type (4)
        # + offset (8)
        if n_tensors > left // 32:
            raise self._fail(f"absurd tensor_count {n_tensors} for a {self.file_size}-byte file")

        for i in range(n_kv):
            key, pos = self._read_string(pos, f"metadata key #{i}")
            self._need(pos, 4, f"value type of {key!r}")
            (vtype,) = _U32.unpack_from(mm, pos)
            pos += 4
            if key in self.metadata:
                raise self._fail(f"duplicate metadata key {key!r}")
            if vtype == VT.ARRAY:
                self._need(pos, 4, f"array element type of {key!r}")
                self.metadata_types[key] = (VT.ARRAY, _U32.unpack_from(mm, pos)[0])
            else:
                self.metadata_types[key] = vtype
            self.metadata[key], pos = self._read_value(vtype, pos, repr(key))

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(align, bool) or not isinstance(align, int):
            raise self._fail(f"general.alignment must be an integer, got {align!r}")
        if align <= 0 or align & (align - 1):
            raise self._fail(f"general.alignment {align} is not a power of two")
        self.alignment = align

        if n_tensors > (self.file_size - pos) // 32:
            raise self._fail(
                f"absurd tensor_count {n_tensors}: tensor infos cannot fit in "
                f"the {self.file_size - pos} bytes left"
            )
        raw = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name, pos = self._read_string(pos, f"tensor #{i} name")
            self._need(pos, 4, f"n_dims of tensor {name!r}")
            (n_dims,) = _U32.unpack_from(mm, pos)
            pos += 4
            if n_dims == 0 or n_dims > MAX_DIMS:
                raise self._fail(f"tensor {name!r} has invalid n_dims {n_dims} (must be 1..{MAX_DIMS})")
            self._need(pos, 8 * n_dims + 12, f"dims/type/offset of tensor {name!r}")
            ne = struct.unpack_from(f"<{n_dims}Q", mm, pos)
            pos += 8 * n_dims
            ttype, rel = struct.unpack_from("<IQ", mm, pos)
            pos += 12
            if name in seen:
                raise self._fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            raw.append((name, ne, ttype, rel))

        self.data_offset = -(-pos // align) * align
        for name, ne, ttype, rel in raw:
            self.tensors[name] = self._make_info(name, ne, ttype, rel)

    def _make_info(self, name: str, ne: tuple[int, ...], ttype: int, rel: int) -> TensorInfo:
        if ttype not in GGML_BLOCK_SIZES:
            raise self._fail(f"tensor {name!r} has unknown/unsupported ggml type id {ttype}")
        n = 1
        for d in ne:
            if d > _INT64_MAX:
                raise self._fail(f"tensor {name!r} dimension {d} overflows int64")
            n *= d
            if n > _INT64_MAX:
                raise self._fail(
                    f"tensor {name!r} dims {list(ne)} overflow: element count does not fit in int64"
                )
        block, bsize = GGML_BLOCK_SIZES[ttype]
        if ne[0] % block:
            raise self._fail(
                f"tensor {name!r} row length ne[0]={ne[0]} is not a multiple of "
                f"the {GGML_TYPE_NAMES[ttype]} block size {block}"
            )
        n_bytes = n // block * bsize
        if n_bytes > self.file_size:
            raise self._fail(
                f"tensor {name!r} dims {list(ne)} are absurd: {n_bytes} bytes of "
                f"data, more than the whole {self.file_size}-byte file"
            )
        if rel % self.alignment:
            raise self._fail(
                f"tensor {name!r} offset {rel} is not a multiple of the alignment {self.alignment}"
            )
        off = self.data_offset + rel
        if off + n_bytes > self.file_size:
            raise self._fail(
                f"tensor {name!r} data [{off}, {off + n_bytes}) runs past end of "
                f"file ({self.file_size} bytes)"
            )
        return TensorInfo(
            name=name,
            type=ttype,
            type_name=GGML_TYPE_NAMES[ttype],
            ne=tuple(ne),
            shape=tuple(reversed(ne)),
            n_elements=n,
            n_bytes=n_bytes,
            offset=off,
        )

    # ------------------------------------------------------------------ access
    def tensor_bytes(self, name: str) -> np.ndarray:
        """Flat read-only uint8 view (zero-copy) of the tensor's raw data."""
        info = self.tensors[name]
        return np.frombuffer(self._mapping(), dtype=np.uint8, count=info.n_bytes, offset=info.offset)

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy read-only view of a tensor.  F32/F16/F64/I* -> their dtype with
        ``shape``; BF16 -> uint16 raw bits with ``shape``; quantized types -> uint8 of shape
        ``(n_rows, row_bytes)``."""
        info = self.tensors[name]
        mm = self._mapping()
        dt = _TENSOR_DTYPES.get(info.type)
        if dt is not None:
            return np.frombuffer(mm, dtype=dt, count=info.n_elements, offset=info.offset).reshape(info.shape)
        return np.frombuffer(mm, dtype=np.uint8, count=info.n_bytes, offset=info.offset).reshape(
            info.n_rows, info.row_bytes
        )

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, version={getattr(self, 'version', None)}, "
            f"tensors={len(self.tensors)}, kv={len(self.metadata)})"
        )
