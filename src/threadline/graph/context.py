"""The memory policy, and how a single request overrides it.

Defaults come from `Settings`; a run may override the budget, strategy or system prompt through
the graph's runtime context (`graph.invoke(..., context=Context(...))`) or, for clients that can
only send config (LangServe, Studio), through `config["configurable"]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, get_args

from threadline.settings import Settings, Strategy

OVERRIDABLE = ("system_prompt", "max_context_tokens", "memory_strategy")


@dataclass(kw_only=True)
class Context:
    """Per-run overrides; `None` means "use the configured default"."""

    system_prompt: str | None = None
    max_context_tokens: int | None = None
    memory_strategy: Strategy | None = None


@dataclass(frozen=True, kw_only=True)
class MemoryPolicy:
    """Everything the trim-or-summarize node needs to decide what the model sees."""

    system_prompt: str
    max_context_tokens: int
    memory_strategy: Strategy = "summarize"
    summary_trigger_ratio: float = 0.9
    summary_target_ratio: float = 0.5
    summary_max_tokens: int = 1024
    summary_timeout_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryPolicy:
        names = {f.name for f in fields(cls)}
        return cls(**{name: getattr(settings, name) for name in names})

    @property
    def trigger_tokens(self) -> int:
        return int(self.max_context_tokens * self.summary_trigger_ratio)

    @property
    def target_tokens(self) -> int:
        return int(self.max_context_tokens * self.summary_target_ratio)

    def overridden(
        self, context: Context | Mapping[str, Any] | None, configurable: Mapping[str, Any]
    ) -> MemoryPolicy:
        """This policy with the run's overrides applied (context wins over configurable)."""
        changes: dict[str, Any] = {}
        for name in OVERRIDABLE:
            value = configurable.get(name)
            from_context = (
                context.get(name) if isinstance(context, Mapping) else getattr(context, name, None)
            )
            if from_context is not None:
                value = from_context
            if value is not None:
                changes[name] = _validated(name, value)
        return replace(self, **changes) if changes else self


def _validated(name: str, value: Any) -> Any:
    """Reject overrides that would break the policy, with a message naming the field."""
    if name == "max_context_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or value < 256:
            raise ValueError(f"max_context_tokens must be an integer >= 256, got {value!r}")
    elif name == "memory_strategy":
        if value not in get_args(Strategy):
            raise ValueError(f"memory_strategy must be one of {get_args(Strategy)}, got {value!r}")
    elif name == "system_prompt" and not isinstance(value, str):
        raise ValueError("system_prompt must be a string")
    return value
