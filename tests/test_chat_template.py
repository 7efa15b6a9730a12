"""Tests for smallmind.server.chat.template: real model templates rendered exactly as plain Jinja2
renders them, the built-in templates, message validation and the sandbox."""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
import pytest

from smallmind.errors import ModelFormatError, RequestValidationError
from smallmind.gguf import GGUFFile
from smallmind.server.chat import template as chat_template
from smallmind.server.chat.template import ChatTemplate, normalize_messages
from tests.conftest import default_model_path, reference_path

FIXED_NOW = datetime(2025, 3, 14, 15, 9, 26)

# template file -> (bos_token, eos_token) of that model's vocabulary
REAL_TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
}

USER_ONLY = [{"role": "user", "content": "What is the largest planet?"}]
SYSTEM_USER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the largest planet?"},
]
MULTI_TURN = SYSTEM_USER + [
    {"role": "assistant", "content": "Jupiter."},
    {"role": "user", "content": "  And the smallest?  "},
]
USER_ASSISTANT_USER = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a planet."},
]
TEXT_PARTS = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}],
    }
]
CONVERSATIONS = {
    "user_only": USER_ONLY,
    "system_user": SYSTEM_USER,
    "multi_turn": MULTI_TURN,
    "user_assistant_user": USER_ASSISTANT_USER,
    "text_parts": TEXT_PARTS,
}
# Gemma 2's template refuses a system role; those conversations are tested separately.
CONVERSATIONS_WITHOUT_SYSTEM = {"user_only", "user_assistant_user", "text_parts"}

GEMMA_PROMPT = (
    "<bos><start_of_turn>user\nWhat is the largest planet in the solar system?"
    "<end_of_turn>\n<start_of_turn>model\n"
)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Pin strftime_now so the Llama template's date matches the reference render."""
    monkeypatch.setattr(chat_template, "_current_time", lambda: FIXED_NOW)


def read_template(name: str) -> str:
    return reference_path("chat-templates", name).read_text(encoding="utf-8")


class ReferenceRaise(Exception):
    pass


def reference_render(
    source: str, messages: list, add_generation_prompt: bool, bos_token: str, eos_token: str
) -> str:
    """An independent render: plain Jinja2 with the Hugging Face conventions."""

    def raise_exception(message):
        raise ReferenceRaise(message)

    environment = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: FIXED_NOW.strftime(fmt)
    return environment.from_string(source).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def expected_messages(messages: list) -> list:
    """What a template should see: text parts joined with a newline, by hand."""
    flattened = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content)
        flattened.append({**message, "content": content})
    return flattened


def real_template_cases():
    for template_name in REAL_TEMPLATES:
        for conversation_name in CONVERSATIONS:
            if "gemma" in template_name and conversation_name not in CONVERSATIONS_WITHOUT_SYSTEM:
                continue
            for add_generation_prompt in (True, False):
                yield pytest.param(
                    template_name,
                    conversation_name,
                    add_generation_prompt,
                    id=f"{template_name}-{conversation_name}-{add_generation_prompt}",
                )


# --------------------------------------------------------------------------- real templates


@pytest.mark.parametrize(
    "template_name, conversation_name, add_generation_prompt", list(real_template_cases())
)
def test_real_template_matches_plain_jinja(template_name, conversation_name, add_generation_prompt):
    source = read_template(template_name)
    bos_token, eos_token = REAL_TEMPLATES[template_name]
    messages = CONVERSATIONS[conversation_name]
    expected = reference_render(
        source, expected_messages(messages), add_generation_prompt, bos_token, eos_token
    )
    template = ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)
    assert template.render(messages, add_generation_prompt=add_generation_prompt) == expected
    assert template.name == "gguf"


def test_real_templates_are_not_trivially_equal():
    """Guard the comparison above: the renders contain the conversation and the date."""
    llama = ChatTemplate(
        read_template("meta-llama-Llama-3.2-3B-Instruct.jinja"), bos_token="<|begin_of_text|>"
    )
    text = llama.render(SYSTEM_USER)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Today Date: 14 Mar 2025\n\nYou are terse.<|eot_id|>" in text
    assert text.endswith(
        "What is the largest planet?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    qwen = ChatTemplate(read_template("Qwen-Qwen2.5-7B-Instruct.jinja"))
    assert qwen.render(TEXT_PARTS, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nFirst part.\nSecond part.<|im_end|>\n"
    )


def test_developer_role_is_rendered_as_system():
    qwen = ChatTemplate(read_template("Qwen-Qwen2.5-7B-Instruct.jinja"))
    as_developer = [{"role": "developer", "content": "You are terse."}] + USER_ONLY
    assert qwen.render(as_developer) == qwen.render(SYSTEM_USER)


@pytest.mark.parametrize("messages", [SYSTEM_USER, MULTI_TURN])
def test_gemma2_template_refusal_becomes_validation_error(messages):
    gemma2 = ChatTemplate(read_template("google-gemma-2-2b-it.jinja"), bos_token="<bos>")
    with pytest.raises(RequestValidationError) as caught:
        gemma2.render(messages)
    assert str(caught.value) == "System role not supported"
    assert caught.value.param == "messages"


def test_gemma2_template_alternation_refusal():
    gemma2 = ChatTemplate(read_template("google-gemma-2-2b-it.jinja"), bos_token="<bos>")
    with pytest.raises(RequestValidationError, match="Conversation roles must alternate"):
        gemma2.render(USER_ONLY + USER_ONLY)


# --------------------------------------------------------------------------- built-ins


def test_default_model_gets_gemma_builtin():
    metadata = GGUFFile(default_model_path()).metadata
    assert "tokenizer.chat_template" not in metadata
    template = ChatTemplate.for_model(metadata)
    assert template.name == "gemma"
    messages = [{"role": "user", "content": "What is the largest planet in the solar system?"}]
    assert template.render(messages, add_generation_prompt=True) == GEMMA_PROMPT


def gemma_metadata(architecture="gemma3"):
    return {
        "general.architecture": architecture,
        "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>"],
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
    }


