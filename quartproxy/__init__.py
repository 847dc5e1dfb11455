"""quartproxy: an OpenAI-compatible HTTP front for `codex proto`."""

__version__ = "0.1.0"
