"""The agent graph, its state and its memory policy. Knows nothing of HTTP or storage."""

from threadline.graph.agent import build_graph
from threadline.graph.context import Context, InvalidOverrideError, MemoryPolicy
from threadline.graph.memory import BudgetTooSmallError
from threadline.graph.models import OfflineChatModel
from threadline.graph.state import BudgetTelemetry, InputState, ThreadState

__all__ = [
    "BudgetTelemetry",
    "BudgetTooSmallError",
    "Context",
    "InputState",
    "InvalidOverrideError",
    "MemoryPolicy",
    "OfflineChatModel",
    "ThreadState",
    "build_graph",
]