@pytest.mark.parametrize("architecture", ["gemma", "gemma2", "gemma3"])
def test_gemma_builtin_turns(architecture):
    template = ChatTemplate.for_model(gemma_metadata(architecture))
    assert template.name == "gemma"
    assert template.bos_token == "<bos>" and template.eos_token == "<eos>"
    assert template.render(MULTI_TURN, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nWhat is the largest planet?<end_of_turn>\n"
        "<start_of_turn>model\nJupiter.<end_of_turn>\n"
        "<start_of_turn>user\nAnd the smallest?<end_of_turn>\n"
    )


def test_gemma_builtin_system_without_user_and_tool_turn():
    template = ChatTemplate.for_model(gemma_metadata())
    assert template.render([{"role": "system", "content": "Be kind."}]) == (
        "<bos><start_of_turn>user\nBe kind.<end_of_turn>\n<start_of_turn>model\n"
    )
    tool_turn = [{"role": "tool", "content": "42", "tool_call_id": "call_1"}]
    assert template.render(tool_turn, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\n42<end_of_turn>\n"
    )


def test_gemma_builtin_without_vocabulary_uses_its_own_bos():
    template = ChatTemplate.for_model({"general.architecture": "gemma3"})
    assert template.render(USER_ONLY).startswith("<bos><start_of_turn>user\n")


def llama3_metadata(**extra):
    tokens = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "hello"]
    return {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 2,
        **extra,
    }


LLAMA3_MULTI_TURN = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is the largest planet?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nJupiter.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd the smallest?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.mark.parametrize("pre_tokenizer", ["llama-bpe", "llama3"])
def test_llama3_builtin_from_pre_tokenizer(pre_tokenizer):
    template = ChatTemplate.for_model(llama3_metadata(**{"tokenizer.ggml.pre": pre_tokenizer}))
    assert template.name == "llama3"
    assert template.render(MULTI_TURN) == LLAMA3_MULTI_TURN


def test_llama3_builtin_from_header_token():
    metadata = llama3_metadata(**{"tokenizer.ggml.pre": "default"})
    metadata["tokenizer.ggml.tokens"] = metadata["tokenizer.ggml.tokens"] + ["<|start_header_id|>"]
    template = ChatTemplate.for_model(metadata)
    assert template.name == "llama3"
    assert template.render(MULTI_TURN) == LLAMA3_MULTI_TURN


def test_llama2_vocabulary_falls_back_to_chatml():
    metadata = {
        "general.architecture": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
        "tokenizer.ggml.bos_token_id": 1,
    }
    assert ChatTemplate.for_model(metadata).name == "chatml"


CHATML_MULTI_TURN = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nWhat is the largest planet?<|im_end|>\n"
    "<|im_start|>assistant\nJupiter.<|im_end|>\n"
    "<|im_start|>user\n  And the smallest?  <|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3", "phi3", None])
def test_chatml_builtin(architecture):
    metadata = {
        "tokenizer.ggml.tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.pre": "qwen2",
    }
    if architecture:
        metadata["general.architecture"] = architecture
    template = ChatTemplate.for_model(metadata)
    assert template.name == "chatml"
    assert template.eos_token == "<|im_end|>"
    assert template.render(MULTI_TURN) == CHATML_MULTI_TURN
    assert template.render(USER_ONLY, add_generation_prompt=False) == (
        "<|im_start|>user\nWhat is the largest planet?<|im_end|>\n"
    )


def test_for_model_prefers_the_gguf_template():
    metadata = gemma_metadata()
    metadata["tokenizer.chat_template"] = "{{ bos_token }}|{{ eos_token }}|{{ messages[0].content }}"
    template = ChatTemplate.for_model(metadata)
    assert template.name == "gguf"
    assert template.render(USER_ONLY) == "<bos>|<eos>|What is the largest planet?"


def test_for_model_takes_tokens_argument():
    metadata = {"general.architecture": "llama", "tokenizer.ggml.bos_token_id": 0}
    template = ChatTemplate.for_model(metadata, tokens=["<|begin_of_text|>", "<|start_header_id|>"])
    assert template.name == "llama3"
    assert template.bos_token == "<|begin_of_text|>"


