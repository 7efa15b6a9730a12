"""access_line / log_access: one line of valid JSON per request, keys in a fixed order."""

import json
import logging

from smallmind.server.access_log import FIELDS, access_line, log_access

ARGS = dict(
    request_id="abc123",
    method="POST",
    route="/v1/chat/completions",
    path="/v1/chat/completions",
    status=200,
    duration_ms=12.34567,
    prompt_tokens=10,
    completion_tokens=20,
    remote_ip="127.0.0.1",
)


def test_line_is_one_json_object_with_every_field():
    line = access_line(**ARGS)
    assert "\n" not in line
    record = json.loads(line)
    assert record == {**ARGS, "duration_ms": 12.346}


def test_keys_come_in_a_stable_order():
    assert list(json.loads(access_line(**ARGS))) == list(FIELDS)


def test_weird_paths_stay_on_one_line():
    path = '/v1/x\n\r\tinjected\u2028\u2029\x00\udc80"quoted"\\'
    line = access_line(**{**ARGS, "path": path})
    assert len(line.splitlines()) == 1  # splitlines also breaks on U+2028/2029
    assert line.isascii()
    assert json.loads(line)["path"] == path


def test_missing_token_counts_and_ip_are_null():
    line = access_line(
        **{**ARGS, "route": "/healthz", "prompt_tokens": None, "completion_tokens": None, "remote_ip": None}
    )
    record = json.loads(line)
    assert record["prompt_tokens"] is None and record["completion_tokens"] is None
    assert record["remote_ip"] is None


def test_non_finite_duration_is_null_so_the_line_stays_valid_json():
    line = access_line(**{**ARGS, "duration_ms": float("nan")})
    assert json.loads(line)["duration_ms"] is None


def test_log_access_writes_the_line_to_the_access_logger_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="smallmind.access"):
        log_access(**ARGS)
    [entry] = [r for r in caplog.records if r.name == "smallmind.access"]
    assert entry.levelno == logging.INFO
    assert entry.getMessage() == access_line(**ARGS)


def test_log_access_is_silent_when_info_is_disabled(caplog):
    with caplog.at_level(logging.WARNING, logger="smallmind.access"):
        log_access(**ARGS)
    assert not [r for r in caplog.records if r.name == "smallmind.access"]
