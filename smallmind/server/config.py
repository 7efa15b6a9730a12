"""The server's settings: one dataclass filled from file, environment and command line.

The keys are those of the .NET product we are compatible with, so its deployments keep
working unchanged.  Sources, each overriding the one before (as .NET configuration layers do):

1. ``appsettings.json`` in the current directory (if present), or ``--config PATH``
   (which must exist); section ``ServerOptions``, other sections ignored;
2. environment variables ``ServerOptions__Key=value``;
3. the command line: ``--ServerOptions:Key=value`` / ``--ServerOptions:Key value`` and the
   ordinary flags (``--port 8080``, ``--model-path=...``).

Keys are matched case-insensitively.  Raw values are merged first and converted once, so a
value that a later source overrides is never looked at (as in .NET's binder).  Every
mistake -- a bad value, an unknown key or flag, broken JSON -- is a ``ConfigError`` with a
one-line message naming the key and the source it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from smallmind.engine.sampling_params import RANGES, SamplingParams
from smallmind.errors import ConfigError
from smallmind.values import Range, clip, json_type

__all__ = ["ServerOptions", "load_options", "usage", "describe", "SETTINGS", "SECTION"]

SECTION = "ServerOptions"
DEFAULT_SETTINGS_FILE = "appsettings.json"
ENV_PREFIX = SECTION + "__"
CLI_PREFIX = SECTION + ":"
MASK = "***"


@dataclass
class ServerOptions:
    """Everything the server can be told.  Defaults are the .NET product's."""

    model_id: str | None = None
    model_path: str | None = None
    cache_dir: str | None = None
    host: str = "localhost"
    port: int = 8080
    max_concurrent_requests: int = 4
    max_queue_depth: int = 32
    request_timeout_ms: int = 300_000
    max_context_tokens: int = 4096
    # SamplingParams holds the defaults of what a request may leave out
    default_max_tokens: int = SamplingParams.max_tokens
    default_temperature: float = SamplingParams.temperature
    default_top_p: float = SamplingParams.top_p
    default_top_k: int = SamplingParams.top_k
    threads: int = 0
    max_body_bytes: int = 10 * 1024 * 1024
    api_key: str | None = None
    cors_origins: str | None = None
    drain_timeout_ms: int = 30_000
    prefix_cache_mib: int = 256
    max_schema_bytes: int = 16 * 1024
    max_schema_depth: int = 64
    max_tokenize_bytes: int = 256 * 1024
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000

    def sampling_defaults(self) -> SamplingParams:
        """The sampling settings of a request that gives none: SamplingParams' own defaults
        with the Default* settings put in (load_options judged those against RANGES)."""
        return SamplingParams(
            max_tokens=self.default_max_tokens,
            temperature=self.default_temperature,
            top_p=self.default_top_p,
            top_k=self.default_top_k,
        )

    @property
    def api_keys(self) -> list[str]:
        """ApiKey may list several keys, comma-separated (rotation without downtime)."""
        return [k.strip() for k in (self.api_key or "").split(",") if k.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]


