"""The views a turn has just built, so that building the same one again is free.

A turn decides the model's view in `trim_or_summarize` (for its telemetry) and again in
`model` (to send it): same transcript, same summary, same policy. Deciding it walks the
budget's worth of newest messages, which at a full budget is most of what a turn costs
besides the model call. Entries are keyed by the transcript object itself and hold it, so a
key can never be reused by another transcript; LangGraph hands both nodes the same list when
the step between them did not change `messages`, and reducers never change a list in place.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from langchain_core.messages import BaseMessage

from threadline.graph.context import MemoryPolicy
from threadline.graph.memory import View, build_view
from threadline.graph.tokens import TokenCounter

ViewKey = tuple[int, int, str, int, MemoryPolicy, int]


class RecentViews:
    """A small LRU of views by (transcript object, summary, policy), bounded by entries and by
    the messages the transcripts it keeps alive hold."""

    def __init__(self, size: int = 64, max_messages: int = 50_000) -> None:
        self.size = size
        self.max_messages = max_messages
        self._messages = 0
        self._entries: OrderedDict[ViewKey, tuple[Sequence[BaseMessage], View]] = OrderedDict()
        self._lock = threading.Lock()  # sync graphs run nodes on worker threads

    def view(
        self,
        messages: Sequence[BaseMessage],
        summary: str,
        summarized_count: int,
        policy: MemoryPolicy,
        counter: TokenCounter,
        tool_tokens: int,
    ) -> View:
        """`build_view(...)`, or the view built for exactly these arguments a moment ago."""
        key = (id(messages), len(messages), summary, summarized_count, policy, tool_tokens)
        with self._lock:
            found = self._entries.get(key)
            if found is not None and found[0] is messages:
                self._entries.move_to_end(key)
                return found[1]
        view = build_view(messages, summary, summarized_count, policy, counter, tool_tokens)
        with self._lock:
            if key not in self._entries:
                self._messages += len(messages)
            self._entries[key] = (messages, view)
            while len(self._entries) > self.size or self._messages > self.max_messages:
                _, (dropped, _) = self._entries.popitem(last=False)
                self._messages -= len(dropped)
        return view
