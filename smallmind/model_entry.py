"""What the registry records of one model: a ``manifest.json`` entry (its id, file, hash and
what the file holds), checked on the way in and out, and how ``smallmind model list`` /
``model info`` show it.  The operations on the cache directory are in smallmind.registry."""

from __future__ import annotations

import collections
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smallmind.errors import ModelFormatError, RegistryError

__all__ = ["ModelEntry", "validate_id", "check_sha", "inspect_model", "format_table", "format_info"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# llama.cpp's LLAMA_FTYPE values as stored in general.file_type
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}
_FILE_TYPE_GUESSED = 1024


def validate_id(model_id: Any) -> str:
    """Returns the id if it is valid, else raises RegistryError."""
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or ".." in model_id:
        raise RegistryError(
            f"invalid model id {model_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..'"
        )
    return model_id


def check_sha(sha: str | None) -> str | None:
    if sha is None:
        return None
    if not _SHA_RE.match(sha):
        raise RegistryError(f"invalid --sha256 {sha!r}: expected 64 hexadecimal digits")
    return sha.lower()


# ====================================================================== entries
@dataclass(frozen=True)
class _Summary:
    architecture: str | None
    quant_type: str | None
    n_params: int
    format: str


def inspect_model(path: str | os.PathLike[str], source: str | None = None) -> _Summary:
    """Opens the file as GGUF or .smq (header, metadata, tensor table, tensor data within the
    file) and returns what the manifest records.  RegistryError if it is not readable."""
    from smallmind.modelfile import open_model_file

    try:
        with open_model_file(path) as g:
            by_elems: collections.Counter[str] = collections.Counter()
            for t in g.tensors.values():
                by_elems[t.type_name] += t.n_elements
            ftype = g.metadata.get("general.file_type")
            quant = None
            if isinstance(ftype, int) and not isinstance(ftype, bool):
                quant = _FILE_TYPES.get(ftype & ~_FILE_TYPE_GUESSED)
            if quant is None and by_elems:
                quant = by_elems.most_common(1)[0][0]
            arch = g.architecture
            return _Summary(arch if isinstance(arch, str) else None, quant, sum(by_elems.values()), g.format)
    except ModelFormatError as e:
        msg = str(e)
        if source is not None:
            msg = msg.replace(os.fspath(path), source)
        raise RegistryError(f"not a valid GGUF or .smq model: {msg}") from None


# ====================================================================== entries
@dataclass(frozen=True)
class ModelEntry:
    """One registered model.  ``file`` is relative to the cache dir (a file we own) or
    absolute (``linked``: the user's file, never deleted by us); ``path`` is absolute."""

    id: str
    file: str
    source: str
    size: int
    sha256: str
    format: str
    architecture: str | None
    quant_type: str | None
    n_params: int
    added: str
    linked: bool = False
    path: Path = field(default=Path(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["path"]
        return d

    @classmethod
    def from_json(cls, key: str, d: Any, cache_dir: Path) -> ModelEntry:
        """Raises ValueError describing what is wrong with an entry's shape."""
        if not isinstance(d, dict):
            raise ValueError(f"entry {key!r} is not an object")
        types: dict[str, Any] = {
            "id": str,
            "file": str,
            "source": str,
            "size": int,
            "sha256": str,
            "format": str,
            "architecture": (str, type(None)),
            "quant_type": (str, type(None)),
            "n_params": int,
            "added": str,
            "linked": bool,
        }
        for name, typ in types.items():
            if name not in d:
                raise ValueError(f"entry {key!r} lacks {name!r}")
            v = d[name]
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise ValueError(f"entry {key!r} has a bad {name!r}: {v!r}")
        if d["id"] != key or not _ID_RE.match(key) or ".." in key:
            raise ValueError(f"entry {key!r} has a bad id {d['id']!r}")
        if not _SHA_RE.match(d["sha256"]):
            raise ValueError(f"entry {key!r} has a bad sha256")
        file = d["file"]
        if os.path.isabs(file):
            path = Path(file)
        elif file and os.sep not in file and "/" not in file and file not in (".", ".."):
            path = cache_dir / file
        else:
            raise ValueError(f"entry {key!r} has a bad file {file!r}")
        return cls(**{k: d[k] for k in types}, path=path)


# ====================================================================== formatting
def _human_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]  # bytes, then fractional units
    return str(n)  # pragma: no cover


def format_table(entries: list[ModelEntry]) -> str:
    rows = [("ID", "FORMAT", "ARCHITECTURE", "PARAMS", "QUANT", "SIZE", "ADDED")]
    for e in entries:
        added = e.added.replace("T", " ")[:16]
        rows.append(
            (
                e.id + (" (link)" if e.linked else ""),
                e.format,
                e.architecture or "?",
                _human_count(e.n_params),
                e.quant_type or "?",
                _human_size(e.size),
                added,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_info(d: dict[str, Any]) -> str:
    e: ModelEntry = d["entry"]
    types = ", ".join(f"{k} {v}" for k, v in d["tensor_types"].items())
    lines = [
        ("id", e.id),
        ("name", d["name"]),
        ("file", str(e.path) + (" (linked, not owned)" if e.linked else "")),
        ("source", e.source),
        ("format", e.format),
        ("architecture", d["architecture"]),
        ("context length", d["context_length"]),
        ("vocabulary size", d["vocab_size"]),
        ("chat template", "yes" if d["chat_template"] else "no"),
        ("parameters", f"{e.n_params} ({_human_count(e.n_params)})"),
        ("quant type", e.quant_type),
        ("size", f"{e.size} bytes ({_human_size(e.size)})"),
        ("sha256", e.sha256),
        ("added", e.added),
        ("tensors", f"{d['n_tensors']} ({types})"),
    ]
    return "\n".join(f"{k}: {'?' if v is None else v}" for k, v in lines)