@dataclass(frozen=True)
class Setting:
    """One seed key: its field, its type and the range a value must lie in."""

    key: str  # spelled as the .NET product spells it
    field: str
    kind: type  # int, float or str
    help: str
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False  # value must be > low rather than >= low
    flag: bool = False  # also settable as --<field-with-dashes>
    secret: bool = False  # never echoed in messages, masked by describe()
    nonempty: bool = False  # a str that may not be empty (others: empty = unset)
    sampling: str | None = None  # a sampling default: SamplingParams' RANGES judge it

    @property
    def name(self) -> str:
        return f"{SECTION}:{self.key}"

    @property
    def flag_name(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def rule(self) -> Range:
        """The range a number must lie in (a sampling default's is SamplingParams')."""
        if self.sampling is not None:
            return RANGES[self.sampling]
        return Range(self.kind is int, self.low, self.high, self.low_exclusive)

    @property
    def requirement(self) -> str:
        """What a valid value looks like, for error messages: 'an integer >= 1'."""
        if self.kind is str:
            return "a non-empty string" if self.nonempty else "a string"
        return self.rule.requirement


# The one table of seed keys; the dataclass above holds the defaults.
SETTINGS: tuple[Setting, ...] = (
    Setting("ModelId", "model_id", str, "model id in the registry", flag=True),
    Setting("ModelPath", "model_path", str, "path to a .gguf or .smq file", flag=True),
    Setting(
        "CacheDir",
        "cache_dir",
        str,
        "registry cache directory (unset: the registry's platform default)",
        flag=True,
    ),
    Setting("Host", "host", str, "interface to listen on", flag=True, nonempty=True),
    Setting("Port", "port", int, "TCP port; 0 picks a free port", low=0, high=65535, flag=True),
    Setting(
        "MaxConcurrentRequests",
        "max_concurrent_requests",
        int,
        "requests generating at the same time",
        low=1,
        flag=True,
    ),
    Setting(
        "MaxQueueDepth",
        "max_queue_depth",
        int,
        "requests waiting for a slot before new ones are refused",
        low=0,
        flag=True,
    ),
    Setting(
        "RequestTimeoutMs",
        "request_timeout_ms",
        int,
        "time limit of one request, in milliseconds",
        low=1,
        flag=True,
    ),
    Setting(
        "MaxContextTokens",
        "max_context_tokens",
        int,
        "context window (prompt + completion) in tokens",
        low=16,
        flag=True,
    ),
    Setting(
        "DefaultMaxTokens",
        "default_max_tokens",
        int,
        "max_tokens when a request gives none",
        sampling="max_tokens",
    ),
    Setting(
        "DefaultTemperature",
        "default_temperature",
        float,
        "temperature when a request gives none",
        sampling="temperature",
    ),
    Setting("DefaultTopP", "default_top_p", float, "top_p when a request gives none", sampling="top_p"),
    Setting(
        "DefaultTopK", "default_top_k", int, "top_k when a request gives none (0: off)", sampling="top_k"
    ),
    Setting(
        "Threads",
        "threads",
        int,
        "compute threads (0: one per physical core, within the CPU quota)",
        low=0,
        flag=True,
    ),
    Setting(
        "MaxBodyBytes", "max_body_bytes", int, "largest request body accepted; larger ones get 413", low=1024
    ),
    Setting(
        "ApiKey",
        "api_key",
        str,
        "API key(s), comma-separated, that /v1/* and /metrics require as a Bearer token",
        flag=True,
        secret=True,
    ),
    Setting(
        "CorsOrigins",
        "cors_origins",
        str,
        "origins allowed by CORS, comma-separated, or * (unset: CORS off)",
        flag=True,
    ),
    Setting(
        "DrainTimeoutMs",
        "drain_timeout_ms",
        int,
        "on SIGTERM, how long in-flight requests may finish before exit",
        low=0,
        flag=True,
    ),
    Setting(
        "PrefixCacheMiB",
        "prefix_cache_mib",
        int,
        "memory (MiB) for the KV caches of finished requests, reused by new prompts that "
        "start the same way (0: no reuse)",
        low=0,
        flag=True,
    ),
    # Compiling a schema costs time and memory that grow faster than its size, and on deep
    # nesting, stack: each schema (response_format, a tool's parameters) is measured first.
    Setting(
        "MaxSchemaBytes",
        "max_schema_bytes",
        int,
        "largest JSON schema (response_format or a tool's parameters, as compact JSON) "
        "accepted; larger ones get 400",
        low=64,
    ),
    Setting(
        "MaxSchemaDepth",
        "max_schema_depth",
        int,
        "deepest nesting of objects and arrays in a JSON schema accepted; deeper ones get 400",
        low=4,
        high=200,
    ),
    Setting(
        "MaxTokenizeBytes",
        "max_tokenize_bytes",
        int,
        "longest /tokenize content (UTF-8 bytes) accepted; longer ones get 400",
        low=1,
    ),
    Setting(
        "HeaderTimeoutMs",
        "header_timeout_ms",
        int,
        "time a connection has to send a request's headers, then 408 and it is closed "
        "(one that sent nothing, e.g. idle keep-alive, is closed without an answer)",
        low=100,
        flag=True,
    ),
    Setting(
        "BodyTimeoutMs",
        "body_timeout_ms",
        int,
        "time a client has to send a request's whole body; then 408 and the connection is closed",
        low=100,
        flag=True,
    ),
)

_BY_KEY = {s.key.lower(): s for s in SETTINGS}
_BY_FLAG = {s.flag_name: s for s in SETTINGS if s.flag}
_HELP_FLAGS = ("-h", "--help")
_CONFIG_FLAG = "--config"

# A table/dataclass mismatch would silently drop a setting; fail at import instead.
assert [s.field for s in SETTINGS] == [f.name for f in dataclasses.fields(ServerOptions)]


class RawValue(NamedTuple):
    """A value as a source gave it (str, or any JSON value), and where it came from."""

    setting: Setting
    value: Any
    origin: str  # e.g. "environment ServerOptions__Port"


class CommandLine(NamedTuple):
    values: list[RawValue]
    config_path: str | None
    wants_help: bool


# ----------------------------------------------------------------------------- entry points


def load_options(
    argv: list[str], environ: Mapping[str, str] | None = None, cwd: str | None = None
) -> ServerOptions:
    """Settings from file, environment and ``argv`` (without the program name).

    ``-h``/``--help`` prints :func:`usage` and raises ``SystemExit(0)``, as argparse does.
    """
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    command_line = parse_command_line(argv)
    if command_line.wants_help:
        print(usage())
        raise SystemExit(0)
    layers = (
        read_settings_file(command_line.config_path, cwd),
        read_environment(environ),
        command_line.values,
    )
    merged: dict[str, RawValue] = {}
    for layer in layers:
        for raw in layer:
            merged[raw.setting.key] = raw
    options = ServerOptions(**{raw.setting.field: convert(raw) for raw in merged.values()})
    check_consistency(options, merged)
    return options


def describe(options: ServerOptions) -> dict[str, Any]:
    """The settings keyed by seed key, fit for a log line: secrets masked."""
    described = {}
    for setting in SETTINGS:
        value = getattr(options, setting.field)
        if setting.secret and value is not None:
            value = MASK
        described[setting.key] = value
    return described


def usage() -> str:
    defaults = ServerOptions()
    lines = [
        "usage: python -m smallmind.server [--config PATH] [--KEY VALUE ...]",
        "",
        "Serves a GGUF model behind an OpenAI-compatible HTTP API.",
        "",
        f"Settings come from {DEFAULT_SETTINGS_FILE} in the current directory (or --config PATH),",
        f'section "{SECTION}"; then the environment; then the command line (later wins).',
        "Keys are case-insensitive.",
        "",
        "  --config PATH   settings file to read instead of ./" + DEFAULT_SETTINGS_FILE,
        "  -h, --help      show this help and exit",
        "",
        "Settings:",
    ]
    for setting in SETTINGS:
        default = getattr(defaults, setting.field)
        rule = "" if setting.requirement == "a string" else f"; {setting.requirement}"
        lines.append(f"  {setting.key} ({setting.kind.__name__}, default {default!r}): {setting.help}{rule}")
        forms = [f"env {ENV_PREFIX}{setting.key}=VALUE", f"{'--' + CLI_PREFIX}{setting.key}=VALUE"]
        if setting.flag:
            forms.append(f"{setting.flag_name} VALUE")
        lines.append("      " + "   ".join(forms))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sources


def parse_command_line(argv: list[str]) -> CommandLine:
    values: list[RawValue] = []
    config_path = None
    wants_help = False
    position = 0
    while position < len(argv):
        token = argv[position]
        position += 1
        if token in _HELP_FLAGS:
            wants_help = True
            continue
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} on the command line (see --help)")
        flag, has_equals, value = token.partition("=")
        # Know the flag before taking a value, so a typo is reported as a typo.
        setting = None if flag == _CONFIG_FLAG else _setting_for_flag(flag)
        if not has_equals:
            # "--flag value": the value is the next token, unless that is another flag.
            if position >= len(argv) or argv[position].startswith("--"):
                raise ConfigError(f"{flag} needs a value (from command line)")
            value = argv[position]
            position += 1
        if setting is not None:
            values.append(RawValue(setting, value, f"command line {flag}"))
        elif not value:
            raise ConfigError(f"{_CONFIG_FLAG} needs a path (from command line)")
        else:
            config_path = value
    return CommandLine(values, config_path, wants_help)