def test_for_model_rejects_special_token_outside_vocabulary():
    metadata = gemma_metadata()
    metadata["tokenizer.ggml.bos_token_id"] = 99
    with pytest.raises(ModelFormatError, match="bos_token_id"):
        ChatTemplate.for_model(metadata)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "messages must not be empty"),
        ("hello", "messages must be a list"),
        (None, "messages must be a list"),
        (["hello"], r"messages\[0\] must be an object"),
        (
            [{"content": "x"}],
            r"messages\[0\]\.role must be one of system, developer, user, "
            r"assistant, tool \(got missing\)",
        ),
        (USER_ONLY + [{"role": "wizard", "content": "x"}], r"messages\[1\]\.role must be one of"),
        ([{"role": "user"}], r"messages\[0\]\.content is missing"),
        ([{"role": "user", "content": None}], r"messages\[0\]\.content must not be null"),
        ([{"role": "user", "content": 7}], r"messages\[0\]\.content must be a string or a list"),
        ([{"role": "user", "content": []}], r"messages\[0\]\.content must not be an empty list"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            r"messages\[0\]\.content\[0\]: content parts of type 'image_url' are not supported",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "input_audio", "input_audio": {}}],
                }
            ],
            r"messages\[0\]\.content\[1\]: content parts of type 'input_audio' are not supported",
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], r"content\[0\]\.text must be a string"),
        ([{"role": "user", "content": [{"type": "video"}]}], r"content\[0\]\.type must be 'text'"),
        ([{"role": "user", "content": "x", "name": 3}], r"messages\[0\]\.name must be a string"),
        ([{"role": "user", "content": "x", "tool_calls": []}], r"tool_calls is only allowed"),
        ([{"role": "assistant"}], r"messages\[0\]\.content is missing"),
    ],
)
def test_validation_errors(messages, message):
    template = ChatTemplate(chat_template.CHATML_TEMPLATE, name="chatml")
    with pytest.raises(RequestValidationError, match=message) as caught:
        template.render(messages)
    assert caught.value.param == "messages"


def test_normalize_messages_keeps_other_keys_and_does_not_mutate():
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [
        {"role": "developer", "content": "rules", "name": "boss"},
        {"role": "assistant", "content": None, "tool_calls": tool_calls},
        {"role": "assistant", "tool_calls": tool_calls},
        {
            "role": "tool",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "tool_call_id": "call_1",
        },
    ]
    original = json.dumps(messages)
    assert normalize_messages(messages) == [
        {"role": "system", "content": "rules", "name": "boss"},
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
        {"role": "tool", "content": "a\nb", "tool_call_id": "call_1"},
    ]
    assert json.dumps(messages) == original


# --------------------------------------------------------------------------- sandbox and errors


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ ''['__class__'] }}",
        "{{ messages.__class__.__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{{ messages.append(1) }}",
        "{% set _ = messages[0].update({'role': 'system'}) %}",
    ],
)
def test_sandbox_refuses_internals(source):
    template = ChatTemplate(source)
    with pytest.raises(RequestValidationError, match="chat template failed") as caught:
        template.render(USER_ONLY)
    assert "SecurityError" in str(caught.value)
    assert "<class" not in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{ undefined_thing.attribute }}",
        "{{ messages[0].content + none }}",
        "{{ 1 / 0 }}",
    ],
)
def test_other_render_failures_are_validation_errors(source):
    with pytest.raises(RequestValidationError, match="^chat template failed: "):
        ChatTemplate(source).render(USER_ONLY)


@pytest.mark.parametrize(
    "source", ["{% for m in messages %}", "{{ messages[0 }}", "{% if %}{% endif %}", "{% frobnicate %}"]
)
def test_syntax_error_is_model_format_error(source):
    with pytest.raises(ModelFormatError, match="does not compile"):
        ChatTemplate(source)


def test_non_string_source_is_model_format_error():
    with pytest.raises(ModelFormatError):
        ChatTemplate(b"{{ messages }}")


def test_environment_conventions():
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m.content }}\n{% endfor %}"
        "{{ {'k': 'é<&>', 'n': [1]} | tojson }}|{{ {'a': 1} | tojson(indent=2) }}|"
        "{{ strftime_now('%Y-%m-%d') }}|{{ add_generation_prompt }}"
    )
    text = ChatTemplate(source).render(USER_ONLY + USER_ONLY, add_generation_prompt=False)
    assert text == ('What is the largest planet?\n{"k": "é<&>", "n": [1]}|{\n  "a": 1\n}|2025-03-14|False')


def test_template_is_compiled_once(monkeypatch):
    template = ChatTemplate(chat_template.CHATML_TEMPLATE)

    def no_compiling(*args, **kwargs):
        raise AssertionError("template compiled again")

    monkeypatch.setattr(jinja2.Environment, "from_string", no_compiling)
    monkeypatch.setattr(jinja2.Environment, "compile", no_compiling)
    assert template.render(USER_ONLY) == template.render(USER_ONLY)


def test_block_whitespace_is_trimmed_like_hugging_face():
    source = "{% if true %}\n  x\n    {% endif %}\nend"
    assert ChatTemplate(source).render(USER_ONLY) == "  x\nend"
