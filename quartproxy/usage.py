"""Token usage in OpenAI's shape, from codex's counts or from the estimator.

The estimator (ceil(chars / 4)) is used only for what codex did not report, and the record says
which source was used, so an operator can tell estimated billing from real counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .events import Counts


def estimate_tokens(chars: int) -> int:
    return -(-chars // 4)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    source: Literal["codex", "estimate"]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


def make_usage(counts: Counts | None, prompt_chars: int, answer_chars: int) -> Usage:
    if counts is None:
        return Usage(estimate_tokens(prompt_chars), estimate_tokens(answer_chars), 0, 0, "estimate")
    prompt = counts.input_tokens
    completion = counts.output_tokens
    return Usage(
        prompt if prompt is not None else estimate_tokens(prompt_chars),
        completion if completion is not None else estimate_tokens(answer_chars),
        counts.cached_input_tokens or 0,
        counts.reasoning_output_tokens or 0,
        "codex" if prompt is not None and completion is not None else "estimate",
    )
