"""The server's settings: defaults, the three sources and their order, and one-line errors
that name the key and its source.  Every test passes its own environ and cwd, so neither the
real environment nor an appsettings.json lying around can leak in."""

import dataclasses
import json

import pytest

from smallmind.engine.sampling_params import SamplingParams
from smallmind.errors import ConfigError
from smallmind.server.config import SETTINGS, ServerOptions, describe, load_options, usage


def write_settings(directory, section: dict, name="appsettings.json", **other_sections):
    path = directory / name
    path.write_text(json.dumps({"ServerOptions": section, **other_sections}), encoding="utf-8")
    return path


def load(tmp_path, argv=(), environ=None):
    return load_options(list(argv), environ=environ or {}, cwd=str(tmp_path))


def config_error(tmp_path, argv=(), environ=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, argv, environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- defaults


def test_defaults_without_any_source(tmp_path):
    options = load(tmp_path)
    assert options == ServerOptions()
    assert options.host == "localhost"
    assert options.port == 8080
    assert options.max_concurrent_requests == 4
    assert options.max_queue_depth == 32
    assert options.request_timeout_ms == 300_000
    assert options.max_context_tokens == 4096
    assert options.default_max_tokens == 100
    assert options.default_temperature == 0.8
    assert options.default_top_p == 0.95
    assert options.default_top_k == 40
    assert options.threads == 0
    assert options.max_body_bytes == 10_485_760
    assert options.model_id is options.model_path is options.cache_dir is options.api_key is None


def test_table_covers_every_field_once():
    fields = [f.name for f in dataclasses.fields(ServerOptions)]
    assert [s.field for s in SETTINGS] == fields
    assert len({s.key.lower() for s in SETTINGS}) == len(SETTINGS)


# ----------------------------------------------------------------------------- each source


def test_default_settings_file_in_cwd(tmp_path):
    write_settings(
        tmp_path,
        {"Port": 9001, "Host": "0.0.0.0", "DefaultTemperature": 0.5, "ModelId": "gemma3-270m"},
        Logging={"LogLevel": {"Default": "Information"}},
    )
    options = load(tmp_path)
    assert (options.port, options.host, options.default_temperature, options.model_id) == (
        9001,
        "0.0.0.0",
        0.5,
        "gemma3-270m",
    )


def test_settings_file_accepts_numeric_strings_and_a_bom(tmp_path):
    text = json.dumps({"ServerOptions": {"Port": "9002", "DefaultTopP": "0.5"}})
    (tmp_path / "appsettings.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    options = load(tmp_path)
    assert (options.port, options.default_top_p) == (9002, 0.5)


def test_settings_file_null_keeps_the_default(tmp_path):
    write_settings(tmp_path, {"Port": None, "ApiKey": None})
    assert load(tmp_path) == ServerOptions()


def test_environment(tmp_path):
    environ = {
        "ServerOptions__Port": "9003",
        "ServerOptions__ModelPath": "/m/x.gguf",
        "ServerOptions__DefaultTopK": "0",
        "PATH": "/usr/bin",
        "Port": "1",
    }
    options = load(tmp_path, environ=environ)
    assert (options.port, options.model_path, options.default_top_k) == (9003, "/m/x.gguf", 0)


def test_environment_empty_string_unsets_an_optional_string(tmp_path):
    assert load(tmp_path, environ={"ServerOptions__ModelPath": ""}).model_path is None


def test_command_line_serveroptions_both_forms(tmp_path):
    options = load(tmp_path, ["--ServerOptions:Port=9004", "--ServerOptions:Threads", "3"])
    assert (options.port, options.threads) == (9004, 3)


@pytest.mark.parametrize(
    "argv",
    [
        [
            "--host",
            "::1",
            "--port",
            "9005",
            "--model-path",
            "/m/a.gguf",
            "--cache-dir",
            "/c",
            "--threads",
            "2",
            "--max-concurrent-requests",
            "8",
            "--max-queue-depth",
            "0",
            "--request-timeout-ms",
            "1000",
            "--max-context-tokens",
            "2048",
            "--api-key",
            "sk-1",
        ],
        [
            "--host=::1",
            "--port=9005",
            "--model-path=/m/a.gguf",
            "--cache-dir=/c",
            "--threads=2",
            "--max-concurrent-requests=8",
            "--max-queue-depth=0",
            "--request-timeout-ms=1000",
            "--max-context-tokens=2048",
            "--api-key=sk-1",
        ],
    ],
)
def test_command_line_flags_both_forms(tmp_path, argv):
    options = load(tmp_path, argv)
    assert options == ServerOptions(
        host="::1",
        port=9005,
        model_path="/m/a.gguf",
        cache_dir="/c",
        threads=2,
        max_concurrent_requests=8,
        max_queue_depth=0,
        request_timeout_ms=1000,
        max_context_tokens=2048,
        api_key="sk-1",
    )


def test_model_id_flag(tmp_path):
    assert load(tmp_path, ["--model-id", "gemma3-270m"]).model_id == "gemma3-270m"


def test_flag_value_may_be_negative_looking(tmp_path):
    # "-1" is a value, not a flag; it then fails the range check.
    assert "ServerOptions:Threads" in config_error(tmp_path, ["--threads", "-1"])


# ----------------------------------------------------------------------------- precedence


def test_precedence_file_then_environment_then_command_line(tmp_path):
    write_settings(tmp_path, {"Port": 1001, "Host": "file-host", "Threads": 1})
    environ = {"ServerOptions__Port": "1002", "ServerOptions__Host": "env-host"}
    options = load(tmp_path, ["--port", "1003"], environ)
    assert (options.port, options.host, options.threads) == (1003, "env-host", 1)


def test_later_command_line_value_wins(tmp_path):
    options = load(tmp_path, ["--ServerOptions:Port=1", "--port", "2"])
    assert options.port == 2


def test_overridden_bad_value_is_not_an_error(tmp_path):
    # As in .NET: only the final value of a key is bound.
    write_settings(tmp_path, {"Port": "abc"})
    assert load(tmp_path, ["--port", "1004"]).port == 1004


# ----------------------------------------------------------------------------- case


def test_keys_are_case_insensitive_everywhere(tmp_path):
    (tmp_path / "appsettings.json").write_text(json.dumps({"serveroptions": {"maxqueuedepth": 5}}))
    environ = {"SERVEROPTIONS__PORT": "1005", "serverOptions__threads": "6"}
    options = load(tmp_path, ["--serveroptions:HOST=h", "--SERVEROPTIONS:defaulttopk", "7"], environ)
    assert (options.max_queue_depth, options.port, options.threads, options.host, options.default_top_k) == (
        5,
        1005,
        6,
        "h",
        7,
    )


def test_same_key_twice_in_environment_with_different_values(tmp_path):
    message = config_error(tmp_path, environ={"ServerOptions__Port": "1", "SERVEROPTIONS__PORT": "2"})
    assert "ServerOptions:Port" in message and "SERVEROPTIONS__PORT" in message


# ----------------------------------------------------------------------------- --config


def test_config_flag_replaces_the_default_file(tmp_path):
    write_settings(tmp_path, {"Port": 1})
    other = write_settings(tmp_path, {"Port": 1006}, name="other.json")
    assert load(tmp_path, ["--config", str(other)]).port == 1006
    assert load(tmp_path, ["--config=other.json"]).port == 1006  # relative to cwd


def test_missing_config_file_is_an_error(tmp_path):
    message = config_error(tmp_path, ["--config", "nope.json"])
    assert "nope.json" in message and "not found" in message


def test_invalid_json(tmp_path):
    (tmp_path / "appsettings.json").write_text('{"ServerOptions": {"Port": 1,}}')
    message = config_error(tmp_path)
    assert "invalid JSON" in message and "appsettings.json" in message and "line 1" in message


def test_section_must_be_an_object(tmp_path):
    (tmp_path / "appsettings.json").write_text('{"ServerOptions": [1]}')
    assert "ServerOptions must be a JSON object" in config_error(tmp_path)


@pytest.mark.parametrize(
    "key, value",
    [
        ("Port", True),
        ("Port", 80.5),
        ("Port", {"a": 1}),
        ("Host", 5),
        ("DefaultTopP", "x"),
    ],
)
def test_wrong_json_type(tmp_path, key, value):
    path = write_settings(tmp_path, {key: value})
    message = config_error(tmp_path)
    assert f"ServerOptions:{key}" in message and f"(from file {path})" in message


# ----------------------------------------------------------------------------- bad values


def test_bad_integer_names_key_and_source(tmp_path):
    message = config_error(tmp_path, environ={"ServerOptions__Port": "abc"})
    assert message == (
        "ServerOptions:Port must be an integer between 0 and 65535, got 'abc' "
        "(from environment ServerOptions__Port)"
    )


@pytest.mark.parametrize(
    "argv, key",
    [
        (["--port", "65536"], "Port"),
        (["--port", "8080.0"], "Port"),
        (["--max-concurrent-requests", "0"], "MaxConcurrentRequests"),
        (["--max-queue-depth", "-1"], "MaxQueueDepth"),
        (["--request-timeout-ms", "0"], "RequestTimeoutMs"),
        (["--max-context-tokens", "15"], "MaxContextTokens"),
        (["--ServerOptions:DefaultMaxTokens=0"], "DefaultMaxTokens"),
        (["--ServerOptions:DefaultTemperature=2.5"], "DefaultTemperature"),
        (["--ServerOptions:DefaultTemperature=-0.1"], "DefaultTemperature"),
        (["--ServerOptions:DefaultTemperature=nan"], "DefaultTemperature"),
        (["--ServerOptions:DefaultTopP=0"], "DefaultTopP"),
        (["--ServerOptions:DefaultTopP=1.01"], "DefaultTopP"),
        (["--ServerOptions:DefaultTopK=-1"], "DefaultTopK"),
        (["--ServerOptions:MaxBodyBytes=1023"], "MaxBodyBytes"),
        (["--host="], "Host"),
    ],
)
def test_out_of_range_or_malformed_values(tmp_path, argv, key):
    message = config_error(tmp_path, argv)
    assert message.startswith(f"ServerOptions:{key} must be ")
    assert "(from command line --" in message


def test_bad_float_from_file(tmp_path):
    path = write_settings(tmp_path, {"DefaultTemperature": "warm"})
    assert config_error(tmp_path) == (
        f"ServerOptions:DefaultTemperature must be a number between 0 and 2, got 'warm' (from file {path})"
    )


def test_range_edges_are_accepted(tmp_path):
    options = load(
        tmp_path,
        [
            "--port",
            "0",
            "--ServerOptions:DefaultTemperature=2",
            "--ServerOptions:DefaultTopP=1",
            "--ServerOptions:MaxBodyBytes",
            "1024",
            "--max-context-tokens=16",
        ],
    )
    assert (
        options.port,
        options.default_temperature,
        options.default_top_p,
        options.max_body_bytes,
        options.max_context_tokens,
    ) == (0, 2.0, 1.0, 1024, 16)


def test_api_key_is_never_echoed(tmp_path):
    write_settings(tmp_path, {"ApiKey": 12345})
    message = config_error(tmp_path)
    assert "ServerOptions:ApiKey" in message and "12345" not in message


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_api_key_without_a_usable_key_fails_closed(tmp_path, value):
    message = config_error(tmp_path, environ={"ServerOptions__ApiKey": value})
    assert "ServerOptions:ApiKey" in message and "no usable key" in message


@pytest.mark.parametrize(
    "value", [",", "example.com", "https://app.example/path", "https://*.example", "*, ftp://x"]
)
def test_cors_origins_that_cannot_be_parsed_fail_closed(tmp_path, value):
    message = config_error(tmp_path, [f"--ServerOptions:CorsOrigins={value}"])
    assert "ServerOptions:CorsOrigins" in message


def test_cors_origins_that_parse(tmp_path):
    options = load(tmp_path, ["--ServerOptions:CorsOrigins=https://a.example, http://b.example:8080,*"])
    assert options.cors_origin_list == ["https://a.example", "http://b.example:8080", "*"]


# ----------------------------------------------------------------------------- unknowns


@pytest.mark.parametrize(
    "argv, environ, section",
    [
        (["--ServerOptions:Prot=1"], {}, {}),
        ([], {"ServerOptions__Prot": "1"}, {}),
        ([], {}, {"Prot": 1}),
    ],
)
def test_unknown_key_in_any_source(tmp_path, argv, environ, section):
    write_settings(tmp_path, section)
    message = config_error(tmp_path, argv, environ)
    assert "unknown setting ServerOptions:Prot" in message


def test_unrelated_environment_and_sections_are_ignored(tmp_path):
    write_settings(tmp_path, {}, Kestrel={"Endpoints": {}})
    assert load(tmp_path, environ={"HOME": "/x", "Logging__LogLevel": "Debug"}) == ServerOptions()


@pytest.mark.parametrize("argv", [["--prot", "1"], ["--port"], ["stray"], ["--port", "--host"]])
def test_unknown_flag_missing_value_or_stray_argument(tmp_path, argv):
    config_error(tmp_path, argv)


@pytest.mark.parametrize("argv", [["--prot=1"], ["--prot"], ["--prot", "1"]])
def test_unknown_flag_is_named_as_unknown(tmp_path, argv):
    assert config_error(tmp_path, argv).startswith("unknown option --prot ")


def test_missing_value_is_named(tmp_path):
    assert config_error(tmp_path, ["--port"]) == "--port needs a value (from command line)"


# ----------------------------------------------------------------------------- consistency


def test_model_id_and_model_path_conflict(tmp_path):
    write_settings(tmp_path, {"ModelId": "gemma3-270m"})
    message = config_error(tmp_path, ["--model-path", "/m/x.gguf"])
    assert "ModelId" in message and "ModelPath" in message
    assert "file" in message and "--model-path" in message


def test_model_id_overridden_by_empty_value_is_no_conflict(tmp_path):
    write_settings(tmp_path, {"ModelId": "gemma3-270m"})
    options = load(tmp_path, ["--model-path", "/m/x.gguf", "--model-id="])
    assert (options.model_id, options.model_path) == (None, "/m/x.gguf")


# ----------------------------------------------------------------------------- help, describe


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_every_key_and_exits_zero(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as caught:
        load(tmp_path, [flag])
    assert caught.value.code == 0
    printed = capsys.readouterr().out
    assert printed.strip() == usage().strip()
    for setting in SETTINGS:
        assert setting.key in printed
        assert f"ServerOptions__{setting.key}" in printed
        assert f"--ServerOptions:{setting.key}" in printed
    assert "--port" in printed and "default 8080" in printed and "--config" in printed


def test_describe_masks_the_api_key(tmp_path):
    described = describe(load(tmp_path, ["--api-key", "sk-secret", "--port", "1"]))
    assert list(described) == [s.key for s in SETTINGS]
    assert described["ApiKey"] == "***" and described["Port"] == 1
    assert "sk-secret" not in json.dumps(described)
    assert describe(ServerOptions())["ApiKey"] is None


def test_sampling_defaults_are_judged_by_sampling_params_ranges(tmp_path):
    # the message comes from SamplingParams' range table, not from a copy of it here
    message = config_error(tmp_path, ["--ServerOptions:DefaultTopK=-1"])
    assert message == (
        "ServerOptions:DefaultTopK must be an integer >= 0 (0 disables it), got '-1' "
        "(from command line --ServerOptions:DefaultTopK)"
    )
    assert ServerOptions().sampling_defaults() == SamplingParams()
    options = load(tmp_path, ["--ServerOptions:DefaultTemperature=0.3", "--ServerOptions:DefaultMaxTokens=7"])
    assert options.sampling_defaults() == SamplingParams(temperature=0.3, max_tokens=7)
