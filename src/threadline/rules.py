"""Limits that settings, the graph and the server all check, written once.

A leaf module (it imports nothing of threadline), so the environment's settings, a run's
overrides and the API's documentation all enforce the very same rules.
"""

from __future__ import annotations

from typing import Literal

Strategy = Literal["summarize", "trim"]

MIN_CONTEXT_TOKENS = 256


def summary_ratios_problem(target: float, trigger: float) -> str | None:
    """Why the summary ratios cannot work together, or None: a fold must bring the view
    below the point that triggers it."""
    if not 0 < target < trigger <= 1:
        return (
            "need 0 < summary_target_ratio < summary_trigger_ratio <= 1, "
            f"got {target} and {trigger}"
        )
    return None
