"""LangChain's standard chat-model integration tests (langchain-tests) with langchain_openai's
ChatOpenAI against the real server.  Every test passes, or is an xfail whose reason names the
270M model's weakness; none may fail on an HTTP error status, which the last test checks in the
server's own request counts."""

from __future__ import annotations

import re
import urllib.request

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from conftest import server_fixture

server = server_fixture("--ServerOptions:MaxContextTokens=2048")


@pytest.fixture(scope="module", autouse=True)
def chat_model_on_the_server(server):
    TestSmallMindChat.base_url = server.url + "/v1"


# The model's weaknesses, one line each: what the 270M model gets wrong on its own.  Each was
# seen with the server answering correctly (200, well-formed, constrained where asked).  Not
# strict: greedy answers vary with batching and the prefix cache, so some of these pass at times.
WRONG_ARGUMENTS = "the 270M model writes wrong argument values (magic_function input 300 for '3')"
REPEATS = "the 270M model repeats a phrase inside a JSON string until max_tokens (100) cuts it"
NO_AUTO_CALL = "the 270M model answers in prose instead of calling the tool under tool_choice auto"
LOOPS_IN_ARGUMENT = (
    "the 270M model sometimes repeats itself inside an argument until max_tokens (100) cuts it"
)
COPIES_DOCSTRING = "the 270M model copies the tool's docstring into an argument until max_tokens (100)"
XFAIL = (
    {}
    if __import__("os").environ.get("LC_DISCOVER")
    else {
        "test_tool_calling": WRONG_ARGUMENTS,
        "test_tool_calling_async": WRONG_ARGUMENTS,
        "test_structured_output": REPEATS,
        "test_structured_output_async": REPEATS,
        "test_structured_output_pydantic_2_v1": REPEATS,
        "test_structured_output_optional_param": REPEATS,
        "test_json_mode": REPEATS,
        "test_agent_loop": NO_AUTO_CALL,
        "test_tool_choice": LOOPS_IN_ARGUMENT,
        "test_unicode_tool_call_integration": COPIES_DOCSTRING,
    }
)


class TestSmallMindChat(ChatModelIntegrationTests):
    base_url = ""  # set by the server fixture

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict:
        return {
            "base_url": self.base_url,
            "api_key": "not-needed",
            "model": "smallmind",
            "stream_usage": True,
        }

    @property
    def structured_output_kwargs(self) -> dict:
        return {"method": "json_schema"}  # constrained by the server's grammar

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @pytest.fixture(autouse=True)
    def _known_weaknesses(self, request):
        reason = XFAIL.get(request.node.originalname)
        if reason:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=False))


def test_no_request_failed_with_an_http_error(server):
    """Runs last: whatever the model got wrong, the server answered every request with 2xx."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^smallmind_requests_total\{([^}]*)\} ([0-9.e+]+)$", text, re.M)
    }
    assert counts, "no request was counted"
    # the API's routes only: the probes answer 503 while the server starts
    errors = {
        labels: n
        for labels, n in counts.items()
        if 'endpoint="/v1/' in labels and re.search(r'status="[45]\d\d"', labels) and n > 0
    }
    assert not errors, errors
