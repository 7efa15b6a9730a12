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
    print(f"available isas: {', '.join(kernels.available_isas())}")
    print(f"threads: {kernels.get_threads()} (usable cores: {kernels.usable_cores()})")
    return 0


def _open_gguf(path: str):
    from smallmind.gguf import GGUFFile

    try:
        return GGUFFile(path)
    except FileNotFoundError:
        raise ConfigError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"model path is a directory: {path}") from None


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
    from smallmind.engine.sampling import SamplingParams
    from smallmind.engine.tokenizer import StreamDecoder, Tokenizer

    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed, max_tokens=args.max_tokens)
    gguf = _open_gguf(args.model)
    tokenizer = Tokenizer.from_gguf(gguf.metadata)
    gguf.close()
    prompt_ids = tokenizer.encode(args.prompt, add_special=True, parse_special=True)
    params.validate(tokenizer.vocab_size)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smallmind", description="Small quantized LLMs on the CPU.")
    parser.add_argument("--version", action="version", version=f"smallmind {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print version, instruction sets and threads")
    info.set_defaults(func=cmd_info)

    tok = sub.add_parser("tokenize", help="print the token ids of a text as a JSON list")
    tok.add_argument("-m", "--model", required=True, help="GGUF file")
    tok.add_argument("--no-bos", action="store_true", help="do not add BOS/EOS")
    tok.add_argument("--special", action="store_true", help="parse special tokens in the text")
    tok.add_argument("text")
    tok.set_defaults(func=cmd_tokenize)

    gen = sub.add_parser("generate", help="stream a continuation of a prompt to stdout")
    gen.add_argument("-m", "--model", required=True, help="GGUF file")
    gen.add_argument("--max-tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=40)
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--ctx-size", type=int, default=4096, help="context length (tokens)")
    gen.add_argument("prompt")
    gen.set_defaults(func=cmd_generate)
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
