"""Request validation, the model catalog, the child's argv/env, and settings loading (sans-io)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from quartproxy.backends.process import child_env, toml_string
from quartproxy.backends.proto.backend import build_argv
from quartproxy.config import Settings, SettingsError, env_names, load_settings
from quartproxy.errors import ApiError
from quartproxy.models import ModelCatalog
from quartproxy.validation import flatten_messages, parse_chat, parse_legacy

USER = [{"role": "user", "content": "hi"}]


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for field_name in Settings.model_fields:
        names.update(env_names(field_name))
    return names


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the developer's shell or a stray .env file."""
    for name in list(os.environ):
        if name.startswith("PROXY_") or name.upper() in _settings_env_names():
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def make_settings(**fields: Any) -> Settings:
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


@pytest.fixture
def catalog() -> ModelCatalog:
    return ModelCatalog(make_settings(codex_model="gpt-5", extra_models="my-model,org-x:1"))


def chat(catalog: ModelCatalog, max_prompt_tokens: int = 0, **body: Any) -> Any:
    body.setdefault("messages", USER)
    return parse_chat(body, catalog, max_prompt_tokens=max_prompt_tokens)


def chat_error(catalog: ModelCatalog, max_prompt_tokens: int = 0, **body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        chat(catalog, max_prompt_tokens, **body)
    return info.value


# --------------------------------------------------------------------------------------------
# parse_chat: accepted shapes


def test_string_content(catalog: ModelCatalog) -> None:
    request = chat(catalog, model="codex-5")
    assert request.prompt == "[user] hi"
    assert request.legacy is False
    assert request.stream is False and request.include_usage is False
    assert request.max_tokens is None and request.effort is None and request.user is None


def test_all_roles_and_null_content() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "dev rules"},
        {"role": "user", "content": "run ls"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "content": None, "tool_call_id": "c1"},
        {"role": "tool", "content": "README.txt"},
    ]
    assert flatten_messages(messages) == (
        "[system] be brief\n[developer] dev rules\n[user] run ls\n[assistant] [tool_call c1] "
        "ls({})\n[tool c1] \n[tool] README.txt"
    )


def test_parts_array_text_and_image_marker(catalog: ModelCatalog) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "this picture?"},
            ],
        }
    ]
    request = chat(catalog, messages=messages)
    assert "[image]" in request.prompt
    assert "base64" not in request.prompt and "image_url" not in request.prompt
    assert "What is in" in request.prompt and "this picture?" in request.prompt
    assert request.prompt.startswith("[user] What is in")
    assert request.prompt.index("What is in") < request.prompt.index("[image]") < (
        request.prompt.index("this picture?")
    )


@pytest.mark.parametrize(
    ("part", "marker"),
    [
        ({"type": "input_audio", "input_audio": {"data": "xx"}}, "[audio]"),
        ({"type": "file", "file": {"file_data": "xx"}}, "[file]"),
        ({"type": "mystery", "payload": {"a": 1}}, "[mystery]"),
    ],
)
def test_non_text_parts_are_markers_never_json(part: dict[str, Any], marker: str) -> None:
    text = flatten_messages([{"role": "user", "content": [part]}])
    assert text == f"[user] {marker}"
    assert "{" not in text


def test_empty_parts_array() -> None:
    assert flatten_messages([{"role": "user", "content": []}]) == "[user] "


def test_ignored_fields_are_accepted(catalog: ModelCatalog) -> None:
    request = chat(
        catalog,
        temperature=0.2, top_p=1, presence_penalty=0, frequency_penalty=0, seed=7, stop=["\n"],
        logprobs=False, response_format={"type": "text"}, tools=[], tool_choice="auto",
        parallel_tool_calls=False, metadata={"a": "b"}, store=False, service_tier="auto",
        something_new={"x": 1}, user="alice",
    )
    assert request.prompt == "[user] hi"
    assert request.user == "alice"


