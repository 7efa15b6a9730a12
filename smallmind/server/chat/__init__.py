"""Chat requests as a model sees them: the GGUF's chat template and OpenAI tool calls."""
