"""The errors that mean a store could not be reached (nothing happened; retry later), named
once for the server's 503s and the sweeper's early stop."""

from __future__ import annotations

from psycopg import OperationalError
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from threadline.checkpointers.durable import CheckpointStoreUnavailable
from threadline.locks import LockBackendError

STORE_ERRORS: tuple[type[Exception], ...] = (
    CheckpointStoreUnavailable,
    LockBackendError,
    OperationalError,
    PoolTimeout,
    RedisConnectionError,
    RedisTimeoutError,
)