def test_stream_and_include_usage(catalog: ModelCatalog) -> None:
    request = chat(catalog, stream=True, stream_options={"include_usage": True})
    assert request.stream is True and request.include_usage is True
    request = chat(catalog, stream=True, stream_options={"include_usage": False})
    assert request.include_usage is False
    request = chat(catalog, stream=True)
    assert request.include_usage is False


def test_include_usage_false_when_not_streaming(catalog: ModelCatalog) -> None:
    request = chat(catalog, stream=False, stream_options={"include_usage": True})
    assert request.stream is False and request.include_usage is False
    request = chat(catalog, stream_options={"include_usage": True})
    assert request.include_usage is False


def test_n_one_and_max_tokens(catalog: ModelCatalog) -> None:
    assert chat(catalog, n=1, max_tokens=5).max_tokens == 5
    assert chat(catalog, max_completion_tokens=9).max_tokens == 9
    assert chat(catalog, max_tokens=5, max_completion_tokens=9).max_tokens == 9
    assert chat(catalog, max_tokens=None).max_tokens is None


# --------------------------------------------------------------------------------------------
# parse_chat: rejections


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stream": "false"}, "stream"),
        ({"stream": 0}, "stream"),
        ({"stream": "true"}, "stream"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"n": "1"}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": False}, "max_completion_tokens"),
        ({"stream_options": "yes"}, "stream_options"),
        ({"stream_options": ["include_usage"]}, "stream_options"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": 3}, "reasoning_effort"),
        ({"reasoning": {"effort": "max"}}, "reasoning_effort"),
        ({"reasoning": "high"}, "reasoning"),
        ({"user": 42}, "user"),
        ({"model": 5}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "USER", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [*USER, {"role": "bot", "content": "x"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "system"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content",
        ),
    ],
)
def test_rejections_name_the_param(
    catalog: ModelCatalog, body: dict[str, Any], param: str
) -> None:
    error = chat_error(catalog, **body)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.code == "invalid_request_error"
    assert error.param == param


def test_include_usage_wrong_type_is_400(catalog: ModelCatalog) -> None:
    error = chat_error(catalog, stream=True, stream_options={"include_usage": "yes"})
    assert error.status == 400
    assert error.param is not None and error.param.endswith("include_usage")


def test_include_usage_param_is_the_field_path(catalog: ModelCatalog) -> None:
    error = chat_error(catalog, stream=True, stream_options={"include_usage": "yes"})
    assert error.param == "stream_options.include_usage"


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_body_must_be_an_object(catalog: ModelCatalog, body: Any) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat(body, catalog, max_prompt_tokens=0)
    assert info.value.status == 400
    with pytest.raises(ApiError):
        parse_legacy(body, catalog, max_prompt_tokens=0)


@pytest.mark.parametrize(
    "model",
    ["gpt-4o", "codex-6", 'codex-5" -c foo=bar', "codex-5 -c foo=bar", "codex-5-ultra",
     "codex-5-", "GPT-5", "my-model-2"],
)
def test_unknown_model_is_404(catalog: ModelCatalog, model: str) -> None:
    error = chat_error(catalog, model=model)
    assert error.status == 404
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert error.message == f"The model {model} does not exist or you do not have access to it."


# --------------------------------------------------------------------------------------------
# Models and effort


def test_missing_model_is_the_default(catalog: ModelCatalog) -> None:
    for body in ({}, {"model": None}, {"model": ""}):
        request = chat(catalog, **body)
        assert request.model == "codex-5"
        assert request.effective_model == "gpt-5"
        assert request.effort is None


def test_dev_default_model() -> None:
    catalog = ModelCatalog(make_settings(env="dev", codex_model="gpt-5"))
    request = chat(catalog)
    assert request.model == "codev-5"
    assert request.effective_model == "gpt-5"


@pytest.mark.parametrize(
    ("model", "effort"),
    [
        ("codex-5", None),
        ("codex-5-minimal", "minimal"),
        ("codex-5-low", "low"),
        ("codex-5-medium", "medium"),
        ("codex-5-high", "high"),
        ("CODEX-5-HIGH", "high"),
        ("Codex-5-Low", "low"),
        ("codev-5", None),
        ("codev-5-medium", "medium"),
        ("CODEV-5-MINIMAL", "minimal"),
    ],
)
def test_aliases_case_insensitive(catalog: ModelCatalog, model: str, effort: str | None) -> None:
    request = chat(catalog, model=model)
    assert request.model == model  # the response echoes what the client asked
    assert request.effective_model == "gpt-5"
    assert request.effort == effort


@pytest.mark.parametrize("model", ["gpt-5", "my-model", "org-x:1"])
def test_exact_codex_model_and_extra_models_pass_through(
    catalog: ModelCatalog, model: str
) -> None:
    request = chat(catalog, model=model)
    assert request.model == model
    assert request.effective_model == model
    assert request.effort is None


def test_effort_precedence(catalog: ModelCatalog) -> None:
    both = chat(
        catalog, model="codex-5-minimal", reasoning={"effort": "high"}, reasoning_effort="low"
    )
    assert both.effort == "high"
    top_level = chat(catalog, model="codex-5-minimal", reasoning_effort="low")
    assert top_level.effort == "low"
    alias = chat(catalog, model="codex-5-minimal")
    assert alias.effort == "minimal"
    null_reasoning = chat(
        catalog, model="codex-5-medium", reasoning={"effort": None}, reasoning_effort="high"
    )
    assert null_reasoning.effort == "high"
    empty_reasoning = chat(catalog, model="codex-5-medium", reasoning={})
    assert empty_reasoning.effort == "medium"
    assert chat(catalog, reasoning_effort="HIGH").effort == "high"


def test_bad_explicit_effort_is_not_rescued_by_alias(catalog: ModelCatalog) -> None:
    error = chat_error(catalog, model="codex-5-high", reasoning={"effort": "turbo"})
    assert (error.status, error.param) == (400, "reasoning_effort")
    error = chat_error(catalog, model="codex-5-high", reasoning_effort="none")
    assert (error.status, error.param) == (400, "reasoning_effort")


def test_effort_with_exact_model(catalog: ModelCatalog) -> None:
    request = chat(catalog, model="my-model", reasoning_effort="low")
    assert (request.effective_model, request.effort) == ("my-model", "low")


# --------------------------------------------------------------------------------------------
# Prompt guard


def test_prompt_guard(catalog: ModelCatalog) -> None:
    messages = [{"role": "user", "content": "x" * 391}]  # "[user] " + 391 = 398 chars -> 100
    assert chat(catalog, max_prompt_tokens=100, messages=messages).prompt.endswith("x")
    error = chat_error(catalog, max_prompt_tokens=99, messages=messages)
    assert error.status == 400
    assert error.code == "context_length_exceeded"
    assert error.type == "invalid_request_error"
    assert error.param == "messages"
    # 0 = off
    big = [{"role": "user", "content": "x" * 100_000}]
    assert chat(catalog, max_prompt_tokens=0, messages=big).prompt


def test_prompt_guard_legacy(catalog: ModelCatalog) -> None:
    with pytest.raises(ApiError) as info:
        parse_legacy({"prompt": "y" * 1000}, catalog, max_prompt_tokens=10)
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "prompt"
    assert info.value.status == 400


# --------------------------------------------------------------------------------------------
# parse_legacy


def test_legacy_string_prompt(catalog: ModelCatalog) -> None:
    request = parse_legacy(
        {"prompt": "Say hi", "model": "codex-5-low", "stream": True,
         "stream_options": {"include_usage": True}, "max_tokens": 16},
        catalog, max_prompt_tokens=0,
    )
    assert request.legacy is True
    assert request.prompt == "[user] Say hi"
    assert (request.model, request.effort, request.stream, request.include_usage) == (
        "codex-5-low", "low", True, True,
    )
    assert request.max_tokens == 16


def test_legacy_array_prompt_joined_with_newlines(catalog: ModelCatalog) -> None:
    request = parse_legacy({"prompt": ["one", "two", "three"]}, catalog, max_prompt_tokens=0)
    assert request.prompt == "[user] one\ntwo\nthree"


@pytest.mark.parametrize("prompt", [None, "", "   \n", [], ["", ""], [1, 2], ["a", None], 5])
def test_legacy_bad_prompt(catalog: ModelCatalog, prompt: Any) -> None:
    body: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
    with pytest.raises(ApiError) as info:
        parse_legacy(body, catalog, max_prompt_tokens=0)
    assert info.value.status == 400
    assert info.value.param == "prompt"


def test_legacy_shares_field_validation(catalog: ModelCatalog) -> None:
    with pytest.raises(ApiError) as info:
        parse_legacy({"prompt": "x", "stream": "false"}, catalog, max_prompt_tokens=0)
    assert info.value.param == "stream"
    with pytest.raises(ApiError) as info:
        parse_legacy({"prompt": "x", "model": "nope"}, catalog, max_prompt_tokens=0)
    assert info.value.status == 404


# --------------------------------------------------------------------------------------------
# ModelCatalog

PUBLIC = ["codex-5", "codex-5-minimal", "codex-5-low", "codex-5-medium", "codex-5-high"]


def test_catalog_listing_default() -> None:
    catalog = ModelCatalog(make_settings())
    assert catalog.listed() == PUBLIC
    assert catalog.default == "codex-5"


def test_catalog_listing_dev() -> None:
    catalog = ModelCatalog(make_settings(env="dev"))
    assert catalog.listed() == [m.replace("codex", "codev") for m in PUBLIC]
    assert catalog.default == "codev-5"
    # the other family is still accepted
    assert catalog.resolve("codex-5-high").alias_effort == "high"


def test_catalog_listing_with_extra_models() -> None:
    catalog = ModelCatalog(make_settings(extra_models="a-model, b.model ,a-model"))
    assert catalog.listed() == [*PUBLIC, "a-model", "b.model"]


def test_catalog_lookup() -> None:
    catalog = ModelCatalog(make_settings(codex_model="gpt-5"))
    assert catalog.lookup("codex-5-high") == {
        "id": "codex-5-high", "object": "model", "owned_by": "codex", "created": 0,
    }
    assert catalog.lookup("gpt-5")["id"] == "gpt-5"
    with pytest.raises(ApiError) as info:
        catalog.lookup("nope")
    assert (info.value.status, info.value.code) == (404, "model_not_found")


# --------------------------------------------------------------------------------------------
# toml_string

NASTY = [
    "",
    "plain",
    'with "quotes"',
    "back\\slash",
    "trailing backslash\\",
    "new\nline",
    "cr\rlf\r\n",
    "tab\there",
    "nul\x00byte",
    "del\x7fchar",
    "bell\x07 esc\x1b[31m unit\x1f",
    "'''triple single'''",
    '"""triple double"""',
    "unicode é 世界 🎉 \u2028 \u0085 \ufeff",
    '"; rm -rf / #',
    '" -c sandbox_mode="danger-full-access',
    "\\u0041 literal escape text",
    "${HOME} $(id) `id`",
]


@pytest.mark.parametrize("value", NASTY)
def test_toml_string_round_trips(value: str) -> None:
    quoted = toml_string(value)
    assert quoted.startswith('"') and quoted.endswith('"')
    assert "\n" not in quoted and "\r" not in quoted
    assert tomllib.loads("k=" + quoted)["k"] == value


def test_toml_string_escapes() -> None:
    assert toml_string('a"b') == '"a\\"b"'
    assert toml_string("a\\b") == '"a\\\\b"'
    assert toml_string("a\nb") == '"a\\nb"'
    assert toml_string("\x00") == '"\\u0000"'
    assert toml_string("\x7f") == '"\\u007f"'


# --------------------------------------------------------------------------------------------
# build_argv


def _overrides(argv: list[str], program_len: int) -> dict[str, str]:
    rest = argv[program_len + 1 :]
    assert len(rest) % 2 == 0
    pairs = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        assert flag == "-c"
        key, _, toml_value = value.partition("=")
        pairs[key] = toml_value
    return pairs


def _toml(value: str) -> Any:
    return tomllib.loads("k=" + value)["k"]


def test_build_argv_basic() -> None:
    settings = make_settings(sandbox_mode="read-only")
    argv = build_argv(settings, ["/opt/codex"], "gpt-5", None)
    assert argv[:2] == ["/opt/codex", "proto"]
    overrides = _overrides(argv, 1)
    assert _toml(overrides["sandbox_mode"]) == "read-only"
    assert _toml(overrides["model"]) == "gpt-5"
    assert _toml(overrides["approval_policy"]) == "never"
    assert _toml(overrides["history.persistence"]) == "none"
    assert _toml(overrides["project_doc_max_bytes"]) == 0
    assert _toml(overrides["tools.web_search"]) is False
    assert "model_reasoning_effort" not in overrides
    assert "model_provider" not in overrides
    for key in ("sandbox_mode", "model", "approval_policy", "history.persistence"):
        assert overrides[key].startswith('"'), f"{key} must be a TOML string"


def test_build_argv_effort_and_provider() -> None:
    settings = make_settings(sandbox_mode="workspace-write", force_provider="local")
    argv = build_argv(settings, ["python", "demo.py"], "gpt-5", "high")
    assert argv[:3] == ["python", "demo.py", "proto"]
    overrides = _overrides(argv, 2)
    assert _toml(overrides["model_reasoning_effort"]) == "high"
    assert _toml(overrides["model_provider"]) == "local"
    assert _toml(overrides["sandbox_mode"]) == "workspace-write"


def test_build_argv_quoted_model_stays_one_argument() -> None:
    evil = 'gpt-5" -c sandbox_mode="danger-full-access'
    plain = build_argv(make_settings(), ["codex"], "gpt-5", None)
    argv = build_argv(make_settings(), ["codex"], evil, None)
    assert len(argv) == len(plain)
    assert argv.count("-c") == plain.count("-c")
    overrides = _overrides(argv, 1)
    assert _toml(overrides["model"]) == evil
    assert _toml(overrides["sandbox_mode"]) == "read-only"
    model_args = [arg for arg in argv if arg.startswith("model=")]
    assert len(model_args) == 1


# --------------------------------------------------------------------------------------------
# child_env


def test_child_env_strips_proxy_vars(tmp_path: Path) -> None:
    settings = make_settings(codex_home=tmp_path / "home")
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "PROXY_API_KEY": "secret",
        "PROXY_REDIS_URL": "redis://x",
        "PROXY_": "empty-suffix",
        "OPENAI_API_KEY": "sk-x",
        "CODEX_HOME": "/somewhere/else",
        "MY_PROXY_SETTING": "kept",
    }
    env = child_env(settings, base)
    assert not any(key.startswith("PROXY_") for key in env)
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"
    assert env["OPENAI_API_KEY"] == "sk-x"
    assert env["MY_PROXY_SETTING"] == "kept"
    assert env["CODEX_HOME"] == str((tmp_path / "home").resolve())
    assert Path(env["CODEX_HOME"]).is_absolute()
    assert base["PROXY_API_KEY"] == "secret"  # the input is not mutated