def _setting_for_flag(flag: str) -> Setting:
    """The setting of ``--ServerOptions:Key`` (any case) or of an ordinary flag."""
    if flag[2:].lower().startswith(CLI_PREFIX.lower()):
        return _setting_for(flag[2 + len(CLI_PREFIX) :], f"command line {flag}")
    if flag in _BY_FLAG:
        return _BY_FLAG[flag]
    raise ConfigError(f"unknown option {flag} on the command line (see --help)")


def read_environment(environ: Mapping[str, str]) -> list[RawValue]:
    """``ServerOptions__Key`` variables (prefix and key in any case); others are ignored."""
    by_key: dict[str, RawValue] = {}
    for name in sorted(environ):
        if not name.lower().startswith(ENV_PREFIX.lower()):
            continue
        origin = f"environment {name}"
        raw = RawValue(_setting_for(name[len(ENV_PREFIX) :], origin), environ[name], origin)
        earlier = by_key.get(raw.setting.key)
        # On Linux PORT and Port can both be set; which one wins would be an accident.
        if earlier is not None and earlier.value != raw.value:
            raise ConfigError(
                f"{raw.setting.name} is set twice with different values "
                f"(from environment {_variable(earlier)} and {name})"
            )
        by_key[raw.setting.key] = raw
    return list(by_key.values())


