"""SmallMind: small quantized LLMs on the CPU behind an OpenAI-compatible API."""

__version__ = "0.1.0"
