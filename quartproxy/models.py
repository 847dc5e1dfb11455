"""Which model ids the proxy accepts, what codex gets for them, and what /v1/models lists.

Only whitelisted values ever reach the child's argv: a requested id is looked up here and the
child is given the *configured* model name, never the client's string (except for ids the
operator listed explicitly, which were validated at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import errors
from .config import Settings

EFFORTS = ("minimal", "low", "medium", "high")
FAMILIES = ("codex-5", "codev-5")


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    requested: str  # what the response's `model` says
    effective: str  # what codex is started with
    alias_effort: str | None  # from a -minimal/-low/... suffix


class ModelCatalog:
    def __init__(self, settings: Settings) -> None:
        self.family = "codev-5" if settings.dev else "codex-5"
        self.codex_model = settings.codex_model
        self.extra = list(dict.fromkeys(settings.extra_model_ids))
        self._aliases: dict[str, str | None] = {}
        for family in FAMILIES:
            self._aliases[family] = None
            for effort in EFFORTS:
                self._aliases[f"{family}-{effort}"] = effort
        self._exact = {self.codex_model, *self.extra}

    @property
    def default(self) -> str:
        return self.family

    def known_ids(self) -> list[str]:
        """Every id :meth:`resolve` accepts, in canonical spelling (the metrics' model label
        values)."""
        return [*self._aliases, *sorted(self._exact)]

    def listed(self) -> list[str]:
        ids = [self.family, *(f"{self.family}-{effort}" for effort in EFFORTS)]
        return ids + [model for model in self.extra if model not in ids]

    def resolve(self, requested: str | None) -> ResolvedModel:
        if not requested:
            return ResolvedModel(self.default, self.codex_model, None)
        key = requested.lower()
        if key in self._aliases:
            return ResolvedModel(requested, self.codex_model, self._aliases[key])
        if requested in self._exact:
            return ResolvedModel(requested, requested, None)
        raise errors.model_not_found(requested)

    def model_object(self, model_id: str) -> dict[str, object]:
        return {"id": model_id, "object": "model", "owned_by": "codex", "created": 0}

    def lookup(self, model_id: str) -> dict[str, object]:
        key = model_id.lower()
        if key in self._aliases or model_id in self._exact:
            return self.model_object(model_id)
        raise errors.model_not_found(model_id)
