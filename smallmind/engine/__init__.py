"""The inference engine: model (GGUF -> native forward pass), tokenizer, sampler, scheduler."""
