"""Opens a model file of either format by its magic: GGUF or SmallMind's .smq.

Both readers give the same interface (``metadata``, ``tensors``, ``tensor()``, ``close()``),
so everything past this point works on either."""

from __future__ import annotations

import os

from smallmind.gguf import GGUFFile
from smallmind.smq import SMQ_MAGIC, SMQFile

__all__ = ["open_model_file", "ModelFile", "file_format"]

ModelFile = GGUFFile | SMQFile


def file_format(path: str | os.PathLike[str]) -> str:
    """ "smq" for a file starting with SMQ's magic, else "gguf" (whose reader names any
    other bad magic)."""
    with open(path, "rb") as f:
        return "smq" if f.read(len(SMQ_MAGIC)) == SMQ_MAGIC else "gguf"


def open_model_file(path: str | os.PathLike[str]) -> ModelFile:
    return SMQFile(path) if file_format(path) == "smq" else GGUFFile(path)
