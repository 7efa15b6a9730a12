"""The client side of scripts/bench_server.py: prompts, streamed requests and the figures
of one concurrency level or one prefix-cache run."""

from __future__ import annotations

import http.client
import json
import math
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

OURS, LLAMA_SERVER, LLAMA_CPP_PYTHON = "ours", "llama-server", "llama-cpp-python"
SOCKET_TIMEOUT_S = 600

# Prompts: deterministic, different per request where they must be, shared where they must be.
OPENINGS = (
    "The harbour was quiet when the first boats came back.",
    "Snow had fallen on the mountain village during the night.",
    "A new bakery opened on the corner of the market square.",
    "The old lighthouse keeper counted the ships every evening.",
    "Two friends found a map hidden inside a library book.",
    "The train to the coast was late again this morning.",
    "A small garden grew between the tall grey buildings.",
    "The museum closed early because of the summer storm.",
    "Children were racing paper boats along the river bank.",
    "A lost cat walked into the fire station at noon.",
    "The orchestra was tuning up in the empty concert hall.",
    "Farmers brought apples and pears to the autumn fair.",
)
STORY_TASK = (
    "Now write a long, detailed story for children about a small robot who explores a "
    "city at night. Describe the streets, the lights, the people it meets and the sounds "
    "it hears. Use simple words, short sentences and many concrete details, and keep the "
    "story going with a new event in every paragraph."
)
DEPARTMENTS = (
    "billing",
    "shipping",
    "returns",
    "warranty claims",
    "account security",
    "gift cards",
    "store opening hours",
    "repairs",
    "loyalty points",
)
ACTIONS = (
    "answer in at most two sentences",
    "ask for the order number before anything else",
    "apologise once and then give the facts",
    "offer to open a support ticket",
    "point the customer to the help centre article",
    "never promise a delivery date",
)
FACTS = (
    "the main office opens at nine and closes at five",
    "refunds take up to ten working days",
    "express parcels leave the warehouse every afternoon",
    "repairs are free in the first year",
    "points expire after eighteen months",
    "gift cards cannot be exchanged for cash",
    "the phone line is closed on public holidays",
)
QUESTIONS = (
    "When does the main office open?",
    "How long does a refund take?",
    "Can I exchange a gift card for cash?",
    "Is a repair free after six months?",
    "When do my loyalty points expire?",
    "Do express parcels leave every day?",
    "Is the phone line open on holidays?",
    "Who pays for return shipping?",
)


def throughput_prompt(number: int) -> str:
    """~80 tokens; the number comes first so two requests share no prefix beyond the template."""
    return f"{number}. {OPENINGS[number % len(OPENINGS)]} {STORY_TASK}"


def system_prompt(n_rules: int) -> str:
    rules = [
        f"Rule {i + 1}: for questions about {DEPARTMENTS[i % len(DEPARTMENTS)]}, "
        f"{ACTIONS[i % len(ACTIONS)]}, and remember that {FACTS[i % len(FACTS)]}."
        for i in range(n_rules)
    ]
    return (
        "You are the customer service assistant of the Northwind Trading Company. "
        "Follow these rules exactly.\n" + "\n".join(rules)
    )


def estimate_tokens(text: str) -> int:
    return round(len(text) / 4.2)  # English prose, SentencePiece/BPE: ~4 characters a token


def fit_system_prompt(count_tokens, target: int) -> tuple[str, int]:
    """The shortest system_prompt(n) of at least `target` tokens, and its token count."""
    n_rules = 1
    while True:
        text = system_prompt(n_rules)
        n_tokens = count_tokens(text)
        if n_tokens >= target:
            return text, n_tokens
        n_rules += 1


def prefix_question(number: int) -> str:
    return f"Question {number + 1}: {QUESTIONS[number % len(QUESTIONS)]}"


def chat_body(messages: list[dict], max_tokens: int) -> dict:
    return {
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }


def http_post_json(port: int, path: str, body: dict) -> dict | None:
    """The JSON answer of a POST, or None on any failure (e.g. no such endpoint)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


@dataclass
class RequestResult:
    tokens: int = 0
    content_chunks: int = 0
    finish_reason: str | None = None
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    error: str | None = None


def sse_data_events(response: http.client.HTTPResponse):
    """The `data:` payloads of a server-sent event stream (multi-line data joined)."""
    data_lines: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line == "":
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
        elif line.startswith("data:"):
            data_lines.append(line[5:].lstrip(" "))
    if data_lines:
        yield "\n".join(data_lines)


def stream_chat(port: int, body: dict, max_tokens: int) -> RequestResult:
    result = RequestResult()
    usage_tokens = None
    first_at = last_at = None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=SOCKET_TIMEOUT_S)
    started = time.monotonic()
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        response = connection.getresponse()
        if response.status != 200:
            result.error = f"HTTP {response.status}: {response.read()[:200]!r}"
            return result
        for data in sse_data_events(response):
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                result.error = f"error event: {json.dumps(chunk['error'])[:200]}"
                return result
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    last_at = time.monotonic()
                    first_at = first_at or last_at
                    result.content_chunks += 1
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
    except (OSError, ValueError, http.client.HTTPException) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    finally:
        connection.close()
    if result.finish_reason is None:
        result.error = "stream ended without a finish_reason"
    if isinstance(usage_tokens, int):
        result.tokens = usage_tokens
    elif result.finish_reason == "length":
        result.tokens = max_tokens
    else:
        result.tokens = result.content_chunks
    if first_at is not None:
        result.ttft_s = first_at - started
        if result.tokens > 1 and last_at > first_at:
            result.decode_tok_s = (result.tokens - 1) / (last_at - first_at)
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    agg_tok_s: float
    decode_tok_s_median: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    short: int  # streams that stopped before max_tokens
    errors: int
    error_samples: list[str]


def run_level(
    port: int, concurrency: int, requests_per_client: int, max_tokens: int, first_number: int
) -> LevelResult:
    """`concurrency` clients, each sending its requests back to back."""
    results: list[RequestResult] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for j in range(requests_per_client):
            number = first_number + index * requests_per_client + j
            body = chat_body([{"role": "user", "content": throughput_prompt(number)}], max_tokens)
            outcome = stream_chat(port, body, max_tokens)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    good = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in good)
    ttfts = [r.ttft_s for r in good if r.ttft_s is not None]
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        tokens=tokens,
        wall_s=wall,
        agg_tok_s=tokens / wall if wall > 0 else 0.0,
        decode_tok_s_median=median([r.decode_tok_s for r in good if r.decode_tok_s is not None]),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        short=sum(r.tokens < max_tokens for r in good),
        errors=len(results) - len(good),
        error_samples=[r.error for r in results if r.error][:3],
    )


@dataclass
class PrefixResult:
    system_tokens: int
    cold_ttft_s: float | None
    warm_ttft_s: float | None  # median of the requests after the first
    cold_over_warm: float | None
    errors: int
    error_samples: list[str]


def run_prefix(
    port: int, system_text: str, system_tokens: int, n_requests: int, max_tokens: int
) -> PrefixResult:
    results = []
    for k in range(n_requests):
        messages = [{"role": "user", "content": f"{system_text}\n\n{prefix_question(k)}"}]
        results.append(stream_chat(port, chat_body(messages, max_tokens), max_tokens))
    cold = results[0].ttft_s if results[0].error is None else None
    warm = median([r.ttft_s for r in results[1:] if r.error is None and r.ttft_s is not None])
    errors = [r.error for r in results if r.error]
    return PrefixResult(
        system_tokens, cold, warm, cold / warm if cold and warm else None, len(errors), errors[:3]
    )


def warm_up(port: int) -> str | None:
    """One short request; its error, if any."""
    body = chat_body([{"role": "user", "content": "Say hello to the benchmark."}], 8)
    return stream_chat(port, body, 8).error


def count_tokens_via(port: int, text: str) -> int | None:
    answer = http_post_json(port, "/tokenize", {"content": text, "add_special": False})
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    return len(tokens) if isinstance(tokens, list) else None