def _variable(raw: RawValue) -> str:
    return raw.origin.removeprefix("environment ")


def read_settings_file(config_path: str | None, cwd: str) -> list[RawValue]:
    """The ``ServerOptions`` section of ``--config PATH`` or of ``./appsettings.json``."""
    if config_path is None:
        path = os.path.join(cwd, DEFAULT_SETTINGS_FILE)
        if not os.path.exists(path):
            return []  # the default file is optional
    else:
        path = os.path.join(cwd, os.path.expanduser(config_path))
    document = _load_json(path, explicit=config_path is not None)
    if not isinstance(document, dict):
        raise ConfigError(f"settings file {path} must hold a JSON object, got {_json_type(document)}")
    origin = f"file {path}"
    values = []
    for section_name, section in document.items():
        if section_name.lower() != SECTION.lower():
            continue  # Logging, Kestrel, ...: not ours
        if not isinstance(section, dict):
            raise ConfigError(f"{SECTION} must be a JSON object, got {_json_type(section)} (from {origin})")
        for key, value in section.items():
            setting = _setting_for(key, origin)
            if value is not None:  # null leaves the default, as .NET's binder does
                values.append(RawValue(setting, value, origin))
    return values


def _load_json(path: str, explicit: bool) -> Any:
    try:
        # utf-8-sig: files written by .NET tooling / Visual Studio often start with a BOM.
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        given = f" (from command line {_CONFIG_FLAG})" if explicit else ""
        raise ConfigError(f"settings file not found: {path}{given}") from None
    except IsADirectoryError:
        raise ConfigError(f"settings file is a directory: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"settings file is not UTF-8 text: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read settings file {path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"invalid JSON in settings file {path}: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None


def _setting_for(key: str, origin: str) -> Setting:
    setting = _BY_KEY.get(key.lower())
    if setting is None:
        raise ConfigError(
            f"unknown setting {SECTION}:{key} (from {origin}); "
            f"known keys: {', '.join(s.key for s in SETTINGS)}"
        )
    return setting


# ----------------------------------------------------------------------------- conversion

_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
# Plain decimal notation only: float() would also take "nan", "inf" and "1_0".
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def convert(raw: RawValue) -> Any:
    """The typed, range-checked value of ``raw``; ``ConfigError`` if it is neither."""
    setting = raw.setting
    converters = {int: _to_int, float: _to_float, str: _to_str}
    value = converters[setting.kind](raw.value, setting)
    if value is None or not _in_range(value, setting):
        raise ConfigError(
            f"{setting.name} must be {setting.requirement}, got {_shown(raw)} (from {raw.origin})"
        )
    return None if value == "" else value


def _to_int(value: Any, setting: Setting) -> int | None:
    if isinstance(value, bool):  # bool is an int subclass, but true is no port
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def _to_float(value: Any, setting: Setting) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) else None


def _to_str(value: Any, setting: Setting) -> str | None:
    if not isinstance(value, str):
        return None
    if setting.nonempty and not value.strip():
        return None
    # "" (e.g. ServerOptions__ModelPath=) means "unset", which convert() turns into None.
    return value


def _in_range(value: Any, setting: Setting) -> bool:
    return setting.kind is str or setting.rule.accepts(value)


def _shown(raw: RawValue) -> str:
    """The offending value for a message: one line, bounded, and never a secret."""
    if raw.setting.secret:
        return "<hidden>"
    return clip(repr(raw.value) if isinstance(raw.value, str) else json.dumps(raw.value))


def _json_type(value: Any) -> str:
    """'an object', 'an array', 'null', ...: the JSON type with its article."""
    name = json_type(value)
    return name if name == "null" else ("an " if name[0] in "aeiou" else "a ") + name


# An origin as browsers send it: scheme://host[:port], nothing after.
_ORIGIN = re.compile(r"https?://[^\s/?#*,]+")


def check_consistency(options: ServerOptions, merged: Mapping[str, RawValue]) -> None:
    """Rules about several settings at once, and the security settings, which fail closed:
    a value that would quietly turn a protection off stops start-up instead."""
    # An empty or blank key ("ApiKey=", "ServerOptions__ApiKey=$UNSET_VAR", ",") is most
    # likely a secret that failed to arrive, not a wish to open the server.
    if "ApiKey" in merged and not options.api_keys:
        raise ConfigError(
            f"{SECTION}:ApiKey holds no usable key (empty, or only commas and "
            f"blanks; from {merged['ApiKey'].origin}); give at least one key or "
            f"leave it unset"
        )
    if options.cors_origins is not None:
        _check_cors_origins(options, merged["CorsOrigins"].origin)
    if options.model_id is not None and options.model_path is not None:
        raise ConfigError(
            f"{SECTION}:ModelId and {SECTION}:ModelPath are both set "
            f"(ModelId from {merged['ModelId'].origin}, ModelPath from "
            f"{merged['ModelPath'].origin}); set only one"
        )


def _check_cors_origins(options: ServerOptions, origin: str) -> None:
    entries = options.cors_origin_list
    if not entries:
        raise ConfigError(f"{SECTION}:CorsOrigins lists no origin, only commas or blanks (from {origin})")
    for entry in entries:
        if entry != "*" and not _ORIGIN.fullmatch(entry):
            raise ConfigError(
                f"{SECTION}:CorsOrigins entry {entry[:60]!r} is not an origin "
                f"(scheme://host[:port], e.g. https://app.example) or * "
                f"(from {origin})"
            )
