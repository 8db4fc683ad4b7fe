"""The hot tier's contract with its Lua scripts: entry field names, KEYS and ARGV, in one place.

An entry is one Redis hash per (thread, namespace) holding its latest checkpoint. Fields:

    id, floor, gen      the checkpoint held; the oldest one that may still be installed; the
                        generation a reader's warm must match
    cp                  the checkpoint's head (skeleton, metadata, parent, blob channels)
    up                  the checkpoint's parent (late writes to it join its histories)
    c:<ch>              a channel value
    w:<task>\\0<idx>\\0<ch>  a pending write of the entry's checkpoint
    e:<cp>\\0<task>\\0...  a write that arrived before its checkpoint's install
    p:<token>           a staged change awaiting its Postgres commit ("<id>|<unix time>")
    h:<ch>              per delta channel: the checkpoint whose history the entry holds,
    s:<ch>              that history's seed,
    d:<ch>\\0<cp>\\0...    its writes,
    k:<ch>\\0<cp>        the checkpoints it spans,
    n:<ch>              the checkpoint that stores the channel's value itself
    i:<ch>              (read replies only) the checkpoint a history extends

The scripts live in `lua/`, each prefixed by `lua/entry.lua` (the helpers they share); every
ARGV list is built by the functions below, in the order each script's header comment gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

SCRIPT_NAMES = ("install", "writes", "read", "invalidate")


def _source(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


def script_source(name: str) -> str:
    """A script as Redis runs it: the shared helpers, then the script."""
    return _source("entry") + "\n" + _source(name)


@dataclass(frozen=True)
class ScriptCall:
    """The keys and arguments of one script call, built ahead of sending it."""

    keys: list[str]
    args: list[Any]


class Scripts:
    """The scripts registered on one client (`EVALSHA`, loaded on first use)."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    async def run(self, name: str, call: ScriptCall) -> Any:
        return await self._scripts[name](keys=call.keys, args=call.args)

    async def run_together(self, calls: Sequence[tuple[str, ScriptCall]]) -> list[Any]:
        """Several calls in one round trip (a pipeline, not a transaction: each script is
        atomic by itself). Calls refused for a script Redis lacks (after a restart or a
        failover) run again once it is loaded; any other error is raised. Not on a cluster:
        redis-py's cluster client pipelines no scripts."""
        if len(calls) == 1:  # a pipeline of one costs ~20 µs more than the call itself
            return [await self.run(*calls[0])]
        results = await self._pipelined(calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            for name in sorted({calls[i][0] for i in missing}):
                await self._client.script_load(self._scripts[name].script)
            again = await self._pipelined([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipelined(self, calls: Sequence[tuple[str, ScriptCall]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for name, call in calls:
                pipe.evalsha(self._scripts[name].sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))


# ------------------------------------------------------------------ field names

HISTORY_PREFIX = b"h:"
WRITE_PREFIX = b"w:"
PARENT_FIELD = b"up"


def value_field(channel: str) -> bytes:
    return b"c:" + channel.encode()


def write_field(task_id: str, idx: int, channel: str) -> bytes:
    return WRITE_PREFIX + f"{task_id}\0{idx}\0{channel}".encode()


def history_field(channel: str | bytes) -> bytes:
    return HISTORY_PREFIX + (channel.encode() if isinstance(channel, str) else channel)


def seed_field(channel: str | bytes) -> bytes:
    return b"s:" + (channel.encode() if isinstance(channel, str) else channel)


def since_field(channel: bytes) -> bytes:
    return b"i:" + channel


def delta_prefix(channel: bytes) -> bytes:
    """Fields `d:<channel>\\0<checkpoint>\\0<order>` of a channel's history writes."""
    return b"d:" + channel + b"\0"


def decoded_delta_field(channel: bytes, seq: int) -> bytes:
    """A history write decoded from Postgres: no checkpoint id, so it sorts first."""
    return delta_prefix(channel) + b"\0" + str(seq).zfill(9).encode()


# ------------------------------------------------------------------ ARGV lists


def install_call(
    keys: Sequence[str],
    *,
    ttl_ms: int,
    checkpoint_ns: str,
    checkpoint_id: str,
    parent: str,
    expected_gen: str,
    head: bytes,
    token: str,
    commits: Sequence[str],
    history: Sequence[str],
    snapshots: Sequence[str],
    fields: Sequence[tuple[bytes, Any]],
) -> ScriptCall:
    """`install.lua`: `parent` '' installs whole; `expected_gen` '' installs whatever the
    entry's generation; `token` '' installs committed."""
    args: list[Any] = [ttl_ms, checkpoint_ns, checkpoint_id, parent, expected_gen, head, token]
    args += [len(commits), *commits, len(history), *history, len(snapshots), *snapshots]
    args += [item for pair in fields for item in pair]
    return ScriptCall(list(keys), args)


def writes_call(
    keys: Sequence[str],
    *,
    ttl_ms: int,
    checkpoint_id: str,
    upsert: bool,
    token: str,
    commits: Sequence[str],
    fields: Sequence[tuple[bytes, Any]],
) -> ScriptCall:
    """`writes.lua`: pending writes of `checkpoint_id`, staged under `token`."""
    args: list[Any] = [ttl_ms, checkpoint_id, "1" if upsert else "0", token]
    args += [len(commits), *commits, *(item for pair in fields for item in pair)]
    return ScriptCall(list(keys), args)


def read_call(
    keys: Sequence[str],
    *,
    ttl_ms: int,
    abandoned_seconds: float,
    commits: Sequence[str],
    known: Sequence[tuple[str, str]],
) -> ScriptCall:
    """`read.lua`: `known` lists (channel, checkpoint) histories the reader already holds."""
    args: list[Any] = [ttl_ms, abandoned_seconds, len(commits), *commits, len(known)]
    args += [item for pair in known for item in pair]
    return ScriptCall(list(keys), args)


def staged_field(token: str) -> bytes:
    """The field of a staged change: deleting it commits the change (as `entry.lua`'s
    `commit` does inside the scripts)."""
    return b"p:" + token.encode()


def invalidate_call(
    keys: Sequence[str],
    *,
    ttl_ms: int,
    checkpoint_ns: str,
    below: str | None,
    reset_floor: bool,
    new_gen: str,
) -> ScriptCall:
    """`invalidate.lua`: drop the entry if it holds `below` or older; start `new_gen`."""
    args = [ttl_ms, checkpoint_ns, below or "", "1" if reset_floor else "0", new_gen]
    return ScriptCall(list(keys), args)
