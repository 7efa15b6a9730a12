"""The OpenAI-compatible HTTP server (Tornado) in front of the engine."""
