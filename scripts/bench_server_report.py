"""The printed report of scripts/bench_server.py: machine, versions and the tables."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.bench_server_client import OURS

if TYPE_CHECKING:
    from scripts.bench_server import ServerReport, SystemPrompt


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