def test_child_env_from_process_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROXY_API_KEY", "secret-key")
    monkeypatch.setenv("PROXY_TEST_ENDPOINTS", "true")
    monkeypatch.setenv("UNRELATED_VAR", "1")
    env = child_env(make_settings(codex_home=Path("rel-home")))
    assert "PROXY_API_KEY" not in env and "PROXY_TEST_ENDPOINTS" not in env
    assert "secret-key" not in env.values()
    assert env["UNRELATED_VAR"] == "1"
    assert env["CODEX_HOME"] == str(tmp_path / "rel-home")  # relative to cwd, made absolute


# --------------------------------------------------------------------------------------------
# Settings


def _load_error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    settings = load_settings()
    assert settings.port == 11435
    assert settings.sandbox_mode == "read-only"
    assert settings.timeout_ms == 300_000
    assert settings.nonstream_truncate_after_ms == 0
    assert settings.extra_model_ids == []


@pytest.mark.parametrize(
    "name",
    ["PROXY_TIMEOUT_MS", "PORT", "PROXY_SSE_KEEPALIVE_MS", "PROXY_MAX_CONCURRENCY",
     "PROXY_PROTO_IDLE_MS", "PROXY_MAX_PROMPT_TOKENS"],
)
def test_empty_numeric_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    assert name in _load_error(monkeypatch, name, "")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROXY_TIMEOUT_MS", "-1"),
        ("PROXY_STREAM_IDLE_TIMEOUT_MS", "-5"),
        ("PROXY_CHILD_KILL_GRACE_MS", "-100"),
        ("PROXY_TIMEOUT_MS", "abc"),
        ("PROXY_TIMEOUT_MS", "1.5"),
        ("PROXY_SANDBOX_MODE", "root"),
        ("PROXY_LOG_FORMAT", "xml"),
        ("PROXY_STOP_AFTER_TOOLS_MODE", "all"),
        ("PROXY_KILL_ON_DISCONNECT", "maybe"),
        ("PROXY_EXTRA_MODELS", "good-one,bad id"),
        ("PROXY_EXTRA_MODELS", "-leading-dash"),
        ("CODEX_MODEL", 'gpt-5" -c x=y'),
        ("CODEX_FORCE_PROVIDER", "a b"),
        ("PORT", "70000"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    assert name in _load_error(monkeypatch, name, value)


def test_valid_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_SANDBOX_MODE", "danger-full-access")
    monkeypatch.setenv("PROXY_EXTRA_MODELS", "a-model,b.model:1")
    monkeypatch.setenv("PROXY_TIMEOUT_MS", "0")
    monkeypatch.setenv("PROXY_ENV", "dev")
    settings = load_settings()
    assert settings.sandbox_mode == "danger-full-access"
    assert settings.extra_model_ids == ["a-model", "b.model:1"]
    assert settings.timeout_ms == 0
    assert settings.dev is True


def test_dev_truncate_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_DEV_TRUNCATE_AFTER_MS", "700")
    assert load_settings().nonstream_truncate_after_ms == 700
    monkeypatch.setenv("PROXY_NONSTREAM_TRUNCATE_AFTER_MS", "900")
    assert load_settings().nonstream_truncate_after_ms == 900  # the main name wins


def test_dev_truncate_alias_invalid_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _load_error(monkeypatch, "PROXY_DEV_TRUNCATE_AFTER_MS", "-1")
    assert "TRUNCATE_AFTER_MS" in message


def test_dev_truncate_alias_error_names_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "PROXY_DEV_TRUNCATE_AFTER_MS" in _load_error(
        monkeypatch, "PROXY_DEV_TRUNCATE_AFTER_MS", "-1"
    )


def test_cli_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_TIMEOUT_MS", "100")
    monkeypatch.setenv("PORT", "8000")
    monkeypatch.setenv("PROXY_SANDBOX_MODE", "workspace-write")
    settings = load_settings(timeout_ms=5, port=None, sandbox_mode="read-only")
    assert settings.timeout_ms == 5
    assert settings.port == 8000  # None means "flag not given": env still applies
    assert settings.sandbox_mode == "read-only"


def test_cli_override_rescues_bad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_TIMEOUT_MS", "bogus")
    assert load_settings(timeout_ms=7).timeout_ms == 7


def test_invalid_cli_override_names_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(timeout_ms=-1)
    assert "PROXY_TIMEOUT_MS" in str(info.value)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PROXY_TIMEOUT_MS=1234\nPROXY_SANDBOX_MODE=workspace-write\n")
    settings = load_settings()
    assert settings.timeout_ms == 1234
    assert settings.sandbox_mode == "workspace-write"


def test_env_wins_over_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PROXY_TIMEOUT_MS=1234\n")
    monkeypatch.setenv("PROXY_TIMEOUT_MS", "99")
    assert load_settings().timeout_ms == 99
