"""Redis clients for a single server or a Redis Cluster.

threadline's Redis keys put everything of one thread in one hash slot (a `{thread}` hash tag),
and every script and transaction touches one thread, so the same commands run on both; only the
client differs: redis-py's `RedisCluster` follows the slot map (`MOVED`, `ASK`, failovers).
`THREADLINE_REDIS_CLUSTER=auto` asks the server at start-up (`INFO cluster`).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger("threadline.checkpointers")

ClusterMode = Literal["auto", "true", "false"]
PROBE_TIMEOUT_SECONDS = 2.0


async def is_cluster(url: str, mode: ClusterMode = "auto") -> bool:
    """Whether `url` is a Redis Cluster node (`auto`: ask it; unreachable counts as not)."""
    if mode != "auto":
        return mode == "true"
    probe = Redis.from_url(
        url,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool((await probe.info("cluster")).get("cluster_enabled"))
    except RedisError as exc:
        log.warning(
            "could not tell whether Redis is a cluster (%s); using a single-node client "
            "(set THREADLINE_REDIS_CLUSTER to decide)",
            type(exc).__name__,
        )
        return False
    finally:
        await probe.aclose()


DEFAULT_POOL_SIZE = 256


def redis_client(
    url: str, *, cluster: bool, pool_size: int = DEFAULT_POOL_SIZE, **options: Any
) -> Any:
    """A client for `url`: `RedisCluster` on a cluster (it handles redirects and topology
    changes itself), else `Redis` with `options`.

    At most `pool_size` connections (per node), and a call beyond them waits for one to come
    free: redis-py's default pool fails at once past 100, which under load turned busy
    moments into Redis "outages" (the caller bounds every call's time anyway)."""
    if cluster:
        timeouts = {k: v for k, v in options.items() if k.startswith("socket")}
        return RedisCluster.from_url(url, max_connections=pool_size, **timeouts)
    pool = BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=None, **options)
    return Redis(connection_pool=pool)
