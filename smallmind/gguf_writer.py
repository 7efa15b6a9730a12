"""Writer of GGUF v2/v3 files (the layout is described in :mod:`smallmind.gguf`): metadata
values typed explicitly (:class:`GGUFValue`) or inferred from Python/numpy values, tensors
aligned as the reader expects.  Used by the converter and by tests that build small models."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .gguf import (
    DEFAULT_ALIGNMENT,
    GGML_BLOCK_SIZES,
    GGUF_MAGIC,
    MAX_DIMS,
    _SCALARS,
    _U32,
    _U64,
    GGUFValueType as VT,
)

__all__ = ["GGUFValue", "write_gguf"]


@dataclass(frozen=True)
class GGUFValue:
    """Explicitly typed metadata value for :func:`write_gguf`.  For arrays, ``type`` is
    ``GGUFValueType.ARRAY`` and ``elem_type`` the element type id; elements of a nested
    array (``elem_type == ARRAY``) may be lists or ``GGUFValue``s."""

    type: int
    value: Any
    elem_type: int | None = None


def _infer(value: Any) -> GGUFValue:
    if isinstance(value, GGUFValue):
        return value
    if isinstance(value, (bool, np.bool_)):
        return GGUFValue(VT.BOOL, bool(value))
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if 0 <= v < 1 << 32:
            return GGUFValue(VT.UINT32, v)
        if -(1 << 63) <= v < 1 << 63:
            return GGUFValue(VT.INT64, v)
        return GGUFValue(VT.UINT64, v)
    if isinstance(value, (float, np.floating)):
        return GGUFValue(VT.FLOAT32, float(value))
    if isinstance(value, (str, bytes)):
        return GGUFValue(VT.STRING, value)
    if isinstance(value, np.ndarray):
        for t, (_, dt, _) in _SCALARS.items():
            if t != VT.BOOL and dt == value.dtype.newbyteorder("<"):
                return GGUFValue(VT.ARRAY, value, t)
        if value.dtype == np.bool_:
            return GGUFValue(VT.ARRAY, value, VT.BOOL)
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            return GGUFValue(VT.ARRAY, [], VT.UINT32)  # empty: arbitrary element type
        items = [_infer(v) for v in value]
        types = {i.type for i in items}
        if types <= {VT.UINT32, VT.INT64, VT.UINT64} and len(types) > 1:
            types = {VT.UINT64} if VT.UINT64 in types else {VT.INT64}
        if len(types) != 1:
            raise ValueError(f"mixed element types in array: {value!r}")
        return GGUFValue(VT.ARRAY, list(value), types.pop())
    raise TypeError(f"cannot infer a GGUF type for {type(value).__name__}: {value!r}")


def _pack_string(s: str | bytes) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
    return _U64.pack(len(b)) + b


def _pack_value(gv: GGUFValue) -> bytes:
    """Encodes the value (without its leading type id)."""
    t, v = gv.type, gv.value
    if t in _SCALARS:
        return _SCALARS[t][0].pack(int(bool(v)) if t == VT.BOOL else v)
    if t == VT.STRING:
        return _pack_string(v)
    if t != VT.ARRAY:
        raise ValueError(f"unknown GGUF value type {t}")
    et = gv.elem_type
    if et is None:
        et = _infer(v).elem_type
    head = _U32.pack(et) + _U64.pack(len(v))
    if et in _SCALARS:
        dt = _SCALARS[et][1]
        if isinstance(v, np.ndarray):
            return head + v.astype(dt).tobytes()
        return head + np.array([bool(x) if et == VT.BOOL else x for x in v], dtype=dt).tobytes()
    if et == VT.STRING:
        return head + b"".join(_pack_string(s) for s in v)
    if et == VT.ARRAY:
        parts = []
        for item in v:
            iv = item if isinstance(item, GGUFValue) else _infer(item)
            if iv.type != VT.ARRAY:
                raise ValueError(f"nested array element is not an array: {item!r}")
            parts.append(_pack_value(iv))
        return head + b"".join(parts)
    raise ValueError(f"unknown GGUF array element type {et}")


def write_gguf(
    path: str | os.PathLike[str],
    metadata: dict[str, Any],
    tensors: dict[str, tuple[int, tuple[int, ...], Any]] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    version: int = 3,
) -> None:
    """Write a GGUF file.  ``tensors`` maps name -> (ggml type id, ne in ggml order, raw
    data as bytes / buffer / numpy array of exactly the tensor's byte size).  Value types
    are inferred (bool->BOOL, non-negative int < 2**32 -> UINT32, other int -> INT64 (or
    UINT64 beyond), float -> FLOAT32, str/bytes -> STRING, list/tuple -> ARRAY of the
    inferred element type, numpy array -> ARRAY of its dtype) unless given as
    :class:`GGUFValue`.  A non-default alignment is recorded as ``general.alignment``
    (UINT32)."""
    tensors = tensors or {}
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment {alignment} is not a power of two")
    meta = dict(metadata)
    if "general.alignment" in meta:
        got = meta["general.alignment"]
        got = got.value if isinstance(got, GGUFValue) else got
        if got != alignment:
            raise ValueError("general.alignment in metadata disagrees with alignment=")
    elif alignment != DEFAULT_ALIGNMENT:
        meta["general.alignment"] = GGUFValue(VT.UINT32, alignment)

    out = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(meta))]
    for key, value in meta.items():
        gv = _infer(value)
        out.append(_pack_string(key) + _U32.pack(gv.type) + _pack_value(gv))
    blobs = []
    rel = 0
    for name, (ttype, ne, data) in tensors.items():
        if ttype not in GGML_BLOCK_SIZES:
            raise ValueError(f"unsupported ggml type {ttype} for tensor {name!r}")
        ne = tuple(int(d) for d in ne)
        if not 1 <= len(ne) <= MAX_DIMS:
            raise ValueError(f"tensor {name!r}: needs 1..{MAX_DIMS} dims, got {ne}")
        block, bsize = GGML_BLOCK_SIZES[ttype]
        n = int(np.prod(ne, dtype=object))
        if ne[0] % block:
            raise ValueError(f"tensor {name!r}: ne[0] not a multiple of block size {block}")
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        if len(raw) != n // block * bsize:
            raise ValueError(f"tensor {name!r}: {len(raw)} bytes, expected {n // block * bsize}")
        out.append(
            _pack_string(name)
            + _U32.pack(len(ne))
            + struct.pack(f"<{len(ne)}Q", *ne)
            + struct.pack("<IQ", ttype, rel)
        )
        blobs.append(raw)
        rel += -(-len(raw) // alignment) * alignment
    header = b"".join(out)
    with open(path, "wb") as f:
        f.write(header)
        f.write(b"\0" * (-len(header) % alignment))
        for raw in blobs:
            f.write(raw)
            f.write(b"\0" * (-len(raw) % alignment))
