"""Writes .smq files and converts GGUF <-> SMQ (``python -m smallmind convert IN OUT``).

GGUF -> SMQ, default (lossless):
    F32 -> SMQ F32.  Q8_0 -> SMQ Q8_0 with block size 32, the int8 quants as they are and the
    float16 scales widened to float32.  Q4_0 -> SMQ Q4_0 with block size 32: GGUF's unsigned
    nibbles minus 8 are SMQ's signed nibbles, repacked in element order.  Every other type
    (F16, BF16, Q5_0, K-quants, ...) -> the extension scheme ``GGUF_SCHEME_BASE + ggml type``
    holding GGUF's blocks verbatim.  Blobs start at multiples of 32 (SmallMind's reader and
    validator accept gaps between blobs), so the reader maps them without copying.
    The reader rebuilds GGUF's Q8_0/Q4_0 blocks from such tensors bit for bit, so the .smq
    runs through the GGUF's kernels and gives the GGUF's logits.

GGUF -> SMQ, ``compatible=True`` (what SmallMind's own reader accepts, as its importer
writes it, without its Q4_0 decoding bug): F32 stays; F16 and BF16 are widened to F32
(exact); Q8_0 and Q4_0 are dequantized and re-quantized into 64-element blocks with float32
scales, as SmallMind's importer does (lossy); every other type is dequantized and
re-quantized to SMQ Q8_0 with 64-element blocks (lossy).  Blobs are packed back to back.
The output is re-read and checked against SmallMind's reader rules before it replaces OUT.

SMQ -> GGUF: each tensor as the SMQ reader presents it (GGUF Q8_0/Q4_0 blocks where exact,
F32 otherwise, extension blobs verbatim), metadata with its recorded GGUF types.

Metadata: every GGUF key (except general.alignment) goes into the JSON, plus SmallMind's
``converted_from`` and ``conversion_date``, and the GGUF value type of each key under
``smallmind.gguf_types`` so that SMQ -> GGUF restores the exact types.

Writes are atomic: a temporary file in the output's directory, renamed over OUT at the end."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from smallmind import _kernels
from smallmind.download import Progress
from smallmind.errors import ConfigError, ModelFormatError
from smallmind.gguf import GGML_BLOCK_SIZES, GGMLType, GGUFFile
from smallmind.gguf_writer import GGUFValue, write_gguf
from smallmind.smq import (
    ENTRY,
    GGUF_SCHEME_BASE,
    HEADER,
    NAME_BYTES,
    SMQ_MAGIC,
    SMQ_VERSION,
    TYPES_KEY,
    SMQFile,
    Scheme,
)

__all__ = [
    "SMQTensor",
    "write_smq",
    "gguf_to_smq",
    "smq_to_gguf",
    "convert",
    "quantize_q8",
    "quantize_q4",
    "smallmind_reader_problems",
]

SMALLMIND_BLOCK = 64  # SmallMind's importer's block size (GgufImporter.cs:13)
PROVENANCE_KEYS = ("converted_from", "conversion_date")
_I32_MAX = (1 << 31) - 1
_VT_NAMES = {
    0: "UINT8",
    1: "INT8",
    2: "UINT16",
    3: "INT16",
    4: "UINT32",
    5: "INT32",
    6: "FLOAT32",
    7: "BOOL",
    8: "STRING",
    9: "ARRAY",
    10: "UINT64",
    11: "INT64",
    12: "FLOAT64",
}
_VT_IDS = {v: k for k, v in _VT_NAMES.items()}


@dataclass
class SMQTensor:
    """One tensor to write.  ``produce()`` returns (data, aux) bytes-like objects of exactly
    the lengths the scheme implies; it is called once, when the tensor's turn comes."""

    name: str
    scheme: int
    dims: tuple[int, ...]
    block_size: int
    data_length: int
    aux_length: int
    produce: Callable[[], tuple[Any, Any]]


