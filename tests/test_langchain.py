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

from conftest import default_model_path
from server_process import ServerProcess


@pytest.fixture(scope="module", autouse=True)
def server():
    default_model_path()
    proc = ServerProcess("--ServerOptions:MaxContextTokens=2048").wait_ready()
    TestSmallMindChat.base_url = proc.url + "/v1"
    try:
        yield proc
    finally:
        proc.stop()


# The model's weaknesses, one line each: what a 270M base-size model does wrong on its own.
WEAK_AUTO_TOOLS = "the 270M model seldom chooses to call a tool under tool_choice auto"
WEAK_TOOL_ARGS = "the 270M model does not pick the argument values the test expects"
WEAK_FOLLOW_UP = "the 270M model does not use tool results or few-shot examples as the test expects"
XFAIL = {
    "test_tool_calling": WEAK_TOOL_ARGS,
    "test_tool_calling_async": WEAK_TOOL_ARGS,
    "test_bind_runnables_as_tools": WEAK_AUTO_TOOLS,
    "test_tool_calling_with_no_arguments": WEAK_AUTO_TOOLS,
    "test_tool_message_histories_string_content": WEAK_AUTO_TOOLS,
    "test_tool_message_histories_list_content": WEAK_AUTO_TOOLS,
    "test_structured_few_shot_examples": WEAK_FOLLOW_UP,
    "test_agent_loop": WEAK_AUTO_TOOLS,
}


class TestSmallMindChat(ChatModelIntegrationTests):
    base_url = ""   # set by the server fixture

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict:
        return {"base_url": self.base_url, "api_key": "not-needed", "model": "smallmind", "stream_usage": True}

    @property
    def structured_output_kwargs(self) -> dict:
        return {"method": "json_schema"}   # constrained by the server's grammar

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
    counts = {m.group(1): float(m.group(2)) for m in
              re.finditer(r'^smallmind_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M)}
    assert counts, "no request was counted"
    errors = {labels: n for labels, n in counts.items() if re.search(r'status="[45]\d\d"', labels) and n > 0}
    assert not errors, errors
