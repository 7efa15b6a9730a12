"""The inference engine: model, tokenizers, sampling, batching.  Knows nothing of HTTP."""

# Importing the kernels' Python API applies SMALLMIND_ISA and SMALLMIND_THREADS, so they take
# effect for every engine user (server, CLI, tests), not only for code that imports it itself.
from smallmind import kernels

__all__ = ["kernels"]
