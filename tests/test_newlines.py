"""Trailing newlines never pass a whole-value check (``$`` matches before a final ``\\n``).

Each case was accepted before the validating patterns were applied with ``fullmatch``: the
server started and codex was given ``gpt-5\\n`` as its model.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from quartproxy import backup
from quartproxy.asgi import request_id_for
from quartproxy.config import Settings, SettingsError, env_names, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    names = {name for field in Settings.model_fields for name in env_names(field)}
    for name in list(os.environ):
        if name.startswith("PROXY_") or name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\nx"])
@pytest.mark.parametrize(("variable", "value"), [
    ("CODEX_MODEL", "gpt-5"),
    ("CODEX_FORCE_PROVIDER", "openai"),
])
def test_settings_with_a_newline_do_not_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, suffix: str
) -> None:
    monkeypatch.setenv(variable, value + suffix)
    with pytest.raises(SettingsError, match=variable):
        load_settings()
    monkeypatch.setenv(variable, value)
    load_settings()  # the same value without the newline is fine


def test_extra_model_ids_never_keep_a_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Items are trimmed before they are checked, so a trailing newline is dropped, not kept...
    monkeypatch.setenv("PROXY_EXTRA_MODELS", "my-model\n")
    assert load_settings().extra_model_ids == ["my-model"]
    # ...and one inside an item is refused.
    monkeypatch.setenv("PROXY_EXTRA_MODELS", "my-model\nother")
    with pytest.raises(SettingsError, match="PROXY_EXTRA_MODELS"):
        load_settings()


@pytest.mark.parametrize("value", ["abc\n", "abc\r", "abc\n\n", "\nabc", "a b", ""])
def test_request_id_with_a_newline_is_replaced(value: str) -> None:
    replaced = request_id_for(value)
    assert replaced != value
    assert replaced.isalnum()


def test_request_id_is_kept_when_safe() -> None:
    assert request_id_for("abc-123:x/y@z+=") == "abc-123:x/y@z+="
    assert len(request_id_for(None)) == 32


def test_archive_name_with_a_newline_is_not_an_archive() -> None:
    name = backup.archive_name(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert backup.parse_archive_name(name) is not None
    assert backup.parse_archive_name(name + "\n") is None
