"""The memory policy, and how a single request overrides it.

Defaults come from `Settings`; a run may override the budget, strategy or system prompt through
the graph's runtime context (`graph.invoke(..., context={...})`) or, for clients that can only
send config (LangServe, Studio), through `config["configurable"]`. Every override is checked
here, and a bad one raises `InvalidOverrideError`, which servers map to a 4xx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from threadline.rules import MIN_CONTEXT_TOKENS, Strategy, summary_ratios_problem

OVERRIDABLE = ("system_prompt", "max_context_tokens", "memory_strategy")
MAX_CONTEXT_TOKENS = 10_000_000
# The running summary may use at most this share of the budget (and at most half the target),
# so at small budgets it can never crowd the conversation out of the view.
SUMMARY_SHARE_OF_BUDGET = 0.25
# ...but never below this, or the summary could not say anything at all.
MIN_SUMMARY_CAP_TOKENS = 48
# The system prompt may use at most this share of the budget; the rest is the conversation's.
SYSTEM_PROMPT_SHARE_OF_BUDGET = 0.5


class InvalidOverrideError(ValueError):
    """A per-request override (context or configurable) that the policy cannot honour.

    Raised before any model call; the message names the field and is safe to show a client.
    """


@dataclass(init=False)
class Context:
    """Per-run overrides; `None` means "use the configured default".

    Validated on construction, so a bad value in `graph.invoke(..., context={...})` fails
    before the run starts (LangGraph builds this class from the dict it is given).
    """

    system_prompt: str | None = field(default=None)
    max_context_tokens: int | None = field(default=None)
    memory_strategy: Strategy | None = field(default=None)

    def __init__(
        self,
        *,
        system_prompt: str | None = None,
        max_context_tokens: int | None = None,
        memory_strategy: Strategy | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise InvalidOverrideError(
                f"unknown context field(s) {sorted(unknown)}; allowed: {list(OVERRIDABLE)}"
            )
        self.system_prompt = _checked("system_prompt", system_prompt)
        self.max_context_tokens = _checked("max_context_tokens", max_context_tokens)
        self.memory_strategy = _checked("memory_strategy", memory_strategy)


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

    def __post_init__(self) -> None:
        if problem := summary_ratios_problem(self.summary_target_ratio, self.summary_trigger_ratio):
            raise ValueError(problem)

    @property
    def trigger_tokens(self) -> int:
        """Fold when the unfolded conversation would cost more than this."""
        return int(self.max_context_tokens * self.summary_trigger_ratio)

    @property
    def target_tokens(self) -> int:
        """After a fold the view (with the summary at its cap) sits at or under this."""
        return int(self.max_context_tokens * self.summary_target_ratio)

    @property
    def summary_cap_tokens(self) -> int:
        """The summary message's effective cap: its setting, bounded by a share of the budget."""
        share = min(SUMMARY_SHARE_OF_BUDGET, self.summary_target_ratio / 2)
        by_budget = max(MIN_SUMMARY_CAP_TOKENS, int(self.max_context_tokens * share))
        return min(self.summary_max_tokens, by_budget)

    @property
    def system_prompt_cap_tokens(self) -> int:
        return int(self.max_context_tokens * SYSTEM_PROMPT_SHARE_OF_BUDGET)

    def overridden(
        self, context: Context | Mapping[str, Any] | None, configurable: Mapping[str, Any]
    ) -> MemoryPolicy:
        """This policy with the run's overrides applied (context wins over configurable).

        Raises `InvalidOverrideError` naming the first bad field.
        """
        changes: dict[str, Any] = {}
        for name in OVERRIDABLE:
            value = _checked(name, configurable.get(name))
            from_context = _checked(name, _context_value(context, name))
            if from_context is not None:
                value = from_context
            if value is not None:
                changes[name] = value
        return replace(self, **changes) if changes else self


def _context_value(context: object, name: str) -> Any:
    """Our `Context`, a plain mapping, or a parent graph's context object (when embedded)."""
    if context is None:
        return None
    if isinstance(context, Mapping):
        return context.get(name)
    return getattr(context, name, None)


def _checked(name: str, value: Any) -> Any:
    """The value if it is a valid override for `name` (None passes: "not overridden")."""
    if value is None:
        return None
    if name == "max_context_tokens":
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not MIN_CONTEXT_TOKENS <= value <= MAX_CONTEXT_TOKENS
        ):
            raise InvalidOverrideError(
                f"max_context_tokens must be an integer from {MIN_CONTEXT_TOKENS} to "
                f"{MAX_CONTEXT_TOKENS}, got {value!r}"
            )
    elif name == "memory_strategy":
        if value not in get_args(Strategy):
            raise InvalidOverrideError(
                f"memory_strategy must be one of {list(get_args(Strategy))}, got {value!r}"
            )
    elif name == "system_prompt" and (not isinstance(value, str) or not value.strip()):
        raise InvalidOverrideError("system_prompt must be a non-empty string")
    return value
