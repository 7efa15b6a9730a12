"""`python -m smallmind ...` / `smallmind ...`: the command line.

Every failure the user can cause ends as one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys

from smallmind import __version__
from smallmind.errors import ConfigError, SmallMindError


def cmd_info(args: argparse.Namespace) -> int:
    from smallmind import kernels

    print(f"smallmind {__version__}")
    print(f"isa: {kernels.current_isa()}")
    emulated = set(kernels.emulated_isas())
    shown = [f"{name} (emulated)" if name in emulated else name for name in kernels.available_isas()]
    print(f"available isas: {', '.join(shown)}")
    # per weight type, the unit the table took the dot kernels from (dispatch.c's choice)
    print("dot kernels: " + ", ".join(f"{t} {kernels.entry_unit('dot', t)}" for t in kernels.TYPE_IDS))
    print(f"threads: {kernels.get_threads()} (usable cores: {kernels.usable_cores()})")
    if args.model:
        with _open_gguf(args.model) as f:
            print(describe_model_file(f))
    return 0


def describe_model_file(f) -> str:
    """Format, architecture and one line per tensor: as stored and as the kernels get it."""
    lines = [
        f"model: {f.path}",
        f"format: {f.format}",
        f"architecture: {f.metadata.get('general.architecture')}",
        f"metadata keys: {len(f.metadata)}",
        f"tensors: {len(f.tensors)}",
    ]
    entries = getattr(f, "entries", {})
    for name, info in f.tensors.items():
        e = entries.get(name)
        stored = f"{e.scheme_name} dims {list(e.dims)} block {e.block_size} -> " if e else ""
        lines.append(f"  {name}: {stored}{info.type_name} {list(info.ne)}")
    return "\n".join(lines)


def _open_gguf(path: str):
    from smallmind.modelfile import open_model_file

    try:
        return open_model_file(path)
    except FileNotFoundError:
        raise ConfigError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"model path is a directory: {path}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from smallmind import isa_bench

    if args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    return isa_bench.run(rounds=args.rounds)


def cmd_tokenize(args: argparse.Namespace) -> int:
    from smallmind.engine.tokenizer import Tokenizer

    with _open_gguf(args.model) as gguf:
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
    ids = tokenizer.encode(args.text, add_special=not args.no_bos, parse_special=args.special)
    print(json.dumps(ids))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from smallmind.engine.engine import Engine
    from smallmind.engine.model import Model
    from smallmind.engine.sampling_params import SamplingParams
    from smallmind.engine.tokenizer import StreamDecoder, Tokenizer

    given = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "max_tokens": args.max_tokens,
    }
    # options left out keep SamplingParams' defaults; the ones given are judged by its RANGES
    params = SamplingParams().with_values({k: v for k, v in given.items() if v is not None})
    gguf = _open_gguf(args.model)
    tokenizer = Tokenizer.from_gguf(gguf.metadata)
    gguf.close()
    prompt_ids = tokenizer.encode(args.prompt, add_special=True, parse_special=True)
    model = Model.load(args.model, n_ctx=min(args.ctx_size, 1 << 20), n_slots=1)
    engine = Engine(model, eog_ids=tokenizer.eog_ids)
    stream = StreamDecoder(tokenizer)
    out = sys.stdout
    for token in engine.generate(prompt_ids, params):
        text = stream.push(token)
        if text:
            out.write(text)
            out.flush()
    out.write(stream.flush() + "\n")
    out.flush()
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from smallmind.convert import convert, describe_types

    try:
        changed = convert(args.input, args.output, compatible=args.smallmind_compatible, progress=True)
    except FileNotFoundError:
        raise ConfigError(f"model file not found: {args.input}") from None
    except IsADirectoryError:
        raise ConfigError(f"not a file: {args.input} or {args.output}") from None
    if changed:
        print("not carried over bit for bit:")
    for line in changed:
        print(f"  {line}")
    if args.output.lower().endswith(".smq"):
        print(f"wrote {args.output}: {describe_types(args.output)}")
    else:
        print(f"wrote {args.output}")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from smallmind.perplexity import run

    run(
        args.model,
        args.file,
        ctx=args.ctx,
        n_chunks=args.chunks,
        save_logits=args.save_logits,
        kl_file=args.kl_divergence,
    )
    return 0


def _registry(args: argparse.Namespace):
    from smallmind.registry import Registry, resolve_cache_dir

    return Registry(resolve_cache_dir(args.cache_dir))


def cmd_model_add(args: argparse.Namespace) -> int:
    entry = _registry(args).add(
        args.source, args.id, sha256=args.sha256, link=args.link, force=args.force, progress=True
    )
    print(f"added {entry.id}: {entry.path} ({entry.size} bytes, sha256 {entry.sha256})")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from smallmind.model_entry import format_table

    reg = _registry(args)
    entries = reg.list()
    print(
        format_table(entries)
        if entries
        else f"no models in {reg.cache_dir} (add one with `smallmind model add`)"
    )
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from smallmind.model_entry import format_info

    print(format_info(_registry(args).describe(args.id)))
    return 0


def cmd_model_verify(args: argparse.Namespace) -> int:
    entry = _registry(args).verify(args.id, full=not args.quick, progress=True)
    print(f"ok: {entry.id} {'size' if args.quick else 'sha256'} matches ({entry.path})")
    return 0


def cmd_model_remove(args: argparse.Namespace) -> int:
    entry = _registry(args).remove(args.id)
    print(f"removed {entry.id}" + (f" (left the linked file {entry.path})" if entry.linked else ""))
    return 0


def _add_model_parser(sub) -> None:
    model = sub.add_parser("model", help="manage the models in the cache (add, list, info, ...)")
    model.add_argument(
        "--cache-dir",
        default=None,
        help="model cache (default: $SMALLMIND_CACHE_DIR, else "
        "$XDG_CACHE_HOME/smallmind/models, else ~/.cache/smallmind/models)",
    )
    msub = model.add_subparsers(dest="model_command", metavar="{add,list,info,verify,remove}", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    add = msub.add_parser("add", parents=[common], help="register a GGUF file, URL or `default`")
    add.add_argument("source", help="local path, http(s) URL, or `default` (Gemma 3 270M)")
    add.add_argument("--id", help="model id (required except for `default`)")
    add.add_argument("--sha256", help="expected sha256 (hex); refuse the file if it differs")
    add.add_argument("--link", action="store_true", help="symlink a local file, do not copy")
    add.add_argument("--force", action="store_true", help="replace an existing id")
    add.set_defaults(func=cmd_model_add)
    lst = msub.add_parser("list", parents=[common], help="table of registered models")
    lst.set_defaults(func=cmd_model_list)
    for name, func, text in (
        ("info", cmd_model_info, "details of one model"),
        ("verify", cmd_model_verify, "re-hash a model against the manifest"),
        ("remove", cmd_model_remove, "unregister (and delete if owned)"),
    ):
        p = msub.add_parser(name, parents=[common], help=text)
        p.add_argument("id")
        if name == "verify":
            p.add_argument("--quick", action="store_true", help="only check the size")
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smallmind", description="Small quantized LLMs on the CPU.")
    parser.add_argument("--version", action="version", version=f"smallmind {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser(
        "info",
        help="print version, instruction sets and threads (and, with -m, a model file's format and tensors)",
    )
    info.add_argument("-m", "--model", help="GGUF or .smq file to describe")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser(
        "bench",
        help="--isa: time every kernel-table entry of every instruction set "
        "this CPU runs and print which is faster (exit 1 where the "
        "automatic table runs a clearly slower one)",
    )
    bench.add_argument("--isa", action="store_true", required=True, help="time the kernel-table entries")
    bench.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    bench.set_defaults(func=cmd_bench)

    tok = sub.add_parser("tokenize", help="print the token ids of a text as a JSON list")
    tok.add_argument("-m", "--model", required=True, help="GGUF or .smq file")
    tok.add_argument("--no-bos", action="store_true", help="do not add BOS/EOS")
    tok.add_argument("--special", action="store_true", help="parse special tokens in the text")
    tok.add_argument("text")
    tok.set_defaults(func=cmd_tokenize)

    gen = sub.add_parser("generate", help="stream a continuation of a prompt to stdout")
    gen.add_argument("-m", "--model", required=True, help="GGUF or .smq file")
    for name, kind in (
        ("max_tokens", int),
        ("temperature", float),
        ("top_k", int),
        ("top_p", float),
        ("seed", int),
    ):
        # no default here: SamplingParams holds them (importing it here would load the kernels)
        gen.add_argument("--" + name.replace("_", "-"), type=kind, help="default: SamplingParams'")
    gen.add_argument("--ctx-size", type=int, default=4096, help="context length (tokens)")
    gen.add_argument("prompt")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="convert a GGUF to .smq or an .smq to GGUF")
    conv.add_argument("input", help="GGUF or .smq file")
    conv.add_argument("output", help="output path ending in .smq or .gguf (the other format)")
    conv.add_argument(
        "--smallmind-compatible",
        action="store_true",
        help="write only what SmallMind's own reader accepts (F32, Q8_0, Q4_0 with "
        "64-element blocks), re-quantizing as its importer does",
    )
    conv.set_defaults(func=cmd_convert)

    ppl = sub.add_parser(
        "perplexity",
        help="perplexity of a model on a text (as llama-perplexity), "
        "or its KL divergence from saved log-probabilities",
    )
    ppl.add_argument("-m", "--model", required=True, help="GGUF or .smq file")
    ppl.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    ppl.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    ppl.add_argument("--chunks", type=int, default=None, help="score at most N chunks (default: all)")
    ppl.add_argument("--save-logits", metavar="FILE", help="save this model's log-probabilities")
    ppl.add_argument(
        "--kl-divergence", metavar="FILE", help="compare with log-probabilities saved by --save-logits"
    )
    ppl.set_defaults(func=cmd_perplexity)
    _add_model_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SmallMindError as e:
        print(f"smallmind: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