# ------------------------------------------------------------------ SmallMind's quantizers
def _blocked(x: np.ndarray, block: int) -> np.ndarray:
    n_blocks = -(-x.size // block)
    padded = np.zeros(n_blocks * block, np.float32)  # zeros do not change a block's max|x|
    padded[: x.size] = x
    return padded.reshape(n_blocks, block)


def _quantize(x: np.ndarray, block: int, q_max: float, q_min: float) -> tuple[np.ndarray, np.ndarray]:
    """SmallMind's Q8Tensor/Q4Tensor.Quantize: scale = max|x| / q_max in float32 (1 for an
    all-zero block), q = round-half-even(clamp(x * (1 / scale), q_min, q_max))."""
    blocks = _blocked(np.asarray(x, np.float32).reshape(-1), block)
    amax = np.abs(blocks).max(axis=1)
    scales = amax / np.float32(q_max)
    scales[amax == 0] = np.float32(1.0)
    inv = np.float32(1.0) / scales
    q = np.rint(np.clip(blocks * inv[:, None], q_min, q_max)).astype(np.int8)
    return q.reshape(-1)[: x.size], scales.astype("<f4")


def quantize_q8(x: np.ndarray, block: int = SMALLMIND_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(int8 quants, float32 scales) as SmallMind's Q8Tensor writes them."""
    return _quantize(x, block, 127.0, -127.0)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Signed 4-bit values -> SMQ Q4_0 bytes: element 2k low nibble, 2k+1 high."""
    codes = np.zeros(q.size + q.size % 2, np.uint8)
    codes[: q.size] = q.astype(np.uint8) & 15
    return codes[0::2] | (codes[1::2] << 4)


def quantize_q4(x: np.ndarray, block: int = SMALLMIND_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(packed nibbles, float32 scales) as SmallMind's Q4Tensor writes them."""
    q, scales = _quantize(x, block, 7.0, -8.0)
    return pack_nibbles(q), scales


# ------------------------------------------------------------------ metadata
def _json_value(key: str, value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.astype(np.float64).tolist() if value.dtype.kind == "f" else value.tolist()
    elif isinstance(value, list):
        value = [_json_value(key, v) for v in value]
    elif isinstance(value, float) and not np.isfinite(value):
        raise ModelFormatError(f"metadata key {key!r} holds {value}, which JSON cannot carry")
    if isinstance(value, list) and any(isinstance(v, float) and not np.isfinite(v) for v in value):
        raise ModelFormatError(f"metadata key {key!r} holds NaN or infinity, which JSON cannot carry")
    return value


def _type_name(vtype: Any) -> Any:
    if isinstance(vtype, tuple):
        return ["ARRAY", _VT_NAMES.get(vtype[1], "ARRAY")]
    return _VT_NAMES[vtype]


def metadata_json(gguf: GGUFFile) -> dict[str, Any]:
    """The JSON object for an .smq converted from ``gguf``."""
    out: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for key, value in gguf.metadata.items():
        if key == "general.alignment":
            continue
        out[key] = _json_value(key, value)
        types[key] = _type_name(gguf.metadata_types[key])
    out["converted_from"] = "GGUF"
    out["conversion_date"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    out[TYPES_KEY] = types
    return out


def _gguf_metadata(smq: SMQFile) -> dict[str, Any]:
    """GGUF metadata (typed where the .smq recorded the types) from an .smq."""
    out = {}
    for key, value in smq.metadata.items():
        if key in PROVENANCE_KEYS:
            continue
        vtype = smq.metadata_types.get(key)
        if isinstance(vtype, tuple) and vtype[1] is not None and vtype[1] != 9:
            out[key] = GGUFValue(9, value, vtype[1])
        elif isinstance(vtype, int) and vtype != 9:
            out[key] = GGUFValue(vtype, value)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------ writing
def write_smq(
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None,
    tensors: list[SMQTensor],
    align: int = 32,
    progress: bool = False,
) -> None:
    """Writes an .smq atomically.  ``align`` = 1 packs blobs back to back as SmallMind does."""
    js = (
        json.dumps(metadata, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()
        if metadata
        else b""
    )
    offset = HEADER.size + len(js) + ENTRY.size * len(tensors)
    directory = []
    for t in tensors:
        raw_name = t.name.encode("utf-8")
        if len(raw_name) > NAME_BYTES:
            raise ModelFormatError(
                f"tensor name {t.name!r} is longer than the {NAME_BYTES} bytes an .smq directory entry holds"
            )
        if len(t.dims) > 8 or any(not 0 < d <= _I32_MAX for d in t.dims):
            raise ModelFormatError(f"tensor {t.name!r} dims {list(t.dims)} do not fit an .smq entry")
        offset += -offset % align
        data_off = offset
        offset += t.data_length
        aux_off = offset if t.aux_length else 0
        offset += t.aux_length
        dims = list(t.dims) + [0] * (8 - len(t.dims))
        directory.append(
            ENTRY.pack(
                raw_name,
                t.scheme,
                len(t.dims),
                *dims,
                t.block_size,
                data_off,
                t.data_length,
                aux_off,
                t.aux_length,
                b"",
            )
        )
    head = HEADER.pack(SMQ_MAGIC, SMQ_VERSION, HEADER.size, len(tensors), len(js), 0)
    bar = Progress(f"write {os.path.basename(path)}", total=offset, enabled=None if progress else False)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(head + js + b"".join(directory))
        for t in tensors:
            f.write(b"\0" * (-f.tell() % align))
            data, aux = t.produce()
            for blob, length in ((data, t.data_length), (aux, t.aux_length)):
                blob = memoryview(blob if blob is not None else b"").cast("B")
                if blob.nbytes != length:
                    raise AssertionError(f"{t.name}: produced {blob.nbytes} bytes, expected {length}")
                f.write(blob)
            bar.update(t.data_length + t.aux_length)
    bar.close()


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path beside ``path``, renamed over it only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ConfigError(f"cannot write to {directory}: {e.strerror}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------ GGUF -> SMQ
def _matrix_dims(ne: tuple[int, ...], n: int) -> tuple[int, int]:
    """SmallMind's dims for a quantized tensor: 1-D -> [1, ne0], else [ne0, n / ne0]."""
    return (1, ne[0]) if len(ne) == 1 else (ne[0], n // ne[0])


def _dequantized(gguf: GGUFFile, name: str) -> np.ndarray:
    info = gguf.tensors[name]
    raw = gguf.tensor(name)
    if info.type == GGMLType.F32:
        return np.asarray(raw, np.float32).reshape(-1)
    if info.type == GGMLType.F16:
        return np.asarray(raw, np.float32).reshape(-1)
    if info.type == GGMLType.BF16:
        return (np.asarray(raw, np.uint32) << 16).view(np.float32).reshape(-1)
    return _kernels.dequantize(
        np.ascontiguousarray(raw).reshape(info.n_rows, -1), info.type, info.ne[0]
    ).reshape(-1)


def _lossless_tensor(gguf: GGUFFile, name: str) -> SMQTensor:
    info = gguf.tensors[name]
    n = info.n_elements
    if info.type == GGMLType.F32:
        return SMQTensor(name, Scheme.F32, info.ne, 0, 4 * n, 0, lambda: (gguf.tensor_bytes(name), None))
    if info.type in (GGMLType.Q8_0, GGMLType.Q4_0) and len(info.ne) <= 2:
        blocks = lambda: gguf.tensor_bytes(name).reshape(-1, GGML_BLOCK_SIZES[info.type][1])  # noqa: E731
        scales = lambda b: b[:, :2].copy().view("<f2").astype("<f4")  # noqa: E731
        if info.type == GGMLType.Q8_0:

            def produce():
                b = blocks()
                return np.ascontiguousarray(b[:, 2:]), scales(b)

            return SMQTensor(name, Scheme.Q8_0, _matrix_dims(info.ne, n), 32, n, 4 * (n // 32), produce)

        def produce_q4():
            b = blocks()
            unsigned = np.concatenate([b[:, 2:] & 15, b[:, 2:] >> 4], axis=1)  # elements 0-15, 16-31
            return pack_nibbles((unsigned.reshape(-1) ^ 8).astype(np.int8)), scales(b)

        return SMQTensor(name, Scheme.Q4_0, _matrix_dims(info.ne, n), 32, n // 2, 4 * (n // 32), produce_q4)
    block = GGML_BLOCK_SIZES[info.type][0]
    return SMQTensor(
        name,
        GGUF_SCHEME_BASE + info.type,
        info.ne,
        block,
        info.n_bytes,
        0,
        lambda: (gguf.tensor_bytes(name), None),
    )


def _compatible_tensor(gguf: GGUFFile, name: str, requantized: list[str]) -> SMQTensor:
    info = gguf.tensors[name]
    n = info.n_elements
    if info.type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        if info.type != GGMLType.F32:
            requantized.append(f"{name}: {info.type_name} -> F32 (exact)")
        return SMQTensor(name, Scheme.F32, info.ne, 0, 4 * n, 0, lambda: (_dequantized(gguf, name), None))
    n_scales = -(-n // SMALLMIND_BLOCK)
    if info.type == GGMLType.Q4_0:  # stays 4-bit, re-blocked to SmallMind's block size
        scheme, scheme_name, data_len, quantize = Scheme.Q4_0, "Q4_0", -(-n // 2), quantize_q4
    else:  # every other type becomes 8-bit
        scheme, scheme_name, data_len, quantize = Scheme.Q8_0, "Q8_0", n, quantize_q8
    requantized.append(f"{name}: {info.type_name} -> SMQ {scheme_name}/{SMALLMIND_BLOCK} (re-quantized)")
    return SMQTensor(
        name,
        scheme,
        _matrix_dims(info.ne, n),
        SMALLMIND_BLOCK,
        data_len,
        4 * n_scales,
        lambda: quantize(_dequantized(gguf, name)),
    )


def smallmind_reader_problems(path: str | os.PathLike[str]) -> list[str]:
    """What SmallMind's SmqReader/SmqValidator would refuse in an .smq (FORMAT.md §8).  Our
    reader already enforces the structural rules (it raises on them); SmallMind's reader also
    loads only F32, Q8_0 and Q4_0, and keeps the last of two entries with one name."""
    with SMQFile(path) as f:
        return [
            f"tensor {e.name!r} has scheme {e.scheme_name}, which SmallMind cannot read"
            for e in f.entries.values()
            if e.scheme not in (Scheme.F32, Scheme.Q8_0, Scheme.Q4_0)
        ]


def gguf_to_smq(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], compatible: bool = False, progress: bool = False
) -> list[str]:
    """Converts; returns the tensors that were not carried over bit for bit (compatible mode)."""
    requantized: list[str] = []
    with GGUFFile(src) as gguf:
        meta = metadata_json(gguf)
        tensors = [
            _compatible_tensor(gguf, name, requantized) if compatible else _lossless_tensor(gguf, name)
            for name in gguf.tensors
        ]
        write_smq(dst, meta, tensors, align=1 if compatible else 32, progress=progress)
    if compatible:
        problems = smallmind_reader_problems(dst)
        if problems:  # cannot happen unless the code above is wrong: never leave such a file
            os.unlink(dst)
            raise ModelFormatError("; ".join(problems))
    return requantized


# ------------------------------------------------------------------ SMQ -> GGUF
def smq_to_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str], progress: bool = False) -> None:
    with SMQFile(src) as smq:
        total = sum(i.n_bytes for i in smq.tensors.values())
        bar = Progress(
            f"read {os.path.basename(os.fspath(src))}", total=total, enabled=None if progress else False
        )
        tensors = {}
        for name, info in smq.tensors.items():
            tensors[name] = (info.type, info.ne, smq.tensor(name))
            bar.update(info.n_bytes)
        bar.close()
        with atomic_output(dst) as tmp:
            write_gguf(tmp, _gguf_metadata(smq), tensors)


def convert(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], compatible: bool = False, progress: bool = False
) -> list[str]:
    """GGUF -> .smq or .smq -> GGUF, by the input's magic and the output's suffix."""
    from smallmind.modelfile import file_format

    src_format = file_format(src)
    dst_format = os.path.splitext(os.fspath(dst))[1].lower().lstrip(".")
    if dst_format not in ("smq", "gguf"):
        raise ConfigError(f"output {os.fspath(dst)!r} must end in .smq or .gguf")
    if dst_format == src_format:
        raise ConfigError(
            f"{os.fspath(src)} is already {src_format.upper()}; convert writes the other format"
        )
    if compatible and dst_format != "smq":
        raise ConfigError("--smallmind-compatible applies to GGUF -> .smq only")
    if dst_format == "smq":
        return gguf_to_smq(src, dst, compatible=compatible, progress=progress)
    smq_to_gguf(src, dst, progress=progress)
    return []


def describe_types(path: str | os.PathLike[str]) -> str:
    """One line: how many tensors of each stored scheme an .smq holds."""
    with SMQFile(path) as f:
        counts: dict[str, int] = {}
        for e in f.entries.values():
            key = e.scheme_name + (f"/{e.block_size}" if e.scheme in (Scheme.Q8_0, Scheme.Q4_0) else "")
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())
